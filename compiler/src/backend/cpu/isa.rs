//! The vector instruction set the CPU kernels are written for: the SIMD width every kernel's
//! vectors have and the number of vector registers the register blocking may fill. Plans
//! (tiling, packing) and code generation read the same [`VectorIsa`], so the packed weights
//! match the code that reads them.

use std::fmt;

/// SIMD width and register file of the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VectorIsa {
    /// f32 lanes of one vector: 8 (ymm) or 16 (zmm).
    pub lanes: usize,
    /// Architectural vector registers: 16 (AVX2) or 32 (AVX-512).
    pub registers: usize,
}

impl VectorIsa {
    /// AVX2 + FMA: 16 ymm registers of 8 f32.
    pub const AVX2: VectorIsa = VectorIsa {
        lanes: 8,
        registers: 16,
    };
    /// AVX-512 (F, VL, BW, DQ): 32 zmm registers of 16 f32, mask registers.
    pub const AVX512: VectorIsa = VectorIsa {
        lanes: 16,
        registers: 32,
    };

    /// The vector width in bits.
    pub fn bits(&self) -> usize {
        self.lanes * 32
    }
}

impl fmt::Display for VectorIsa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            VectorIsa::AVX2 => f.write_str("avx2"),
            VectorIsa::AVX512 => f.write_str("avx512"),
            VectorIsa { lanes, registers } => write!(f, "{lanes}x{registers}"),
        }
    }
}
