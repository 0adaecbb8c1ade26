//! Compile-time packing of constants into the device weights section, in
//! the layout the generated kernels read.
//!
//! A conv (or linear) weight becomes the GEMM operand `B[K_pad][N_pad]`,
//! `B[(ky * KW + kx) * I + i][o] = W[o][i][ky][kx]`: row `k` of the implicit
//! GEMM is the input channel `i` of tap `(ky, kx)`, matching the NHWC order
//! in which the kernel gathers its input rows. Rows are zero-padded to a
//! whole number of `BK` tiles and columns to a whole number of `BN` tiles,
//! so the kernel loads `B` tiles without bounds checks. Biases are padded
//! to `N_pad` the same way (zeros when the conv has none).
//!
//! An op-norm head's thresholds become [`OP_NORM_FLOATS`] floats a class
//! ([`pack_op_norm`]).

pub(crate) use crate::backend::weights::WeightsBuilder;
pub use crate::backend::weights::WEIGHT_ALIGN;

/// Floats per class of a packed op-norm head: `t, 1/(2t), -1/(2(1-t)), known`.
pub(crate) const OP_NORM_FLOATS: usize = 4;

/// Pack op-norm thresholds for the head kernel (`head.rs`): per class
/// `t, a = 1/(2t), nb = -1/(2(1-t)), known`, so that the kernel computes
/// `known > 0.5 ? (y < t ? y·a : fma(1 - y, nb, 1)) : 0.5`. A NaN threshold
/// packs as `0, 0, 0, 0` (`known = 0`: the class outputs 0.5 whatever its
/// logit, NaN included). The reciprocals are computed in f64 and rounded
/// once, so `y·a` is within 1.5 ulp of the reference's `y / (2t)`.
pub(crate) fn pack_op_norm(thresholds: &[f32]) -> Vec<f32> {
    let mut out = Vec::with_capacity(OP_NORM_FLOATS * thresholds.len());
    for &t in thresholds {
        if t.is_nan() {
            out.extend([0.0; OP_NORM_FLOATS]);
        } else {
            let t64 = f64::from(t);
            out.extend([
                t,
                (1.0 / (2.0 * t64)) as f32,
                (-1.0 / (2.0 * (1.0 - t64))) as f32,
                1.0,
            ]);
        }
    }
    out
}

/// Shape of a packed GEMM `B` operand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BShape {
    pub out_channels: usize,
    pub in_channels: usize,
    pub kernel: [usize; 2],
    pub k_pad: usize,
    pub n_pad: usize,
}

/// Pack a `[O, I, KH, KW]` weight as `B[K_pad][N_pad]` (module docs).
pub(crate) fn pack_b(w: &[f32], s: &BShape) -> Vec<f32> {
    let [kh, kw] = s.kernel;
    let ic = s.in_channels;
    let mut out = vec![0.0; s.k_pad * s.n_pad];
    for o in 0..s.out_channels {
        for i in 0..ic {
            for y in 0..kh {
                for x in 0..kw {
                    let row = (y * kw + x) * ic + i;
                    out[row * s.n_pad + o] = w[((o * ic + i) * kh + y) * kw + x];
                }
            }
        }
    }
    out
}

/// A bias (or zeros) padded to `n_pad`.
pub(crate) fn pack_bias(bias: Option<&[f32]>, n_pad: usize) -> Vec<f32> {
    let mut out = bias.map(<[f32]>::to_vec).unwrap_or_default();
    out.resize(n_pad, 0.0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn b_rows_follow_tap_then_channel() {
        // O=2, I=3, 1x2 kernel: W[o][i][0][x] = o*100 + i*10 + x.
        let mut w = vec![0.0; 2 * 3 * 2];
        for o in 0..2 {
            for i in 0..3 {
                for x in 0..2 {
                    w[(o * 3 + i) * 2 + x] = (o * 100 + i * 10 + x) as f32;
                }
            }
        }
        let s = BShape {
            out_channels: 2,
            in_channels: 3,
            kernel: [1, 2],
            k_pad: 8,
            n_pad: 4,
        };
        let b = pack_b(&w, &s);
        // Row (kx=1, i=2) = 5; column o=1.
        assert_eq!(b[5 * 4 + 1], 121.0);
        assert_eq!(b[5 * 4 + 2], 0.0);
        assert!(b[6 * 4..].iter().all(|&v| v == 0.0));
    }

    #[test]
    fn pieces_are_aligned() {
        let mut wb = WeightsBuilder::default();
        assert_eq!(wb.push(&[1.0; 3]), 0);
        assert_eq!(wb.push(&[2.0; 5]), 16);
        assert_eq!(wb.into_bytes().len() % WEIGHT_ALIGN, 0);
    }
}
