//! Loading the artefact's CPU shared object and resolving its entry symbol, once per model.
//!
//! The section's bytes go to an anonymous, sealed in-memory file (`memfd_create` on Linux;
//! elsewhere, or where memfd is refused, a private temporary file) which is `dlopen`ed by its
//! path with `RTLD_NOW | RTLD_LOCAL`. Nothing is written where another program would look.
//!
//! Trust: `dlopen` runs the object's initialisers and the entry runs with the process's full
//! rights. The artefact's checksums are verified before this point, but they only detect
//! corruption: load artefacts only from sources you would take a shared library from.
//!
//! The backing file stays open while the library is loaded, so its path (`/proc/self/fd/N`)
//! cannot be reused for another object: the dynamic loader identifies loaded objects by path.

use std::ffi::OsString;
use std::fs::File;
use std::io::Write;

use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};

use crate::abi::DncEntryFn;
use crate::error::{Error, Result};

/// Where the shared object's bytes live while it is loaded (held for its `Drop` only).
#[derive(Debug)]
enum Backing {
    #[cfg(target_os = "linux")]
    Memfd {
        _file: File,
    },
    Temp {
        _path: tempfile::TempPath,
    },
}

/// A loaded CPU shared object and its entry point.
#[derive(Debug)]
pub struct CpuLibrary {
    entry: DncEntryFn,
    // Options so that `Drop` can close the library first and then decide about the backing.
    library: Option<Library>,
    backing: Option<Backing>,
    path: OsString,
}

impl CpuLibrary {
    /// Loads `object` and resolves the symbol `entry`.
    pub fn load(object: &[u8], entry: &str) -> Result<Self> {
        let (backing, path) = write_backing(object)?;
        // SAFETY: loading runs the object's initialisers; the object comes from an artefact the
        // caller chose to trust (module docs) and whose checksums were verified.
        let library = unsafe { Library::open(Some(&path), RTLD_NOW | RTLD_LOCAL) }
            .map_err(|e| Error::Library(e.to_string()))?;
        let mut symbol = entry.as_bytes().to_vec();
        symbol.push(0);
        // SAFETY: the ABI (crate::abi) fixes the entry's type as DncEntryFn; the pointer is only
        // used while `library` stays loaded (both live in self, the library is closed in Drop).
        let entry_fn = unsafe { library.get::<DncEntryFn>(&symbol) }
            .map(|s| *s)
            .map_err(|e| Error::Library(format!("entry symbol `{entry}`: {e}")))?;
        Ok(CpuLibrary {
            entry: entry_fn,
            library: Some(library),
            backing: Some(backing),
            path,
        })
    }

    /// The resolved entry point (valid while `self` lives).
    pub fn entry(&self) -> DncEntryFn {
        self.entry
    }
}

impl Drop for CpuLibrary {
    fn drop(&mut self) {
        drop(self.library.take());
        // If the loader kept the object resident (it may, e.g. for thread-local destructors),
        // its path must never name another object: keep the backing file alive for good.
        // SAFETY: RTLD_NOLOAD never loads anything; it only looks up an already-loaded object.
        let resident =
            unsafe { Library::open(Some(&self.path), RTLD_NOW | RTLD_LOCAL | libc::RTLD_NOLOAD) };
        if let Ok(lib) = resident {
            drop(lib);
            std::mem::forget(self.backing.take());
        }
    }
}

fn write_backing(object: &[u8]) -> Result<(Backing, OsString)> {
    #[cfg(target_os = "linux")]
    if let Some(file) = memfd(object) {
        use std::os::fd::AsRawFd;
        let path = OsString::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        return Ok((Backing::Memfd { _file: file }, path));
    }
    let io = |e: std::io::Error| {
        Error::Library(format!(
            "writing the shared object to a temporary file: {e}"
        ))
    };
    let mut tmp = tempfile::Builder::new()
        .prefix("densenetc-")
        .suffix(".so")
        .tempfile()
        .map_err(io)?;
    tmp.write_all(object).map_err(io)?;
    tmp.flush().map_err(io)?;
    let path = tmp.into_temp_path();
    let os = path.as_os_str().to_owned();
    Ok((Backing::Temp { _path: path }, os))
}

/// An anonymous in-memory file holding `object`, sealed against changes; `None` if the kernel
/// refuses (old kernel, seccomp), in which case the caller falls back to a temporary file.
#[cfg(target_os = "linux")]
fn memfd(object: &[u8]) -> Option<File> {
    use std::os::fd::FromRawFd;
    let name = c"densenetc-model";
    // SAFETY: `name` is a valid NUL-terminated string; the flags are valid for memfd_create.
    let fd =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return None;
    }
    // SAFETY: memfd_create returned a fresh descriptor that nothing else owns.
    let mut file = unsafe { File::from_raw_fd(fd) };
    file.write_all(object).ok()?;
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: fcntl on a descriptor we own; failure only leaves the file unsealed.
    unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, seals) };
    Some(file)
}
