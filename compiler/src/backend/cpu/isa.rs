//! The vector instruction set the CPU kernels are written for: the SIMD width every kernel's
//! vectors have, the number of vector registers the register blocking may fill, and the
//! multiply of the convolutions (f32 FMA, or bf16 pair dot products). Plans (tiling, packing)
//! and code generation read the same [`VectorIsa`], so the packed weights match the code that
//! reads them.
//!
//! # bf16 (`--precision bf16`)
//!
//! With [`VectorIsa::bf16`] the convolution and linear micro-kernels multiply with
//! `vdpbf16ps` (AVX512_BF16): each instruction takes two bf16 values per f32 lane from each
//! operand and adds both products to the f32 accumulator, twice the multiplies of an f32 FMA.
//! Weights are rounded to bf16 (to nearest even) at compile time and packed as pairs of
//! consecutive input channels, one 32-bit word per (pair, output channel): block `j` of a
//! convolution is `[KH][KW][ceil(I/2)][NR]` words, an odd last channel paired with a zero.
//! Activations stay f32 in the arena; the panel every task packs (prologue applied) stores
//! them as bf16 (`vcvtneps2bf16`, to nearest even), so each pixel's channel pair is one word
//! the kernel broadcasts. Winograd convolutions transform in f32 and run their GEMMs on the
//! transformed tiles in bf16, always as F(2x2) (F(4x4)'s transforms amplify the rounding, see
//! `conv/winograd.rs`). Sums, biases, pooling, the transitions' averages and the heads stay
//! f32. `vdpbf16ps` and `vcvtneps2bf16` treat bf16/f32 subnormals as zero, far below the
//! rounding error.
//!
//! Accuracy: the GEMM and direct kernels match an f64 emulation of exactly that rounding
//! within 2e-5 (`compiler/tests/cpu/bf16.rs`); a single conv is within about 4e-3 of the exact
//! result; a network's logits within [`CPU_BF16_REL_BOUND`] of the f32 reference, asserted on
//! every preset (`tests/tests/cpu_presets.rs`; measured 2.2e-3 … 7.4e-3). On the trained
//! fixture (`tests/fixtures/trained/shapes10`, `tests/tests/trained.rs`) the bf16 logits are
//! within 3.1e-3 of f32 and 255 of 256 predictions agree (asserted: at least 99%).

//!
//! # AMX (`--precision bf16` on Sapphire Rapids and later)
//!
//! With [`VectorIsa::amx`] (a target with AMX-TILE and AMX-BF16: the host's features for
//! `native`, or `--cpu sapphirerapids`, `emeraldrapids`, `graniterapids`) the convolutions
//! with at least 32 input channels, and the few-channel stems with their kernel row folded
//! into K, run on the tile unit (`amx.rs`): `tdpbf16ps` on 16 × 32 bf16 tiles of the same
//! pair-interleaved weights and bf16 panels, f32 sums, so the same rounding and the same
//! bound. On such Xeons `vdpbf16ps` issues at half the rate of an f32 FMA (fp32 was 1.4x
//! faster than the `vdpbf16ps` kernels on DenseNet-121), while a tile multiply does 16 times
//! the work of a zmm FMA per cycle (2.8 TFLOP/s per core measured). Winograd is off there
//! (the transforms would cost more than the multiplies they save). The artefact requires
//! `amx-tile` and `amx-bf16`; the runtime checks them, with the OS's tile state, and asks
//! Linux for that state (`arch_prctl(ARCH_REQ_XCOMP_PERM)`) before it loads the code.
//! `DNC_AMX=0` (experiment knob) compiles such targets with `vdpbf16ps` instead. The tile
//! kernels match the emulated rounding within 2e-5 like the others (`compiler/tests/cpu/
//! bf16.rs`); the presets' logits measured 2.8e-3 … 1.1e-2 against f32 (DenseNet-40 the
//! largest; its `vdpbf16ps` variant 7.2e-3 on the same input), within
//! [`CPU_BF16_REL_BOUND`]. On the trained fixture the tile build is within 4.8e-3 of f32
//! and agrees with its top-1 on all 256 images.

use std::fmt;

/// Relative error bound (max norm) of the logits of a `--precision bf16` CPU network against
/// the f32 reference, asserted by the tests on every preset: each product carries the
/// rounding of two bf16 operands (at most 2^-9 relative each). The same bound as the CUDA
/// bf16 kernels'; measured 2.2e-3 … 7.4e-3 (module docs).
pub const CPU_BF16_REL_BOUND: f32 = 3e-2;

/// SIMD width, register file and multiply of the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VectorIsa {
    /// f32 lanes of one vector: 8 (ymm) or 16 (zmm).
    pub lanes: usize,
    /// Architectural vector registers: 16 (AVX2) or 32 (AVX-512).
    pub registers: usize,
    /// Convolutions multiply bf16 pairs with `vdpbf16ps` (AVX512_BF16, module docs) instead
    /// of f32 FMAs.
    pub bf16: bool,
    /// With [`VectorIsa::bf16`]: the convolutions with enough input channels multiply on the
    /// AMX tile unit (`tdpbf16ps`, AMX-BF16; module docs) instead of with `vdpbf16ps`.
    pub amx: bool,
}

impl VectorIsa {
    /// AVX2 + FMA: 16 ymm registers of 8 f32.
    pub const AVX2: VectorIsa = VectorIsa {
        lanes: 8,
        registers: 16,
        bf16: false,
        amx: false,
    };
    /// AVX-512 (F, VL, BW, DQ): 32 zmm registers of 16 f32, mask registers.
    pub const AVX512: VectorIsa = VectorIsa {
        lanes: 16,
        registers: 32,
        bf16: false,
        amx: false,
    };

    /// The vector width in bits.
    pub fn bits(&self) -> usize {
        self.lanes * 32
    }

    /// The same vectors, convolutions in bf16 dot products.
    pub fn with_bf16(self) -> VectorIsa {
        VectorIsa { bf16: true, ..self }
    }

    /// The same, with the bf16 convolutions on the AMX tiles where they fit them.
    pub fn with_amx(self) -> VectorIsa {
        VectorIsa {
            bf16: true,
            amx: true,
            ..self
        }
    }

    /// Elements of a convolution's reduction (input channels) one multiply step consumes:
    /// 2 for bf16 pairs, else 1.
    pub fn k_step(&self) -> usize {
        if self.bf16 {
            2
        } else {
            1
        }
    }
}

impl fmt::Display for VectorIsa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let VectorIsa {
            lanes, registers, ..
        } = *self;
        match (lanes, registers) {
            (8, 16) => f.write_str("avx2")?,
            (16, 32) => f.write_str("avx512")?,
            _ => write!(f, "{lanes}x{registers}")?,
        }
        if self.bf16 {
            f.write_str("+bf16")?;
        }
        if self.amx {
            f.write_str("+amx")?;
        }
        Ok(())
    }
}
