//! Weight import: reading checkpoints, binding them to a graph, and
//! deterministic random weights.
//!
//! ```text
//! .pth / .pt (torch.save zip) ──pth (zip + pickle VM)──┐
//!                                                       ├─▶ TensorMap ──bind──▶ Graph constants
//! .safetensors ──────────────────safetensors crate─────┘
//!                                             randomize(seed) ──────────────▶ Graph constants
//! ```
//!
//! Reading is pure Rust (no Python) and defensive: a truncated or corrupt
//! file is an error, never a panic, and nothing is allocated in proportion
//! to a size the file merely declares. [`read_tensors`] returns the tensors
//! as the file names them; [`bind`] normalises the names (DataParallel
//! `module.` prefixes, old torchvision spellings) and checks every tensor
//! against the graph.

mod bind;
mod error;
mod pickle;
mod pth;
mod random;
mod safetensors;
mod zip;

pub use bind::{bind, normalize_name, BindReport};
pub use error::{BindProblem, WeightError};
pub use random::randomize;

use std::collections::BTreeMap;
use std::path::Path;

/// Tensors by the name the file gives them, in name order.
pub type TensorMap = BTreeMap<String, Tensor>;

/// A tensor read from a weights file: its shape and its values in
/// row-major (C) order.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: TensorData,
}

/// The values of a tensor. Only float32 values are decoded: other dtypes
/// are kept by name so that [`bind`] can ignore `num_batches_tracked`
/// (int64) and report any other non-float32 tensor.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    F32(Vec<f32>),
    /// A tensor of another dtype, spelled as PyTorch does (`float64`,
    /// `float16`, `bfloat16`, `int64`, ...). Its values are not read.
    Other {
        dtype: String,
    },
}

impl Tensor {
    /// A float32 tensor.
    pub fn f32(shape: impl Into<Vec<usize>>, data: Vec<f32>) -> Self {
        Tensor {
            shape: shape.into(),
            data: TensorData::F32(data),
        }
    }

    /// The values, if the tensor is float32.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            TensorData::F32(d) => Some(d),
            TensorData::Other { .. } => None,
        }
    }

    /// The dtype, spelled as PyTorch does.
    pub fn dtype(&self) -> &str {
        match &self.data {
            TensorData::F32(_) => "float32",
            TensorData::Other { dtype } => dtype,
        }
    }
}

/// The pickled magic number that starts PyTorch's legacy (non-zip) format.
const LEGACY_MAGIC: &[u8] = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19";

/// Read every tensor of a weights file, choosing the format by content:
/// a zip archive is a `torch.save` checkpoint (`.pth`, `.pt`), anything
/// else must be safetensors. PyTorch's legacy non-zip format is refused
/// with a message saying how to re-save the file.
pub fn read_tensors(path: &Path) -> Result<TensorMap, WeightError> {
    let bytes = std::fs::read(path).map_err(|source| WeightError::Io {
        path: path.to_owned(),
        source,
    })?;
    parse_tensors(&bytes, path)
}

/// [`read_tensors`] on a file already in memory; `path` only names the
/// source in error messages.
pub fn parse_tensors(bytes: &[u8], path: &Path) -> Result<TensorMap, WeightError> {
    if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
        return pth::parse(bytes).map_err(|e| e.at(path));
    }
    let is_tar = bytes.get(257..262) == Some(b"ustar");
    if bytes.starts_with(LEGACY_MAGIC) || is_tar {
        return Err(WeightError::LegacyFormat {
            path: path.to_owned(),
        });
    }
    safetensors::parse(bytes).map_err(|e| {
        // A raw pickle (`\x80` PROTO n, then an opcode, never 0) is most
        // likely the legacy format saved with another pickle protocol.
        if matches!(bytes, [0x80, 1..=5, op, ..] if *op != 0) {
            WeightError::LegacyFormat {
                path: path.to_owned(),
            }
        } else {
            WeightError::UnknownFormat {
                path: path.to_owned(),
                detail: format!("safetensors: {e}"),
            }
        }
    })
}
