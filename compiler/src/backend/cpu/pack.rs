//! Compile-time packing of constants into the weights section, in the exact
//! order the generated kernels read them.
//!
//! Conv (and linear) weights are split into output-channel blocks of `NR = 8·nv`
//! channels; block `j` is stored as `[KH][KW][I][NR]`, so the micro-kernel's
//! inner loop over input channels reads `nv` consecutive vectors per step.
//! The last block may be narrower (fewer vectors) and is zero-padded to a
//! whole vector; biases are stored per block the same way.

use crate::backend::precision::bf16_bits;
pub(crate) use crate::backend::weights::WeightsBuilder;
pub use crate::backend::weights::WEIGHT_ALIGN;

/// How a kernel's output channels are split into register blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OcBlocking {
    /// Vectors per full block.
    pub nv: usize,
    /// Lanes per vector.
    pub lanes: usize,
    /// Number of full blocks.
    pub full: usize,
    /// Vectors of the trailing partial block (0 when there is none).
    pub tail_nv: usize,
    /// Real channels of the trailing partial block.
    pub tail_valid: usize,
}

impl OcBlocking {
    pub fn new(out_channels: usize, nv: usize, lanes: usize) -> Self {
        let nr = nv * lanes;
        let rem = out_channels % nr;
        OcBlocking {
            nv,
            lanes,
            full: out_channels / nr,
            tail_nv: rem.div_ceil(lanes),
            tail_valid: rem,
        }
    }

    pub fn nr(&self) -> usize {
        self.nv * self.lanes
    }

    pub fn has_tail(&self) -> bool {
        self.tail_nv > 0
    }

    pub fn blocks(&self) -> usize {
        self.full + usize::from(self.has_tail())
    }

    /// `(first channel, vectors, real channels)` of each block in order.
    pub fn iter(&self) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
        let nr = self.nr();
        (0..self.full)
            .map(move |j| (j * nr, self.nv, nr))
            .chain(
                self.has_tail()
                    .then_some((self.full * nr, self.tail_nv, self.tail_valid)),
            )
    }
}

/// Pack a `[O, I, KH, KW]` weight as blocks of `[KH][KW][I][NR]`.
pub(crate) fn pack_conv_weight(
    w: &[f32],
    ic: usize,
    [kh, kw]: [usize; 2],
    blocking: &OcBlocking,
) -> Vec<f32> {
    let mut out = Vec::new();
    for (oc0, nv, valid) in blocking.iter() {
        let nr = nv * blocking.lanes;
        for y in 0..kh {
            for x in 0..kw {
                for i in 0..ic {
                    for j in 0..nr {
                        let v = if j < valid {
                            w[(((oc0 + j) * ic + i) * kh + y) * kw + x]
                        } else {
                            0.0
                        };
                        out.push(v);
                    }
                }
            }
        }
    }
    out
}

/// Pack a `[O, I, KH, KW]` weight for the bf16 dot-product kernels (`isa.rs`): blocks of
/// `[KH][KW][ceil(I/2)][NR]` 32-bit words, each word the bf16 pair (input channel `2p` in the
/// low half, `2p + 1` in the high half) of one output channel, rounded to nearest even; an odd
/// last channel is paired with zero. The pairs of each tap are zero-padded to a multiple of
/// `pair_align` (16 for the AMX tiles' 32-channel steps, else 1). The words are returned as
/// the f32 values with their bits, so they go into the same weights section.
pub(crate) fn pack_conv_weight_bf16(
    w: &[f32],
    ic: usize,
    [kh, kw]: [usize; 2],
    blocking: &OcBlocking,
    pair_align: usize,
) -> Vec<f32> {
    let pairs = ic.div_ceil(2).div_ceil(pair_align) * pair_align;
    let mut out = Vec::new();
    for (oc0, nv, valid) in blocking.iter() {
        let nr = nv * blocking.lanes;
        for y in 0..kh {
            for x in 0..kw {
                for p in 0..pairs {
                    for j in 0..nr {
                        let half = |i: usize| -> u32 {
                            if j < valid && i < ic {
                                u32::from(bf16_bits(w[(((oc0 + j) * ic + i) * kh + y) * kw + x]))
                            } else {
                                0
                            }
                        };
                        out.push(f32::from_bits(half(2 * p) | half(2 * p + 1) << 16));
                    }
                }
            }
        }
    }
    out
}

/// Pack a `[O, I, KH, KW]` weight for the AMX tile kernels with the `kw` taps folded into K
/// (`ConvPlan::fold`, few input channels): blocks of `[KH][rows][NR]` words, row
/// `kw·ceil(I/2) + p` the bf16 pair `p` (channels `2p`, `2p + 1`, as in
/// [`pack_conv_weight_bf16`]) of tap `(kh, kw)`, rows past the kernel row zero.
pub(crate) fn pack_conv_weight_bf16_folded(
    w: &[f32],
    ic: usize,
    [kh, kw]: [usize; 2],
    blocking: &OcBlocking,
    rows: usize,
) -> Vec<f32> {
    let pairs = ic.div_ceil(2);
    let mut out = Vec::new();
    for (oc0, nv, valid) in blocking.iter() {
        let nr = nv * blocking.lanes;
        for y in 0..kh {
            for r in 0..rows {
                let (x, p) = (r / pairs, r % pairs);
                for j in 0..nr {
                    let half = |i: usize| -> u32 {
                        if j < valid && i < ic && x < kw {
                            u32::from(bf16_bits(w[(((oc0 + j) * ic + i) * kh + y) * kw + x]))
                        } else {
                            0
                        }
                    };
                    out.push(f32::from_bits(half(2 * p) | half(2 * p + 1) << 16));
                }
            }
        }
    }
    out
}

/// Pack a bias (or zeros) per block, each zero-padded to its block width.
pub(crate) fn pack_bias(bias: Option<&[f32]>, blocking: &OcBlocking) -> Vec<f32> {
    let mut out = Vec::new();
    for (oc0, nv, valid) in blocking.iter() {
        for j in 0..nv * blocking.lanes {
            out.push(match bias {
                Some(b) if j < valid => b[oc0 + j],
                _ => 0.0,
            });
        }
    }
    out
}

/// A per-channel vector zero-padded to a whole number of SIMD vectors.
pub(crate) fn pad_to_vectors(v: &[f32], lanes: usize) -> Vec<f32> {
    let mut out = v.to_vec();
    out.resize(v.len().div_ceil(lanes) * lanes, 0.0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_cover_every_channel_once() {
        for lanes in [8, 16] {
            for oc in 1..70 {
                for nv in 1..=4 {
                    let b = OcBlocking::new(oc, nv, lanes);
                    let covered: usize = b.iter().map(|(_, _, valid)| valid).sum();
                    assert_eq!(covered, oc);
                    let mut next = 0;
                    for (oc0, v, valid) in b.iter() {
                        assert_eq!(oc0, next);
                        assert!(valid <= v * lanes && valid > (v - 1) * lanes);
                        next += valid;
                    }
                }
            }
        }
    }

    #[test]
    fn packed_weight_order() {
        // O=3, I=2, 1x2 kernel, one block of 8.
        let w: Vec<f32> = (0..12).map(|x| x as f32).collect();
        let b = OcBlocking::new(3, 1, 8);
        let p = pack_conv_weight(&w, 2, [1, 2], &b);
        assert_eq!(p.len(), 2 * 2 * 8);
        // Tap x=1, input 0: W[o][0][0][1] = o*4 + 1.
        assert_eq!(&p[16..19], &[1.0, 5.0, 9.0]);
        assert_eq!(p[19], 0.0);
    }

    #[test]
    fn bf16_weights_are_pairs_of_input_channels() {
        // O=2, I=3, 1x1: W[o][i] = 10o + i + 1; one block of 8 output channels.
        let w: Vec<f32> = (0..2)
            .flat_map(|o| (0..3).map(move |i| (10 * o + i + 1) as f32))
            .collect();
        let b = OcBlocking::new(2, 1, 8);
        let p = pack_conv_weight_bf16(&w, 3, [1, 1], &b, 1);
        // Two pairs (channels 0-1, then 2 and a zero) of 8 words each.
        assert_eq!(p.len(), 2 * 8);
        let halves = |x: f32| (x.to_bits() as u16, (x.to_bits() >> 16) as u16);
        let bits = |x: f32| (x.to_bits() >> 16) as u16;
        assert_eq!(halves(p[0]), (bits(1.0), bits(2.0)));
        assert_eq!(halves(p[1]), (bits(11.0), bits(12.0)));
        assert_eq!(halves(p[8]), (bits(3.0), 0));
        assert_eq!(halves(p[9]), (bits(13.0), 0));
        assert_eq!(p[2].to_bits(), 0, "padding output channels are zero");
        // Padded to 16 pairs a tap (the AMX tiles' steps): the same pairs, then zeros.
        let tiles = pack_conv_weight_bf16(&w, 3, [1, 1], &b, 16);
        assert_eq!(tiles.len(), 16 * 8);
        assert_eq!(&tiles[..16], &p[..]);
        assert!(tiles[16..].iter().all(|x| x.to_bits() == 0));
    }

    #[test]
    fn folded_bf16_weights_are_kernel_rows_of_pairs() {
        // O=1, I=3, 1x2: W[0][i][0][x] = 10x + i + 1; rows [x][pair] of 2 pairs each.
        let w: Vec<f32> = (0..3)
            .flat_map(|i| (0..2).map(move |x| (10 * x + i + 1) as f32))
            .collect();
        let b = OcBlocking::new(1, 1, 8);
        let p = pack_conv_weight_bf16_folded(&w, 3, [1, 2], &b, 16);
        assert_eq!(p.len(), 16 * 8);
        let halves = |x: f32| (x.to_bits() as u16, (x.to_bits() >> 16) as u16);
        let bits = |x: f32| (x.to_bits() >> 16) as u16;
        assert_eq!(halves(p[0]), (bits(1.0), bits(2.0)));
        assert_eq!(halves(p[8]), (bits(3.0), 0));
        assert_eq!(halves(p[16]), (bits(11.0), bits(12.0)));
        assert_eq!(halves(p[24]), (bits(13.0), 0));
        assert!(
            p[32..].iter().all(|x| x.to_bits() == 0),
            "rows past the kernel row"
        );
    }

    #[test]
    fn weights_are_aligned() {
        let mut wb = WeightsBuilder::default();
        assert_eq!(wb.push(&[1.0; 3]), 0);
        assert_eq!(wb.push(&[2.0; 5]), 16);
        assert_eq!(wb.into_bytes().len() % WEIGHT_ALIGN, 0);
    }
}
