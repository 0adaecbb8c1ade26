//! Reading `.npy` float32 tensors, the format tensors cross the command line in, so that a
//! program linking only the runtime can feed one to a model. The codec is the workspace's `npy`
//! crate (shared with `ir::reference::npy`); this adds the runtime's error type.

use std::path::Path;

pub use npy::{from_bytes, to_bytes, Array};

/// Reads a `.npy` file.
pub fn read(path: impl AsRef<Path>) -> crate::Result<Array> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| crate::Error::Input {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    from_bytes(&bytes).map_err(|reason| crate::Error::Input {
        path: path.to_owned(),
        reason,
    })
}
