//! The TF32 tensor-core step of the implicit-GEMM kernel (`--precision
//! tf32`): the block tile and its shared-memory staging are those of
//! `gemm.rs`; what changes is who computes which outputs. The block's warps
//! form a `wy × wx` grid, each warp owning a `WM × WN` warp tile made of
//! 16x8 tiles of `mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32`;
//! each `BK` = 8 slice of the reduction is one mma per 16x8 tile.
//!
//! Fragment layout (PTX ISA, "Matrix Fragments for mma.m16n8k8", `.tf32`),
//! for lane `l` of a warp, `g = l / 4`, `t = l % 4`:
//!
//! ```text
//! A (16x8, row):  a0 = A[g][t]    a1 = A[g+8][t]    a2 = A[g][t+4]    a3 = A[g+8][t+4]
//! B (8x8, col):   b0 = B[t][g]    b1 = B[t+4][g]
//! C, D (16x8):    c0 = C[g][2t]   c1 = C[g][2t+1]   c2 = C[g+8][2t]   c3 = C[g+8][2t+1]
//! ```
//!
//! The operands are read from the shared tiles and rounded with
//! `cvt.rna.tf32.f32` as they are loaded into fragments (staging is
//! unchanged, so the zero fill of the `M`, `N` and `K` remainders is the
//! f32 kernel's); accumulation is in f32, and the epilogue (bias, ReLU,
//! stores into the output's channel slice) is the f32 kernel's, on the
//! rows and columns [`Warps::rows_cols`] gives each thread.
//!
//! Accuracy: each operand carries a relative rounding error of at most
//! 2^-11; products and sums stay in f32. The logits are within
//! [`TF32_REL_BOUND`] = 5e-3 (relative, max norm) of the f32 reference
//! executor; the f32 kernels stay within 1e-4. Measured through the
//! emulator (`compiler/tests/cuda_tf32.rs`), random weights and BN
//! statistics, image 32 (ImageNet stem) or 12 (CIFAR), seeds 11 / 12:
//!
//! ```text
//! preset           2 layers/block       full depth
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
//! The worst, 1.6e-3, leaves a factor 3 to the bound. A GPU adds its own
//! summation order inside each mma (a few f32 ulps), nothing at TF32's
//! scale.

use super::kb::{Kb, KbExt, Result};
use super::plan::{Tile, A_ROW_PAD};

/// Relative error bound (max norm) of TF32 networks' logits against the
/// f32 reference, asserted by the tests (measured: the module docs).
pub const TF32_REL_BOUND: f32 = 5e-3;

/// Arithmetic of the GEMM kernels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// f32 FMA on the SIMT cores (within 1e-4 of the reference).
    #[default]
    Fp32,
    /// TF32 tensor cores (`mma.sync` m16n8k8), f32 accumulation.
    Tf32,
}

impl Precision {
    /// `fp32` or `tf32`, as `--precision` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Tf32 => "tf32",
        }
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
            _ => Err(format!("unknown precision `{s}`: expected fp32 or tf32")),
        }
    }
}

/// Threads of a warp.
pub(crate) const WARP: usize = 32;
/// The mma shape.
const MMA_M: usize = 16;
const MMA_N: usize = 8;
const MMA_K: usize = 8;

/// How a block tile is split among its warps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Warps {
    /// Warps along the columns (the rest along the rows).
    pub wx: usize,
    /// Warp tile.
    pub wm: usize,
    pub wn: usize,
}

impl Warps {
    /// The split of `t`: warp tiles at most 32 columns wide, the warps
    /// stacked along the rows. The accumulators per thread are those of
    /// the f32 kernel (`tm · tn`), since both cover the same block tile.
    pub fn of(t: &Tile) -> std::result::Result<Warps, String> {
        let warps = t.threads / WARP;
        let wx = (t.bn / 32).max(1);
        let bad = || format!("GEMM tile {t:?} does not split into m16n8 warp tiles");
        if t.bk != MMA_K || !t.threads.is_multiple_of(WARP) || !warps.is_multiple_of(wx) {
            return Err(bad());
        }
        let (wm, wn) = (t.bm / (warps / wx), t.bn / wx);
        let ok = wm * (warps / wx) == t.bm
            && wn * wx == t.bn
            && wm.is_multiple_of(MMA_M)
            && wn.is_multiple_of(MMA_N)
            && wm * wn / WARP == t.tm * t.tn;
        if ok {
            Ok(Warps { wx, wm, wn })
        } else {
            Err(bad())
        }
    }

    fn m_tiles(&self) -> usize {
        self.wm / MMA_M
    }

    fn n_tiles(&self) -> usize {
        self.wn / MMA_N
    }

    /// Columns of the accumulator grid: two per 8-column tile.
    fn cols(&self) -> usize {
        2 * self.n_tiles()
    }
}

/// Per-thread constants of the mma path.
pub(crate) struct Lane<I> {
    /// `t · (BM + pad) + wm0 + g`: the thread's `A` fragment base in `As`.
    a_base: I,
    /// `t · BN + wn0 + g`: its `B` fragment base in `Bs`.
    b_base: I,
}

/// A thread's accumulator rows and columns (see [`rows_cols`]).
pub(crate) type RowsCols<I> = (Vec<I>, Vec<I>);

/// The warp-grid coordinates of thread `tid`: `(g, t, wm0, wn0)`.
fn coords<K: Kb>(k: &mut K, w: &Warps, tid: K::I) -> Result<[K::I; 4]> {
    let warp = k.div(tid, WARP as i32)?;
    let lane = k.rem(tid, WARP as i32)?;
    let g = k.div(lane, 4)?;
    let tg = k.rem(lane, 4)?;
    let wxi = k.rem(warp, w.wx as i32)?;
    let wyi = k.div(warp, w.wx as i32)?;
    let wm0 = k.mulc(wyi, w.wm as i32)?;
    let wn0 = k.mulc(wxi, w.wn as i32)?;
    Ok([g, tg, wm0, wn0])
}

/// The fragment bases of thread `tid`.
pub(crate) fn lane<K: Kb>(k: &mut K, w: &Warps, t: &Tile, tid: K::I) -> Result<Lane<K::I>> {
    let [g, tg, wm0, wn0] = coords(k, w, tid)?;
    let a_t = k.mulc(tg, (t.bm + A_ROW_PAD) as i32)?;
    let a_w = k.add(a_t, wm0)?;
    let a_base = k.add(a_w, g)?;
    let b_t = k.mulc(tg, t.bn as i32)?;
    let b_w = k.add(b_t, wn0)?;
    let b_base = k.add(b_w, g)?;
    Ok(Lane { a_base, b_base })
}

/// The rows and columns of the block tile thread `tid`'s accumulators
/// hold: accumulator `r · cols.len() + c` is output `(rows[r], cols[c])`.
/// Row `2·mi + h` is `wm0 + 16·mi + g + 8·h`, column `2·ni + j` is
/// `wn0 + 8·ni + 2·t + j` (the `C` fragment layout).
pub(crate) fn rows_cols<K: Kb>(k: &mut K, w: &Warps, tid: K::I) -> Result<RowsCols<K::I>> {
    let [g, tg, wm0, wn0] = coords(k, w, tid)?;
    let row0 = k.add(wm0, g)?;
    let t2 = k.mulc(tg, 2)?;
    let col0 = k.add(wn0, t2)?;
    let mut rows = Vec::with_capacity(2 * w.m_tiles());
    for mi in 0..w.m_tiles() {
        for h in 0..2 {
            rows.push(k.addc(row0, (MMA_M * mi + 8 * h) as i32)?);
        }
    }
    let mut cols = Vec::with_capacity(w.cols());
    for ni in 0..w.n_tiles() {
        for j in 0..2 {
            cols.push(k.addc(col0, (MMA_N * ni + j) as i32)?);
        }
    }
    Ok((rows, cols))
}

/// One `BK` = 8 slice: every warp multiplies its rows of `As` (`[k][BM +
/// pad]`) by its columns of `Bs` (`[k][BN]`) into `acc`.
pub(crate) fn step<K: Kb>(
    k: &mut K,
    w: &Warps,
    t: &Tile,
    lane: &Lane<K::I>,
    a_s: K::S,
    b_s: K::S,
    mut acc: Vec<K::F>,
) -> Result<Vec<K::F>> {
    let a_row = (t.bm + A_ROW_PAD) as i32;
    let mut a_frags = Vec::with_capacity(w.m_tiles());
    for mi in 0..w.m_tiles() as i32 {
        let mut a = Vec::with_capacity(4);
        for i in 0..4 {
            // a0..a3: rows g, g+8, g, g+8; reduction rows t, t, t+4, t+4.
            let off = (i / 2) * 4 * a_row + MMA_M as i32 * mi + (i % 2) * 8;
            let si = k.addc(lane.a_base, off)?;
            let v = k.load_shared(a_s, si)?;
            a.push(k.tf32(v)?);
        }
        a_frags.push([a[0], a[1], a[2], a[3]]);
    }
    let mut b_frags = Vec::with_capacity(w.n_tiles());
    for ni in 0..w.n_tiles() as i32 {
        let mut b = Vec::with_capacity(2);
        for j in 0..2 {
            // b0, b1: reduction rows t, t+4 of column g.
            let si = k.addc(lane.b_base, j * 4 * t.bn as i32 + MMA_N as i32 * ni)?;
            let v = k.load_shared(b_s, si)?;
            b.push(k.tf32(v)?);
        }
        b_frags.push([b[0], b[1]]);
    }
    let cols = w.cols();
    for (mi, a) in a_frags.iter().enumerate() {
        for (ni, b) in b_frags.iter().enumerate() {
            let at = |i: usize| (2 * mi + i / 2) * cols + 2 * ni + i % 2;
            let c = [acc[at(0)], acc[at(1)], acc[at(2)], acc[at(3)]];
            let d = k.mma_tf32(*a, *b, c)?;
            for (i, v) in d.into_iter().enumerate() {
                acc[at(i)] = v;
            }
        }
    }
    Ok(acc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tile_splits_into_warp_tiles() {
        for m in [1, 2, 7, 33, 100, 1000, 5000, 9000, 200_000] {
            for n in [1, 5, 12, 16, 32, 48, 64, 128, 1000] {
                let t = Tile::choose(m, n);
                let w = Warps::of(&t).unwrap_or_else(|e| panic!("m={m} n={n}: {e}"));
                assert_eq!(w.wm * w.wn / WARP, t.tm * t.tn, "{t:?} {w:?}");
            }
        }
    }

    #[test]
    fn precision_names_round_trip() {
        for p in [Precision::Fp32, Precision::Tf32] {
            assert_eq!(p.name().parse::<Precision>(), Ok(p));
        }
        assert!("fp16".parse::<Precision>().is_err());
    }
}
