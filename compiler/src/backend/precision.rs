//! The arithmetic of the convolution and linear kernels, shared by both backends: one
//! `--precision` flag, one enum. Each backend states what it supports (the CPU: fp32 and bf16;
//! CUDA: all four) and documents the error bound it asserts: the CUDA operand types and bounds
//! in `cuda/precision.rs`, the CPU's bf16 dot products in `cpu/isa.rs`.

/// Arithmetic of the GEMM (convolution and linear) kernels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// f32 multiplies and sums (within 1e-4 of the reference).
    #[default]
    Fp32,
    /// TF32 tensor cores (`mma.sync` m16n8k8), f32 accumulation. CUDA only.
    Tf32,
    /// FP16 tensor cores (`mma.sync` m16n8k8), f32 accumulation and storage. CUDA only.
    Fp16,
    /// BF16 operands, f32 accumulation and storage: tensor cores on CUDA, `vdpbf16ps`
    /// (AVX512_BF16) on the CPU.
    Bf16,
}

impl Precision {
    /// Every precision, in `--precision`'s order.
    pub const ALL: [Precision; 4] = [
        Precision::Fp32,
        Precision::Tf32,
        Precision::Fp16,
        Precision::Bf16,
    ];

    /// `fp32`, `tf32`, `fp16` or `bf16`, as `--precision` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Tf32 => "tf32",
            Precision::Fp16 => "fp16",
            Precision::Bf16 => "bf16",
        }
    }

    /// Whether the CPU backend has kernels of this precision (fp32, and bf16 on CPUs with
    /// AVX512_BF16).
    pub fn on_cpu(self) -> bool {
        matches!(self, Precision::Fp32 | Precision::Bf16)
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "fp32" => Ok(Precision::Fp32),
            "tf32" => Ok(Precision::Tf32),
            "fp16" => Ok(Precision::Fp16),
            "bf16" => Ok(Precision::Bf16),
            _ => Err(format!(
                "unknown precision `{s}`: expected fp32, tf32, fp16 or bf16"
            )),
        }
    }
}

/// `x` rounded to bf16 (CUDA's `cvt.rn.bf16.f32` and back; the CPU's bf16 weights): 7
/// explicit mantissa bits, to nearest even, f32's exponent range (subnormals included,
/// overflow to infinity).
pub(crate) fn bf16(x: f32) -> f32 {
    if x.is_nan() || x.is_infinite() {
        return x;
    }
    round_bits(x, 16)
}

/// Finite `x` with its low `drop` mantissa bits rounded off to nearest
/// even; a carry into the exponent is the right result (including the
/// overflow to infinity).
pub(crate) fn round_bits(x: f32, drop: u32) -> f32 {
    let bits = x.to_bits();
    let half = (1u32 << (drop - 1)) - 1 + ((bits >> drop) & 1);
    f32::from_bits((bits + half) & !((1u32 << drop) - 1))
}

/// The bf16 bits of `x` rounded to bf16 ([`bf16`]): its upper half.
/// A NaN stays a (quiet) NaN, whatever bits its payload had.
pub(crate) fn bf16_bits(x: f32) -> u16 {
    if x.is_nan() {
        return 0x7fc0 | ((x.to_bits() >> 16) as u16 & 0x8000);
    }
    (bf16(x).to_bits() >> 16) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_bits_are_the_rounded_upper_half() {
        assert_eq!(bf16_bits(1.0), 0x3f80);
        assert_eq!(bf16_bits(-2.0), 0xc000);
        // 1 + 2^-8 is a tie between 1 and 1 + 2^-7: to even (1).
        assert_eq!(bf16_bits(1.0 + 2f32.powi(-8)), 0x3f80);
        assert_eq!(bf16_bits(1.0 + 3.0 * 2f32.powi(-8)), 0x3f82);
        assert_eq!(bf16_bits(f32::INFINITY), 0x7f80);
        let payload_nan = f32::from_bits(0xff80_0001);
        assert!(payload_nan.is_nan());
        assert_eq!(bf16_bits(payload_nan), 0xffc0);
        for p in Precision::ALL {
            assert_eq!(p.name().parse::<Precision>(), Ok(p));
        }
        assert!("fp64".parse::<Precision>().is_err());
    }
}
