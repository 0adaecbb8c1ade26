//! The tensor-core step of the implicit-GEMM kernel (`--precision
//! tf32|fp16|bf16`): the block tile and its shared-memory staging are those
//! of `gemm.rs`; what changes is who computes which outputs. The block's
//! warps form a `wy × wx` grid, each warp owning a `WM × WN` warp tile made
//! of 16x8 tiles of one m16n8k8 `mma.sync` each per `BK` = 8 slice of the
//! reduction:
//!
//! ```text
//! tf32  mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32   cvt.rna.tf32.f32
//! fp16  mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32     cvt.rn.f16.f32
//! bf16  mma.sync.aligned.m16n8k8.row.col.f32.bf16.bf16.f32   cvt.rn.bf16.f32
//! ```
//!
//! The k8 shape of the 16-bit types keeps `BK` = 8 and so the f32 kernel's
//! tile, staging and zero fill for all three; each thread holds four `A`
//! and two `B` values in every mode (TF32 one per 32-bit register, the
//! 16-bit types two per register: `.f16x2` / `.bf16x2`).
//!
//! Fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k8"), for lane
//! `l` of a warp, `g = l / 4`, `t = l % 4`:
//!
//! ```text
//! tf32  A (16x8, row):  a0 = A[g][t]     a1 = A[g+8][t]     a2 = A[g][t+4]    a3 = A[g+8][t+4]
//!       B (8x8, col):   b0 = B[t][g]     b1 = B[t+4][g]
//! 16bit A (16x8, row):  a0 = A[g][2t]    a1 = A[g][2t+1]    a2 = A[g+8][2t]   a3 = A[g+8][2t+1]
//!       B (8x8, col):   b0 = B[2t][g]    b1 = B[2t+1][g]
//! all   C, D (16x8):    c0 = C[g][2t]    c1 = C[g][2t+1]    c2 = C[g+8][2t]   c3 = C[g+8][2t+1]
//! ```
//!
//! (In a 16-bit register the lower half holds the lower-numbered element:
//! `a0` and `a1` share the first `A` register, `b0` and `b1` the `B` one.)
//!
//! The operands are read from the shared tiles (f32, as staged) and rounded
//! to the operand type as they are loaded into fragments; accumulation is
//! in f32, and the epilogue (bias, ReLU, stores into the output's channel
//! slice) is the f32 kernel's, on the rows and columns [`Warps::rows_cols`]
//! gives each thread. Activations and weights stay f32 in memory: these
//! modes trade the GEMMs' operand precision for tensor-core throughput, not
//! memory traffic.
//!
//! Accuracy (operand rounding, the measured errors, the bounds the tests
//! assert): `precision.rs`.

use super::plan::Tile;
use super::precision::Operand;
use super::simt::{Kb, KbExt, Result};

/// The fragment layout of each operand type (module docs).
impl Operand {
    /// Thread `t` of a group holds reduction rows `t_scale · t + ...`.
    fn t_scale(self) -> usize {
        match self {
            Operand::Tf32 => 1,
            Operand::F16 | Operand::Bf16 => 2,
        }
    }

    /// `A` register `i`: (row offset from `g`, reduction offset from
    /// `t_scale · t`).
    fn a_offsets(self, i: usize) -> (usize, usize) {
        match self {
            Operand::Tf32 => (8 * (i % 2), 4 * (i / 2)),
            Operand::F16 | Operand::Bf16 => (8 * (i / 2), i % 2),
        }
    }

    /// `B` register `i`: reduction offset from `t_scale · t`.
    fn b_offset(self, i: usize) -> usize {
        match self {
            Operand::Tf32 => 4 * i,
            Operand::F16 | Operand::Bf16 => i,
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
    /// Operand type: fragment layout and rounding.
    op: Operand,
    /// `s·t · (BM + pad) + wm0 + g`: the thread's `A` fragment base in `As`
    /// (`s` = [`Operand::t_scale`]).
    a_base: I,
    /// `s·t · (BN + pad) + wn0 + g`: its `B` fragment base in `Bs`.
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

/// The fragment bases of thread `tid` for operands `op`.
pub(crate) fn lane<K: Kb>(
    k: &mut K,
    op: Operand,
    w: &Warps,
    t: &Tile,
    tid: K::I,
) -> Result<Lane<K::I>> {
    let [g, tg, wm0, wn0] = coords(k, w, tid)?;
    let tg = k.mulc(tg, op.t_scale() as i32)?;
    let a_t = k.mulc(tg, t.a_row() as i32)?;
    let a_w = k.add(a_t, wm0)?;
    let a_base = k.add(a_w, g)?;
    let b_t = k.mulc(tg, t.b_row() as i32)?;
    let b_w = k.add(b_t, wn0)?;
    let b_base = k.add(b_w, g)?;
    Ok(Lane { op, a_base, b_base })
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
/// pad]`) by its columns of `Bs` (`[k][BN + pad]`) into `acc`.
pub(crate) fn step<K: Kb>(
    k: &mut K,
    w: &Warps,
    t: &Tile,
    lane: &Lane<K::I>,
    a_s: K::S,
    b_s: K::S,
    mut acc: Vec<K::F>,
) -> Result<Vec<K::F>> {
    let op = lane.op;
    let a_row = t.a_row();
    let mut a_frags = Vec::with_capacity(w.m_tiles());
    for mi in 0..w.m_tiles() {
        let mut a = Vec::with_capacity(4);
        for i in 0..4 {
            let (row, red) = op.a_offsets(i);
            let off = red * a_row + MMA_M * mi + row;
            let si = k.addc(lane.a_base, off as i32)?;
            let v = k.load_shared(a_s, si)?;
            a.push(k.round_operand(op, v)?);
        }
        a_frags.push([a[0], a[1], a[2], a[3]]);
    }
    let mut b_frags = Vec::with_capacity(w.n_tiles());
    for ni in 0..w.n_tiles() {
        let mut b = Vec::with_capacity(2);
        for j in 0..2 {
            let off = op.b_offset(j) * t.b_row() + MMA_N * ni;
            let si = k.addc(lane.b_base, off as i32)?;
            let v = k.load_shared(b_s, si)?;
            b.push(k.round_operand(op, v)?);
        }
        b_frags.push([b[0], b[1]]);
    }
    let cols = w.cols();
    for (mi, a) in a_frags.iter().enumerate() {
        for (ni, b) in b_frags.iter().enumerate() {
            let at = |i: usize| (2 * mi + i / 2) * cols + 2 * ni + i % 2;
            let c = [acc[at(0)], acc[at(1)], acc[at(2)], acc[at(3)]];
            let d = k.mma(op, *a, *b, c)?;
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
        for (m, n) in crate::backend::cuda::plan::sample_gemm_sizes() {
            let t = Tile::choose(m, n);
            let w = Warps::of(&t).unwrap_or_else(|e| panic!("m={m} n={n}: {e}"));
            assert_eq!(w.wm * w.wn / WARP, t.tm * t.tn, "{t:?} {w:?}");
        }
    }
}
