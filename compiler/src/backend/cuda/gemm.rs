//! The implicit-GEMM convolution kernel (also used for linear layers),
//! written once against [`Kb`].
//!
//! Block `(bx, by)` computes output pixels `[bx·BM, bx·BM + BM)` × output
//! channels `[by·BN, by·BN + BN)`. For each `BK`-row slice of the reduction:
//! - the block gathers `A[m][k]` (input channel `i` of tap `(ky, kx)` of
//!   output pixel `m`, NHWC: consecutive `k` are consecutive channels, so
//!   consecutive threads read consecutive addresses) into shared
//!   `As[k][m]`, applying the prologue to real pixels only: a tap in the
//!   zero padding, a row `m ≥ M` or `k ≥ K` contributes 0;
//! - it copies the packed `B[k][o]` slice into shared `Bs[k][o]` (padded at
//!   compile time, so unguarded);
//! - thread `(ty, tx)` accumulates its `TM × TN` register tile (rows
//!   `ty·TM..`, columns `tx·TN..` of the block tile).
//!
//! The shared rows are `BM + a_pad` and `BN + b_pad` floats long, the pads
//! chosen per precision against bank conflicts (`Tile::with_precision`).
//!
//! A 1x1 GEMM takes its reduction length `K` as a scalar argument (one
//! entry serves the bottlenecks of a dense block, which differ only in
//! their input channels): `k = i`, the number of `BK` slices is computed
//! from it, and rows `k ≥ K` contribute 0 as for a constant `K`.
//!
//! The epilogue adds the bias, applies ReLU and stores the elements with
//! `m < M`, `o < N` into the output view (a channel slice of its buffer).
//!
//! With a tensor-core precision (TF32, FP16, BF16) the warps compute the
//! block tile on the tensor cores instead (`mma.rs`); staging and epilogue
//! are unchanged.

use super::mma::{self, Warps};
use super::plan::GemmPlan;
use super::simt::{Buf, Kb, KbExt, Result, Scalar};

/// Per-thread constants of one `A` gather assignment.
struct ARow<I, B> {
    /// Row of the `A` tile.
    mi: I,
    /// Output pixel's batch index and top-left input tap.
    n: I,
    y0: I,
    x0: I,
    valid: B,
}

/// Emit the body of the GEMM kernel `p`.
pub(crate) fn emit<K: Kb>(k: &mut K, p: &GemmPlan) -> Result<()> {
    let t = p.tile;
    let (a_len, b_len) = t.shared_floats();
    let a_s = k.shared(a_len)?;
    let b_s = k.shared(b_len)?;
    let (a_row, b_row) = (t.a_row() as i32, t.b_row() as i32);
    let (bm, bn, bk) = (t.bm as i32, t.bn as i32, t.bk as i32);
    let threads = t.threads as i32;

    let tid = k.tid()?;
    let bx = k.ctaid(0)?;
    let by = k.ctaid(1)?;
    let m0 = k.mulc(bx, bm)?;
    let n0 = k.mulc(by, bn)?;

    // A gather: thread `tid` loads k-row `tid % BK` of tile rows
    // `tid / BK + r·(T / BK)`, r in 0..BM·BK/T.
    let a_ki = k.rem(tid, bk)?;
    let a_mi0 = k.div(tid, bk)?;
    let mut a_rows = Vec::new();
    for r in 0..(t.bm * t.bk / t.threads) as i32 {
        let mi = k.addc(a_mi0, r * (threads / bk))?;
        let m = k.add(m0, mi)?;
        let valid = k.ultc(m, p.m)?;
        let (n, oy, ox) = p.output.split(k, m)?;
        let y0 = k.mulc(oy, p.stride[0])?;
        let y0 = k.addc(y0, -p.padding[0])?;
        let x0 = k.mulc(ox, p.stride[1])?;
        let x0 = k.addc(x0, -p.padding[1])?;
        a_rows.push(ARow {
            mi,
            n,
            y0,
            x0,
            valid,
        });
    }
    // B copy: thread `tid` copies column `tid % BN` of k-rows
    // `tid / BN + r·(T / BN)`, r in 0..⌈BN·BK/T⌉; when BN·BK < T the
    // threads past the tile idle.
    let b_ni = k.rem(tid, bn)?;
    let b_ki0 = k.div(tid, bn)?;
    let b_rounds = (t.bn * t.bk).div_ceil(t.threads) as i32;
    let b_idle = t.bn * t.bk < t.threads;
    let b_active = k.ultc(b_ki0, bk)?;
    let b_col = k.add(n0, b_ni)?;

    let tx = k.rem(tid, bn / t.tn as i32)?;
    let ty = k.div(tid, bn / t.tn as i32)?;
    let row0 = k.mulc(ty, t.tm as i32)?;
    let col0 = k.mulc(tx, t.tn as i32)?;
    let warps = match p.precision.operand() {
        None => None,
        Some(op) => {
            let w = Warps::of(&t).map_err(crate::backend::BackendError::Codegen)?;
            Some((w, mma::lane(k, op, &w, &t, tid)?))
        }
    };
    let padded = p.padding != [0, 0];
    let (kw, ic) = (p.kernel[1], p.input.channels);

    let (k_len, k_tiles) = if p.k_param {
        let k_len = k.scalar(Scalar::K)?;
        let t = k.addc(k_len, bk - 1)?;
        (k_len, k.div(t, bk)?)
    } else {
        (k.ci(p.k), k.ci(p.k_tiles as i32))
    };

    let zero = k.cf(0.0);
    let zero_i = k.ci(0);
    let init = vec![zero; t.tm * t.tn];
    let acc = k.loop_acc(k_tiles, init, &mut |k, kt, mut acc| {
        let k0 = k.mulc(kt, bk)?;
        let kk = k.add(k0, a_ki)?;
        let k_valid = k.ult(kk, k_len)?;
        let (i, ky, kx) = if p.k_param {
            // One tap: k is the channel; rows past K read channel 0 (the
            // prologue's scale and shift are K long) and contribute 0.
            (k.selecti(k_valid, kk, zero_i)?, zero_i, zero_i)
        } else {
            let i = k.rem(kk, ic)?;
            let tap = k.div(kk, ic)?;
            let kx = k.rem(tap, kw)?;
            (i, k.div(tap, kw)?, kx)
        };
        let (scale, shift) = match p.prologue {
            Some(_) => {
                let ci = k.wide(i)?;
                (Some(k.load(Buf::Scale, ci)?), Some(k.load(Buf::Shift, ci)?))
            }
            None => (None, None),
        };
        for row in &a_rows {
            let y = k.add(row.y0, ky)?;
            let x = k.add(row.x0, kx)?;
            let mut ok = k.and(row.valid, k_valid)?;
            if padded {
                let in_y = k.ultc(y, p.input.h)?;
                let in_x = k.ultc(x, p.input.w)?;
                ok = k.and(ok, in_y)?;
                ok = k.and(ok, in_x)?;
            }
            let e = p.input.elem_nyx(k, row.n, y, x, i)?;
            let mut v = k.load_if(ok, Buf::Input, e, zero)?;
            if let (Some(s), Some(h), Some(a)) = (scale, shift, p.prologue) {
                v = k.fma(v, s, h)?;
                if a.relu {
                    v = k.relu(v)?;
                }
                // Padding taps (and rows past M or K) stay 0: the
                // prologue applies to real pixels only.
                v = k.select(ok, v, zero)?;
            }
            let si = k.mulc(a_ki, a_row)?;
            let si = k.add(si, row.mi)?;
            k.store_shared(a_s, si, v)?;
        }
        for r in 0..b_rounds {
            let ki = k.addc(b_ki0, r * (threads / bn))?;
            let row = k.add(k0, ki)?;
            let e = k.index(0, row, i64::from(p.n_pad))?;
            let e = k.addw(e, b_col)?;
            let si = k.mulc(ki, b_row)?;
            let si = k.add(si, b_ni)?;
            if b_idle {
                let zero = k.cf(0.0);
                let v = k.load_if(b_active, Buf::Matrix, e, zero)?;
                k.store_shared_if(b_active, b_s, si, v)?;
            } else {
                let v = k.load(Buf::Matrix, e)?;
                k.store_shared(b_s, si, v)?;
            }
        }
        k.barrier()?;
        if let Some((w, lane)) = &warps {
            acc = mma::step(k, w, &t, lane, a_s, b_s, acc)?;
        } else {
            for kk in 0..bk {
                let mut a = Vec::with_capacity(t.tm);
                for r in 0..t.tm as i32 {
                    let si = k.addc(row0, kk * a_row + r)?;
                    a.push(k.load_shared(a_s, si)?);
                }
                let mut b = Vec::with_capacity(t.tn);
                for c in 0..t.tn as i32 {
                    let si = k.addc(col0, kk * b_row + c)?;
                    b.push(k.load_shared(b_s, si)?);
                }
                for (r, &av) in a.iter().enumerate() {
                    for (c, &bv) in b.iter().enumerate() {
                        let x = &mut acc[r * t.tn + c];
                        *x = k.fma(av, bv, *x)?;
                    }
                }
            }
        }
        k.barrier()?;
        Ok(acc)
    })?;

    // Epilogue, on the block-tile rows and columns of the accumulators.
    let (rows, cols) = match &warps {
        Some((w, _)) => mma::rows_cols(k, w, tid)?,
        None => {
            let rows = (0..t.tm as i32).map(|r| k.addc(row0, r));
            let rows = rows.collect::<Result<Vec<_>>>()?;
            let cols = (0..t.tn as i32).map(|c| k.addc(col0, c));
            (rows, cols.collect::<Result<Vec<_>>>()?)
        }
    };
    let mut out_cols = Vec::with_capacity(cols.len());
    for &col in &cols {
        let o = k.add(n0, col)?;
        let ok = k.ultc(o, p.n)?;
        let bi = k.wide(o)?;
        let bias = k.load(Buf::Bias, bi)?;
        out_cols.push((o, ok, bias));
    }
    for (r, &row) in rows.iter().enumerate() {
        let m = k.add(m0, row)?;
        let m_ok = k.ultc(m, p.m)?;
        for (c, &(o, o_ok, bias)) in out_cols.iter().enumerate() {
            let mut v = k.fadd(acc[r * cols.len() + c], bias)?;
            if p.relu {
                v = k.relu(v)?;
            }
            let ok = k.and(m_ok, o_ok)?;
            let e = p.output.elem(k, m, o)?;
            k.store_if(ok, Buf::Output, e, v)?;
        }
    }
    Ok(())
}
