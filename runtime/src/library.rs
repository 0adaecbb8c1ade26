//! Loading the artefact's CPU shared object and resolving its entry points, once per model.
//!
//! The section's bytes go to an anonymous, sealed in-memory file (`memfd_create` on Linux;
//! elsewhere, or where memfd is refused, a private temporary file) which is `dlopen`ed by its
//! path with `RTLD_NOW | RTLD_LOCAL`. Nothing is written where another program would look.
//!
//! Trust: `dlopen` runs the object's initialisers and its code runs with the process's full
//! rights. The artefact's checksums are verified before this point, but they only detect
//! corruption: load artefacts only from sources you would take a shared library from.
//!
//! The backing file stays open while the library is loaded, so its path (`/proc/self/fd/N`)
//! cannot be reused for another object: the dynamic loader identifies loaded objects by path.

use std::ffi::OsString;
use std::fs::File;
use std::io::Write;

use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};

use crate::abi::{
    symbols, DncAbiVersionFn, DncKernelCountFn, DncKernelTasksFn, DncRunFn, DncRunKernelFn,
    DNC_ABI_VERSION,
};
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

/// A loaded CPU shared object and its entry points, resolved once.
#[derive(Debug)]
pub struct CpuLibrary {
    run: DncRunFn,
    run_kernel: DncRunKernelFn,
    /// `dnc_kernel_tasks(i)` for each kernel, queried once.
    kernel_tasks: Vec<i64>,
    // Options so that `Drop` can close the library first and then decide about the backing.
    library: Option<Library>,
    backing: Option<Backing>,
    path: OsString,
}

/// Resolves `name` as a function pointer of type `T`.
///
/// # Safety
/// `T` must be the symbol's true type (the ABI in `crate::abi` fixes it), and the pointer must
/// not be used after `library` is closed.
unsafe fn function<T: Copy>(library: &Library, name: &str) -> Result<T> {
    let mut symbol = name.as_bytes().to_vec();
    symbol.push(0);
    // SAFETY: forwarded caller's contract.
    unsafe { library.get::<T>(&symbol) }
        .map(|s| *s)
        .map_err(|e| Error::Library(format!("symbol `{name}`: {e}")))
}

impl CpuLibrary {
    /// Loads `object`, resolves the ABI's symbols and checks its version.
    pub fn load(object: &[u8]) -> Result<Self> {
        Self::load_from(write_backing(object, true)?)
    }

    fn load_from((backing, path): (Backing, OsString)) -> Result<Self> {
        // SAFETY: loading runs the object's initialisers; the object comes from an artefact the
        // caller chose to trust (module docs) and whose checksums were verified.
        let library = unsafe { Library::open(Some(&path), RTLD_NOW | RTLD_LOCAL) }
            .map_err(|e| Error::Library(e.to_string()))?;
        // SAFETY: the types are the ABI's (crate::abi); the pointers live in `self` next to the
        // library, which is closed only in Drop.
        let (abi_version, kernel_count, kernel_tasks_fn, run, run_kernel) = unsafe {
            (
                function::<DncAbiVersionFn>(&library, symbols::ABI_VERSION)?,
                function::<DncKernelCountFn>(&library, symbols::KERNEL_COUNT)?,
                function::<DncKernelTasksFn>(&library, symbols::KERNEL_TASKS)?,
                function::<DncRunFn>(&library, symbols::RUN)?,
                function::<DncRunKernelFn>(&library, symbols::RUN_KERNEL)?,
            )
        };
        // SAFETY: metadata functions of the ABI: no arguments, no side effects.
        let (version, count) = unsafe { (abi_version(), kernel_count()) };
        if u32::try_from(version).ok() != Some(DNC_ABI_VERSION) {
            return Err(Error::AbiVersion {
                found: version.max(0) as u32,
                supported: DNC_ABI_VERSION,
            });
        }
        let count = usize::try_from(count)
            .ok()
            .filter(|&c| c <= 1 << 20)
            .ok_or_else(|| Error::Library(format!("the code reports {count} kernels")))?;
        // SAFETY: dnc_kernel_tasks accepts any index (-1 for a bad one); 0..count are valid.
        let kernel_tasks = (0..count as i64)
            .map(|i| unsafe { kernel_tasks_fn(i) })
            .collect();
        Ok(CpuLibrary {
            run,
            run_kernel,
            kernel_tasks,
            library: Some(library),
            backing: Some(backing),
            path,
        })
    }

    /// `dnc_run` (valid while `self` lives).
    pub fn run(&self) -> DncRunFn {
        self.run
    }

    /// `dnc_run_kernel` (valid while `self` lives).
    pub fn run_kernel(&self) -> DncRunKernelFn {
        self.run_kernel
    }

    /// The task count of each kernel, in schedule order.
    pub fn kernel_tasks(&self) -> &[i64] {
        &self.kernel_tasks
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

/// Writes `object` where the loader can open it: a memfd when `memfd_allowed` and possible,
/// else a private temporary file.
fn write_backing(object: &[u8], memfd_allowed: bool) -> Result<(Backing, OsString)> {
    // The loader opens the memfd by its /proc path: without /proc, use a temporary file.
    #[cfg(target_os = "linux")]
    if let Some(file) = (memfd_allowed && std::path::Path::new("/proc/self/fd").is_dir())
        .then(|| memfd(object))
        .flatten()
    {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::process::Command;

    /// The toy model of the integration tests, compiled here; `None` without a C compiler.
    fn toy_object(dir: &Path) -> Option<Vec<u8>> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let out = dir.join("toy.so");
        let status = Command::new("cc")
            .args(["-shared", "-fPIC", "-O1", "-I"])
            .arg(root.join("include"))
            .arg(root.join("tests/data/toy_model.c"))
            .arg("-o")
            .arg(&out)
            .status();
        if !status.is_ok_and(|s| s.success()) {
            eprintln!("skipping: no working C compiler (`cc`)");
            return None;
        }
        std::fs::read(out).ok()
    }

    #[test]
    fn both_backings_load_and_the_temporary_file_is_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let Some(object) = toy_object(dir.path()) else {
            return;
        };
        let lib = CpuLibrary::load(&object).expect("memfd load");
        assert_eq!(lib.kernel_tasks(), [2, 10]);

        let backing = write_backing(&object, false).expect("temporary file");
        let path = std::path::PathBuf::from(&backing.1);
        assert!(matches!(backing.0, Backing::Temp { .. }));
        let lib = CpuLibrary::load_from(backing).expect("temporary-file load");
        assert_eq!(lib.kernel_tasks(), [2, 10]);
        drop(lib);
        assert!(!path.exists(), "{} left behind", path.display());
    }
}
