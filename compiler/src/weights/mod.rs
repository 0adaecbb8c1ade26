//! Weight import: reading checkpoints, finding the network in them, binding
//! it to a graph, and deterministic random weights.
//!
//! ```text
//!                       sniff (first bytes, never the file name)
//! torch.save zip ───────zip + pickle VM──────┐
//! torch.save legacy ────legacy + pickle VM───┼─▶ object ──find──▶ TensorMap ──bind──▶ constants
//! .safetensors ─────────safetensors crate────┘   (state dicts,     + Found
//!                                                 module trees)
//!                                      randomize(seed) ──────────────────────▶ constants
//! ```
//!
//! Reading is pure Rust (no Python) and defensive: a truncated or corrupt
//! file is an error, never a panic, and nothing is allocated in proportion
//! to a size the file merely declares. The finder (`find.rs`) looks for the
//! network wherever the checkpoint keeps it (a state dict at the top or
//! under any key, a whole pickled module's tree), strips a wrapper prefix
//! (`module.`, `module.densenet121.`) and reports what it found where
//! ([`Found`]). [`bind`] normalises the remaining names (DataParallel
//! `module.`, old torchvision spellings, `norm_final`, `classifier.0`) and
//! checks every tensor against the graph. [`load`] does all three.

mod bind;
mod error;
mod find;
mod legacy;
mod pickle;
mod pth;
mod random;
mod safetensors;
mod sniff;
mod zip;

pub use bind::{bind, normalize_name, BindReport};
pub use error::{BindProblem, WeightError};
pub use find::{Choice, Found, Ignored, SourceKind};
pub use random::randomize;
pub use sniff::Format;

use error::ParseError;
use find::Object;
use ir::Graph;
use sniff::Sniffed;
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

/// Read every tensor of the network in a weights file, named as the file
/// names them (no prefix stripped), without a graph to compare with: the
/// state dict or module holding the most tensors (see [`read_checkpoint`]).
pub fn read_tensors(path: &Path) -> Result<TensorMap, WeightError> {
    read_checkpoint(path, None, &Choice::default()).map(|(t, _)| t)
}

/// [`read_tensors`] on a file already in memory; `path` only names the
/// source in error messages.
pub fn parse_tensors(bytes: &[u8], path: &Path) -> Result<TensorMap, WeightError> {
    parse_checkpoint(bytes, path, None, &Choice::default()).map(|(t, _)| t)
}

/// Read a weights file and find its network: the format from the bytes,
/// then the state dict or module (and prefix) that best fits `graph`'s
/// constants, or the largest one without a graph, as `choice` allows. The
/// tensors come back with the prefix stripped, names otherwise as in the
/// file ([`bind`] normalises them), with where they were found.
pub fn read_checkpoint(
    path: &Path,
    graph: Option<&Graph>,
    choice: &Choice,
) -> Result<(TensorMap, Found), WeightError> {
    let bytes = std::fs::read(path).map_err(|source| WeightError::Io {
        path: path.to_owned(),
        source,
    })?;
    parse_checkpoint(&bytes, path, graph, choice)
}

/// [`read_checkpoint`] on a file already in memory; `path` only names the
/// source in error messages.
pub fn parse_checkpoint(
    bytes: &[u8],
    path: &Path,
    graph: Option<&Graph>,
    choice: &Choice,
) -> Result<(TensorMap, Found), WeightError> {
    let at = |e: ParseError| e.at(path);
    let (object, format) = match sniff::sniff(bytes) {
        Sniffed::Format(f @ Format::TorchZip) => {
            (Object::Pickle(pth::parse_zip(bytes).map_err(at)?), f)
        }
        Sniffed::Format(f @ Format::TorchLegacy) => {
            (Object::Pickle(legacy::parse(bytes).map_err(at)?), f)
        }
        Sniffed::Format(f @ Format::Safetensors) => {
            let map = safetensors::parse(bytes).map_err(|e| WeightError::Corrupt {
                path: path.to_owned(),
                message: format!("safetensors: {e}"),
            })?;
            (Object::Flat(map), f)
        }
        Sniffed::TorchTar => {
            return Err(WeightError::LegacyFormat {
                path: path.to_owned(),
            })
        }
        Sniffed::Unknown(detail) => {
            return Err(WeightError::UnknownFormat {
                path: path.to_owned(),
                detail,
            })
        }
    };
    find::select(object, format, graph, choice, path)
}

/// What [`load`] did: where the tensors were found and how they bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    pub found: Found,
    pub bind: BindReport,
}

/// Read a weights file, find the network that fits `graph` in it and bind
/// it ([`read_checkpoint`], then [`bind`]). A mismatch is reported with
/// where the tensors were found ([`WeightError::FileMismatch`]); the graph
/// is changed only on success.
pub fn load(graph: &mut Graph, path: &Path, choice: &Choice) -> Result<Loaded, WeightError> {
    let (tensors, found) = read_checkpoint(path, Some(graph), choice)?;
    match bind(graph, tensors) {
        Ok(bind) => Ok(Loaded { found, bind }),
        Err(WeightError::Mismatch { problems }) => Err(WeightError::FileMismatch {
            path: path.to_owned(),
            found: found.summary(),
            problems,
        }),
        Err(e) => Err(e),
    }
}
