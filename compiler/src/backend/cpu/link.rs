//! Object file → shared object with the system C compiler driver.

use crate::backend::BackendError;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

/// Linker drivers tried in order when none is given: `$DNC_CC`, `$CC`, then
/// these.
const CANDIDATES: &[&str] = &["cc", "gcc", "clang"];

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<TempDir, BackendError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("densenetc-{}-{nanos}-{n}", std::process::id()));
        std::fs::create_dir(&dir).map_err(|source| BackendError::Io {
            context: format!("creating {}", dir.display()),
            source,
        })?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Link `objects` into one shared object and return its bytes. The link
/// uses `-z defs`, so a generated symbol left undefined (e.g. a call into
/// the runtime) is a link error rather than a load-time surprise.
pub fn shared_object(objects: &[&[u8]], linker: Option<&Path>) -> Result<Vec<u8>, BackendError> {
    let dir = TempDir::new()?;
    let so = dir.0.join("kernels.so");
    let mut paths = Vec::with_capacity(objects.len());
    for (i, object) in objects.iter().enumerate() {
        let obj = dir.0.join(format!("kernels{i}.o"));
        std::fs::write(&obj, object).map_err(|source| BackendError::Io {
            context: format!("writing {}", obj.display()),
            source,
        })?;
        paths.push(obj);
    }
    let candidates: Vec<PathBuf> = match linker {
        Some(l) => vec![l.to_path_buf()],
        None => ["DNC_CC", "CC"]
            .iter()
            .filter_map(std::env::var_os)
            .map(PathBuf::from)
            .chain(CANDIDATES.iter().map(PathBuf::from))
            .collect(),
    };
    for cc in &candidates {
        let out = Command::new(cc)
            .args(["-shared", "-o"])
            .arg(&so)
            .args(&paths)
            .args(["-Wl,-z,defs", "-Wl,-z,noexecstack"])
            .output();
        match out {
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(BackendError::Io {
                    context: format!("running {}", cc.display()),
                    source,
                })
            }
            Ok(o) if !o.status.success() => {
                return Err(BackendError::LinkFailed {
                    linker: cc.display().to_string(),
                    stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
                })
            }
            Ok(_) => {
                return std::fs::read(&so).map_err(|source| BackendError::Io {
                    context: format!("reading {}", so.display()),
                    source,
                })
            }
        }
    }
    Err(BackendError::LinkerNotFound {
        tried: candidates
            .iter()
            .map(|c| c.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}
