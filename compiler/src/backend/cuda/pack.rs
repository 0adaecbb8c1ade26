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

pub(crate) use crate::backend::weights::WeightsBuilder;
pub use crate::backend::weights::WEIGHT_ALIGN;

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
