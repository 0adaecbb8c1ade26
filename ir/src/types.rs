//! Tensor types: element type and logical shape.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Element type of a tensor. Only `F32` is executed today; the others are
/// spelled so reduced-precision modes can be added without changing the IR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DType {
    F32,
    F16,
    BF16,
}

impl DType {
    /// Size of one element in bytes.
    pub fn size_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }

    /// The spelling used by the text form (`f32`, `f16`, `bf16`).
    pub fn as_str(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
        }
    }

    /// Inverse of [`DType::as_str`].
    pub fn parse(s: &str) -> Option<DType> {
        match s {
            "f32" => Some(DType::F32),
            "f16" => Some(DType::F16),
            "bf16" => Some(DType::BF16),
            _ => None,
        }
    }
}

/// The type of a tensor value: element type and logical shape.
///
/// Four-dimensional activations are `[N, C, H, W]` as in PyTorch, whatever
/// physical layout a backend later chooses.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TensorType {
    pub dtype: DType,
    pub shape: Vec<usize>,
}

impl TensorType {
    pub fn f32(shape: impl Into<Vec<usize>>) -> Self {
        TensorType {
            dtype: DType::F32,
            shape: shape.into(),
        }
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// Number of elements, or `None` on overflow.
    pub fn num_elements(&self) -> Option<usize> {
        self.shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
    }

    /// Size in bytes, or `None` on overflow.
    pub fn size_bytes(&self) -> Option<usize> {
        self.num_elements()?.checked_mul(self.dtype.size_bytes())
    }

    /// `(N, C, H, W)` of a rank-4 tensor.
    pub fn nchw(&self) -> Option<(usize, usize, usize, usize)> {
        match self.shape.as_slice() {
            &[n, c, h, w] => Some((n, c, h, w)),
            _ => None,
        }
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[", self.dtype.as_str())?;
        for (i, d) in self.shape.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{d}")?;
        }
        write!(f, "]")
    }
}
