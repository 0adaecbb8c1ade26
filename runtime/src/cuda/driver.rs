//! Finding the CUDA driver before cudarc is touched: with `dynamic-loading`, cudarc opens
//! libcuda on its first call and panics when it cannot. [`probe`] opens the library itself
//! (the names cudarc also tries, the versioned soname first) and caches the answer; every
//! cudarc call additionally runs under [`guarded`], so a missing symbol (a driver older than
//! the API cudarc was built for) is an error too, never a crash.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;

use crate::error::{Error, Result};

/// The driver library names tried, in order.
pub const DRIVER_LIBRARIES: [&str; 2] = ["libcuda.so.1", "libcuda.so"];

/// Whether the CUDA driver library can be opened; the error says which names were tried.
pub fn probe() -> Result<()> {
    static PROBE: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            let mut reasons = Vec::new();
            for name in DRIVER_LIBRARIES {
                // SAFETY: opening the NVIDIA driver runs its initialisers, as cudarc's own
                // dlopen of the same library would; the handle is closed again right away
                // (cudarc keeps its own).
                match unsafe { libloading::Library::new(name) } {
                    Ok(lib) => {
                        drop(lib);
                        return Ok(());
                    }
                    Err(e) => reasons.push(e.to_string()),
                }
            }
            Err(format!(
                "CUDA: no CUDA driver ({} not found: {})",
                DRIVER_LIBRARIES.join(" or "),
                reasons.join("; ")
            ))
        })
        .clone()
        .map_err(Error::DeviceUnavailable)
}

/// Runs `f` (which calls cudarc) after [`probe`], turning a panic into [`Error::Cuda`].
pub fn guarded<T>(what: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    probe()?;
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(Error::Cuda {
                what,
                message: format!("the CUDA bindings panicked: {message}"),
            })
        }
    }
}

/// Wraps a driver error.
pub fn cuda_err(what: &'static str) -> impl FnOnce(cudarc::driver::DriverError) -> Error {
    move |e| Error::Cuda {
        what,
        message: e.to_string(),
    }
}
