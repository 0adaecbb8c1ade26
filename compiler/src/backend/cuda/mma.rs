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
//! Accuracy: each operand carries a relative rounding error of at most
//! 2^-11 (TF32: to nearest, ties away; FP16: to nearest even) or 2^-8
//! (BF16); products and sums stay in f32. FP16 also has a narrow range:
//! values beyond ±65504 become infinite and values below 2^-14 lose bits
//! (subnormals, down to 2^-24); the compiler refuses weights outside the
//! range (`compile` fails naming the layer); activations cannot be checked
//! before run time. The logits are within [`Precision::rel_bound`] of the
//! f32 reference executor: 5e-3 for TF32 and FP16, 3e-2 for BF16; the f32
//! kernels stay within 1e-4. Measured through the emulator
//! (`compiler/tests/cuda_mma.rs`), random weights and BN statistics, image
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

use super::kb::{Kb, KbExt, Result};
use super::plan::Tile;

/// Relative error bound (max norm) of TF32 networks' logits against the
/// f32 reference, asserted by the tests (measured: the module docs).
pub const TF32_REL_BOUND: f32 = 5e-3;
/// The same for FP16 operands (TF32's significand, to nearest even).
pub const FP16_REL_BOUND: f32 = 5e-3;
/// The same for BF16 operands (8-bit significand).
pub const BF16_REL_BOUND: f32 = 3e-2;
/// The f32 kernels' bound (DESIGN: f32 within 1e-4 of the reference).
pub const FP32_REL_BOUND: f32 = 1e-4;

/// Arithmetic of the GEMM kernels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// f32 FMA on the SIMT cores (within 1e-4 of the reference).
    #[default]
    Fp32,
    /// TF32 tensor cores (`mma.sync` m16n8k8), f32 accumulation.
    Tf32,
    /// FP16 tensor cores (`mma.sync` m16n8k8), f32 accumulation and storage.
    Fp16,
    /// BF16 tensor cores (`mma.sync` m16n8k8), f32 accumulation and storage.
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

    /// The documented and tested relative error bound (max norm) of a
    /// network's logits against the f32 reference.
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

// The operand types' conversions from f32, as values held in an f32: what
// the emulator computes for the conversion instructions, and what
// `check_weights` tests the weights against.

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

/// `cvt.rn.bf16.f32` and back: 7 explicit mantissa bits, to nearest even,
/// f32's exponent range (subnormals included, overflow to infinity).
pub(crate) fn bf16(x: f32) -> f32 {
    if x.is_nan() || x.is_infinite() {
        return x;
    }
    round_bits(x, 16)
}

/// Finite `x` with its low `drop` mantissa bits rounded off to nearest
/// even; a carry into the exponent is the right result (including the
/// overflow to infinity).
fn round_bits(x: f32, drop: u32) -> f32 {
    let bits = x.to_bits();
    let half = (1u32 << (drop - 1)) - 1 + ((bits >> drop) & 1);
    f32::from_bits((bits + half) & !((1u32 << drop) - 1))
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
}
