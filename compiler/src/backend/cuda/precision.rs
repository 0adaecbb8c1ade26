//! The arithmetic vocabulary of the CUDA backend: the GEMM kernels'
//! [`Precision`] (`--precision fp32|tf32|fp16|bf16`), the tensor-core
//! [`Operand`] types it selects, their conversions from f32 (what the
//! emulator computes for the `cvt` instructions, and what [`check_weights`]
//! tests the weights against), and the documented error bounds. It depends
//! on nothing else of the backend: the SIMT builder (`simt.rs`), the plans,
//! the tensor-core step (`mma.rs`) and the emulator all build on it.
//!
//! Accuracy: each operand carries a relative rounding error of at most
//! 2^-11 (TF32: to nearest, ties away; FP16: to nearest even) or 2^-8
//! (BF16); products and sums stay in f32. FP16 also has a narrow range:
//! values beyond ±65504 become infinite and values below 2^-14 lose bits
//! (subnormals, down to 2^-24); the compiler refuses weights outside the
//! range (`compile` fails naming the layer); activations cannot be checked
//! before run time. The logits are within [`Precision::rel_bound`] of the
//! f32 reference executor: 5e-3 for TF32 and FP16, 3e-2 for BF16; the f32
//! kernels stay within 1e-4. Measured through the emulator
//! (`compiler/tests/cuda/mma.rs`), random weights and BN statistics, image
//! 32 (ImageNet stem) or 12 (CIFAR), seeds 11 / 12:
//!
//! ```text
//! preset           tf32, 2 layers/block  tf32, full depth
//! densenet121      4.3e-4 / 5.5e-4      1.6e-3 / 3.4e-4
//! densenet161      3.0e-4 / 5.2e-4      5.6e-4 / 4.5e-4
//! densenet169      (as densenet121)     7.0e-4 / 6.2e-4
//! densenet201      (as densenet121)     3.4e-4 / 3.8e-4
//! densenet-bc-100  3.9e-4 / 7.7e-4      4.0e-4 / 5.2e-4
//! densenet-bc-250  3.6e-4 / 1.1e-3      1.8e-4 / 3.1e-4
//! densenet-bc-190  3.5e-4 / 3.1e-4      5.9e-4 / 4.6e-4
//! densenet-40      3.7e-4 / 4.4e-4      5.2e-4 / 6.1e-4
//! ```
//!
//! ```text
//! preset           fp16, 2 layers/block  fp16, full depth    bf16, 2 layers/block  bf16, full depth
//! densenet121      4.5e-4 / 3.3e-4      8.9e-4 / 3.9e-4     3.4e-3 / 9.4e-4      7.4e-3 / 2.5e-3
//! densenet161      2.9e-4 / 6.7e-4      7.2e-4 / 6.3e-4     3.5e-3 / 5.3e-3      4.1e-3 / 4.2e-3
//! densenet169      (as densenet121)     5.0e-4 / 7.0e-4     (as densenet121)     6.3e-3 / 3.5e-3
//! densenet201      (as densenet121)     2.7e-4 / 7.2e-4     (as densenet121)     2.6e-3 / 4.7e-3
//! densenet-bc-100  3.9e-4 / 7.5e-4      3.7e-4 / 4.7e-4     1.8e-3 / 8.7e-3      4.6e-3 / 4.9e-3
//! densenet-bc-250  6.0e-4 / 1.1e-3      3.5e-4 / 4.3e-4     2.9e-3 / 7.5e-3      3.1e-3 / 2.9e-3
//! densenet-bc-190  3.4e-4 / 2.8e-4      7.5e-4 / 4.1e-4     3.2e-3 / 2.6e-3      3.6e-3 / 3.8e-3
//! densenet-40      3.6e-4 / 4.4e-4      5.5e-4 / 4.6e-4     4.5e-3 / 3.3e-3      2.9e-3 / 3.5e-3
//! ```
//!
//! The worst, 1.6e-3 (TF32), 1.1e-3 (FP16) and 8.7e-3 (BF16), leave a
//! factor of 3 or more to the bounds. Single GEMM kernels: TF32 and FP16
//! 1.6e-4 … 4.3e-4, BF16 1.3e-3 … 3.7e-3. A GPU adds its own summation
//! order inside each mma (a few f32 ulps), nothing at the operands' scale.

/// Relative error bound (max norm) of TF32 networks' logits against the
/// f32 reference, asserted by the tests (measured: the module docs).
pub const TF32_REL_BOUND: f32 = 5e-3;
/// The same for FP16 operands (TF32's significand, to nearest even).
pub const FP16_REL_BOUND: f32 = 5e-3;
/// The same for BF16 operands (8-bit significand).
pub const BF16_REL_BOUND: f32 = 3e-2;
/// The f32 kernels' bound (ARCHITECTURE.md, Targets: f32 within 1e-4 of the reference).
pub const FP32_REL_BOUND: f32 = 1e-4;

pub use crate::backend::precision::Precision;
pub(crate) use crate::backend::precision::{bf16, round_bits};

impl Precision {
    /// The documented and tested relative error bound (max norm) of a
    /// network's logits from the CUDA kernels against the f32 reference (the CPU's bf16
    /// bound: `backend::cpu::CPU_BF16_REL_BOUND`).
    pub fn rel_bound(self) -> f32 {
        match self {
            Precision::Fp32 => FP32_REL_BOUND,
            Precision::Tf32 => TF32_REL_BOUND,
            Precision::Fp16 => FP16_REL_BOUND,
            Precision::Bf16 => BF16_REL_BOUND,
        }
    }

    /// The tensor-core operand type, `None` for the SIMT f32 kernels.
    pub fn operand(self) -> Option<Operand> {
        match self {
            Precision::Fp32 => None,
            Precision::Tf32 => Some(Operand::Tf32),
            Precision::Fp16 => Some(Operand::F16),
            Precision::Bf16 => Some(Operand::Bf16),
        }
    }
}

/// The type of tensor-core `A` and `B` operands; always f32 accumulators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operand {
    /// 1-8-10 bits, rounded to nearest, ties away (`cvt.rna.tf32.f32`).
    Tf32,
    /// IEEE half: 1-5-10 bits, to nearest even (`cvt.rn.f16.f32`).
    F16,
    /// bfloat16: 1-8-7 bits, to nearest even (`cvt.rn.bf16.f32`).
    Bf16,
}
impl Operand {
    /// `TF32`, `FP16` or `BF16`.
    pub fn name(self) -> &'static str {
        match self {
            Operand::Tf32 => "TF32",
            Operand::F16 => "FP16",
            Operand::Bf16 => "BF16",
        }
    }

    /// The largest finite value.
    pub fn max(self) -> f32 {
        match self {
            Operand::Tf32 => f32::from_bits(0x7f7f_e000),
            Operand::F16 => 65504.0,
            Operand::Bf16 => f32::from_bits(0x7f7f_0000),
        }
    }

    /// Words of padding after each shared row of `A` (`[8][BM + pad]`) and
    /// `B` (`[8][BN + pad]`) for conflict-free fragment reads (`BM` and `BN`
    /// multiples of 16; banks are words mod 32). Lane `4g + t` reads word
    /// `s·t·R + g` of a tile with row stride `R` (`s` = [`Self::t_scale`]),
    /// so the four `t` must start eight banks apart: `s·R` ≡ 8 (mod 16).
    /// TF32 (`s` = 1): `R` ≡ 8 (mod 16), pads 8 and 8; the `A` gather's
    /// stores (stride ≡ 4 (mod 16) would suit them) become 2-way, fewer
    /// than the 2-way `A` reads they replace. FP16/BF16 (`s` = 2): `R` ≡ 4
    /// (mod 8), pads 4 and 4, which also suit the stores.
    pub(crate) fn row_pads(self) -> (usize, usize) {
        match self {
            Operand::Tf32 => (8, 8),
            Operand::F16 | Operand::Bf16 => (4, 4),
        }
    }
}

// The operand types' conversions from f32, as values held in an f32 (module docs).

/// `cvt.rna.tf32.f32`: round to 10 explicit mantissa bits, to nearest,
/// ties away from zero; the low 13 bits of the result are zero. NaN stays
/// NaN, infinities stay, a finite value may round to infinity.
pub(crate) fn tf32(x: f32) -> f32 {
    if x.is_nan() {
        return f32::NAN;
    }
    let bits = x.to_bits();
    let (sign, mag) = (bits & 0x8000_0000, bits & 0x7fff_ffff);
    if mag >= 0x7f80_0000 {
        return x;
    }
    // Adding half a unit of the 10-bit mantissa to the magnitude and
    // truncating rounds half away from zero; a carry into the exponent is
    // the right result (including the overflow to infinity).
    f32::from_bits(sign | ((mag + 0x1000) & !0x1fff))
}

/// `cvt.rn.f16.f32` and back: IEEE half precision, to nearest even, with
/// subnormals (multiples of 2^-24 below 2^-14); beyond the largest half
/// (65504) plus half an ulp the result is infinite.
pub(crate) fn f16(x: f32) -> f32 {
    let a = x.abs();
    if x.is_nan() || a == f32::INFINITY {
        return x;
    }
    if a >= 65520.0 {
        return f32::INFINITY.copysign(x);
    }
    if a < 2f32.powi(-14) {
        // Scaling by powers of two is exact; so is rounding an integer.
        return ((a * 2f32.powi(24)).round_ties_even() * 2f32.powi(-24)).copysign(x);
    }
    round_bits(x, 13)
}

/// `x` rounded to `op`, as the conversion instruction does.
pub(crate) fn round(op: Operand, x: f32) -> f32 {
    match op {
        Operand::Tf32 => tf32(x),
        Operand::F16 => f16(x),
        Operand::Bf16 => bf16(x),
    }
}

/// Checks that every weight of a GEMM stays finite once rounded to `op`
/// (FP16's range ends at 65504; TF32 and BF16 have f32's exponent range):
/// an infinite operand would turn the layer's outputs into infinities and
/// NaNs without any run-time error.
pub(crate) fn check_weights(op: Operand, weights: &[f32]) -> std::result::Result<(), String> {
    match weights
        .iter()
        .position(|&w| w.is_finite() && !round(op, w).is_finite())
    {
        None => Ok(()),
        Some(i) => Err(format!(
            "weight {i} ({:e}) is outside the range of {} tensor-core operands (largest {:e}): \
             compile with another --precision ({})",
            weights[i],
            op.name(),
            op.max(),
            match op {
                Operand::F16 => "bf16, tf32 or fp32",
                _ => "fp32",
            }
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_outside_fp16_are_refused() {
        let w = [1.0, -65504.0, 0.5, -7e4];
        let e = check_weights(Operand::F16, &w).expect_err("-7e4 is beyond FP16");
        assert!(
            e.contains("weight 3 (-7e4) is outside the range of FP16"),
            "{e}"
        );
        assert!(e.contains("largest 6.5504e4"), "{e}");
        assert!(e.contains("(bf16, tf32 or fp32)"), "{e}");
        assert_eq!(check_weights(Operand::F16, &w[..3]), Ok(()));
        for op in [Operand::Tf32, Operand::Bf16] {
            assert_eq!(check_weights(op, &w), Ok(()), "{op:?}");
            assert!(
                check_weights(op, &[f32::MAX]).is_err(),
                "{op:?} rounds MAX up"
            );
            assert_eq!(check_weights(op, &[op.max()]), Ok(()), "{op:?}");
        }
        // A non-finite weight is not the precision's doing: left to the
        // loaders' own checks.
        assert_eq!(check_weights(Operand::F16, &[f32::INFINITY]), Ok(()));
    }

    #[test]
    fn precision_names_round_trip() {
        for p in Precision::ALL {
            assert_eq!(p.name().parse::<Precision>(), Ok(p));
        }
        assert!("f16".parse::<Precision>().is_err());
        assert!("FP16".parse::<Precision>().is_err());
    }

    #[test]
    fn tf32_rounds_to_nearest_ties_away() {
        let ulp = 2f32.powi(-10); // TF32's unit in the last place at 1.0
        assert_eq!(tf32(1.0), 1.0);
        assert_eq!(tf32(1.0 + ulp), 1.0 + ulp);
        assert_eq!(
            tf32(1.0 + ulp / 2.0),
            1.0 + ulp,
            "a tie rounds away from zero"
        );
        assert_eq!(tf32(-(1.0 + ulp / 2.0)), -(1.0 + ulp));
        assert_eq!(
            tf32(1.0 + 3.0 * ulp / 2.0),
            1.0 + 2.0 * ulp,
            "ties away, not to even"
        );
        assert_eq!(tf32(1.0 + ulp / 2.0 - 2f32.powi(-23)), 1.0, "below the tie");
        assert_eq!(tf32(1.0 + ulp / 4.0), 1.0);
        assert_eq!(tf32(2.0 - ulp / 2.0), 2.0, "a carry into the exponent");
        assert_eq!(tf32(f32::MAX), f32::INFINITY);
        assert_eq!(tf32(f32::NEG_INFINITY), f32::NEG_INFINITY);
        assert!(tf32(f32::NAN).is_nan());
        assert_eq!(tf32(-0.0).to_bits(), (-0.0f32).to_bits());
        let sub = f32::from_bits(0x0000_1000); // half a TF32 ulp of the subnormals
        assert_eq!(tf32(sub).to_bits(), 0x0000_2000);
        for x in [0.1f32, -3.7, 1e-20, 6.02e23] {
            let r = tf32(x);
            assert_eq!(r.to_bits() & 0x1fff, 0);
            assert!(((r - x) / x).abs() <= 2f32.powi(-11), "{x} -> {r}");
        }
    }

    #[test]
    fn f16_rounds_to_nearest_even_with_subnormals_and_overflow() {
        let ulp = 2f32.powi(-10); // FP16's unit in the last place at 1.0
        assert_eq!(f16(1.0 + ulp), 1.0 + ulp);
        assert_eq!(f16(1.0 + ulp / 2.0), 1.0, "a tie rounds to even (down)");
        assert_eq!(
            f16(1.0 + 3.0 * ulp / 2.0),
            1.0 + 2.0 * ulp,
            "tie to even (up)"
        );
        assert_eq!(f16(-(1.0 + 3.0 * ulp / 2.0)), -(1.0 + 2.0 * ulp));
        assert_eq!(
            f16(1.0 + ulp / 2.0 + 2f32.powi(-23)),
            1.0 + ulp,
            "above the tie"
        );
        assert_eq!(f16(2.0 - ulp / 4.0), 2.0, "a carry into the exponent");
        assert_eq!(f16(65504.0), 65504.0, "the largest half");
        assert_eq!(f16(65519.0), 65504.0, "below the overflow tie");
        assert_eq!(f16(65520.0), f32::INFINITY, "the tie rounds to even: 2^16");
        assert_eq!(f16(-1e6), f32::NEG_INFINITY);
        assert_eq!(f16(f32::MAX), f32::INFINITY);
        assert!(f16(f32::NAN).is_nan());
        assert_eq!(f16(-0.0).to_bits(), (-0.0f32).to_bits());
        let (min_normal, min_sub) = (2f32.powi(-14), 2f32.powi(-24));
        assert_eq!(f16(min_normal), min_normal);
        assert_eq!(
            f16(min_normal * (1.0 + ulp / 2.0)),
            min_normal,
            "tie to even"
        );
        assert_eq!(
            f16(min_normal - min_sub / 4.0),
            min_normal,
            "up into the normals"
        );
        assert_eq!(f16(3.0 * min_sub), 3.0 * min_sub, "a subnormal");
        assert_eq!(f16(2.5 * min_sub), 2.0 * min_sub, "subnormal tie to even");
        assert_eq!(f16(3.5 * min_sub), 4.0 * min_sub);
        assert_eq!(f16(min_sub / 2.0), 0.0, "half the smallest: to even, zero");
        assert_eq!(f16(-min_sub * 0.75), -min_sub);
        assert_eq!(f16(1e-9).to_bits(), 0);
        for x in [0.1f32, -3.7, 1000.3, 6e-5] {
            let r = f16(x);
            assert!(((r - x) / x).abs() <= 2f32.powi(-11), "{x} -> {r}");
            assert!(f16(r) == r && f16(x) != x, "{x} is not a half, {r} is");
        }
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        let ulp = 2f32.powi(-7); // BF16's unit in the last place at 1.0
        assert_eq!(bf16(1.0 + ulp), 1.0 + ulp);
        assert_eq!(bf16(1.0 + ulp / 2.0), 1.0, "a tie rounds to even (down)");
        assert_eq!(
            bf16(1.0 + 3.0 * ulp / 2.0),
            1.0 + 2.0 * ulp,
            "tie to even (up)"
        );
        assert_eq!(bf16(-(1.0 + ulp / 2.0 + 2f32.powi(-20))), -(1.0 + ulp));
        assert_eq!(bf16(2.0 - ulp / 4.0), 2.0, "a carry into the exponent");
        assert_eq!(bf16(f32::MAX), f32::INFINITY);
        let max = f32::from_bits(0x7f7f_0000); // the largest finite BF16
        assert_eq!(bf16(f32::from_bits(0x7f7f_7fff)), max);
        assert_eq!(
            bf16(f32::from_bits(0x7f7f_8000)),
            f32::INFINITY,
            "tie to even"
        );
        assert!(bf16(f32::NAN).is_nan());
        assert_eq!(bf16(f32::NEG_INFINITY), f32::NEG_INFINITY);
        assert_eq!(bf16(-0.0).to_bits(), (-0.0f32).to_bits());
        let sub = f32::from_bits(0x0000_8000); // half a BF16 ulp of the subnormals
        assert_eq!(bf16(sub).to_bits(), 0, "tie to even: zero");
        assert_eq!(bf16(f32::from_bits(0x0001_8000)).to_bits(), 0x0002_0000);
        for x in [0.1f32, -3.7, 1e-20, 6.02e23] {
            let r = bf16(x);
            assert_eq!(r.to_bits() & 0xffff, 0);
            assert!(((r - x) / x).abs() <= 2f32.powi(-8), "{x} -> {r}");
        }
    }
}
