//! `.npy` I/O of [`Tensor`]s: the format tensors cross the command line and
//! the golden fixtures in. The codec is the workspace's `npy` crate (shared
//! with the runtime); this adds the IR's tensor and error types.

use super::tensor::{checked_numel, Tensor};
use crate::error::{IrError, Result};
use std::path::Path;

fn err(message: impl std::fmt::Display) -> IrError {
    IrError::Exec(format!("npy: {message}"))
}

/// Parse the bytes of a `.npy` file.
pub fn from_bytes(bytes: &[u8]) -> Result<Tensor> {
    let a = npy::from_bytes(bytes).map_err(err)?;
    checked_numel(&a.shape)?;
    Tensor::from_vec(a.shape, a.data)
}

/// The bytes of a version 1.0 `.npy` file holding `t`.
pub fn to_bytes(t: &Tensor) -> Vec<u8> {
    npy::to_bytes(&t.shape, &t.data)
}

/// Read a `.npy` file; errors name the path.
pub fn read(path: impl AsRef<Path>) -> Result<Tensor> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| err(format!("{}: {e}", path.display())))?;
    from_bytes(&bytes).map_err(|e| err(format!("{}: {e}", path.display())))
}

/// Write `t` as a `.npy` file; errors name the path.
pub fn write(path: impl AsRef<Path>, t: &Tensor) -> Result<()> {
    let path = path.as_ref();
    std::fs::write(path, to_bytes(t)).map_err(|e| err(format!("{}: {e}", path.display())))
}
