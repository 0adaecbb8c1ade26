//! Finding the CUDA driver before cudarc is touched: with `dynamic-loading`, cudarc opens
//! libcuda on its first call and panics when it cannot. [`probe`] opens the library itself
//! (the names cudarc also tries, the versioned soname first) and caches the answer; every
//! cudarc call additionally runs under [`guarded`], so a missing symbol (a driver older than
//! the API cudarc was built for) is an error too, never a crash.
//!
//! Without the `cuda` cargo feature there is no cudarc: [`probe`] always fails with the error
//! that says so, and the rest of the module's public API is the same.

use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::error::{Error, Result};

/// The driver library names tried, in order.
pub const DRIVER_LIBRARIES: [&str; 2] = ["libcuda.so.1", "libcuda.so"];

/// What [`probe`] reports when the runtime was built without the `cuda` feature.
#[cfg(not(feature = "cuda"))]
pub(crate) fn built_without_cuda() -> Error {
    Error::DeviceUnavailable(
        "CUDA: this runtime was built without CUDA support (rebuild it with its `cuda` cargo \
         feature)"
            .into(),
    )
}

/// Whether CUDA can be used: always an error without the `cuda` feature.
#[cfg(not(feature = "cuda"))]
pub fn probe() -> Result<()> {
    Err(built_without_cuda())
}

/// Whether the CUDA driver library can be opened; the error says which names were tried.
#[cfg(feature = "cuda")]
pub fn probe() -> Result<()> {
    use std::sync::OnceLock;

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
#[cfg(feature = "cuda")]
pub(crate) fn cuda_err(what: &'static str) -> impl FnOnce(cudarc::driver::DriverError) -> Error {
    move |e| Error::Cuda {
        what,
        message: e.to_string(),
    }
}
