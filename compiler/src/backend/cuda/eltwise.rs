//! The element-wise kernels, written once against [`Kb`]: one thread per
//! output element `(pixel, channel)`, channel fastest so that consecutive
//! threads touch consecutive addresses.
//!
//! - pooling: the window's taps are unrolled; a tap in the padding is
//!   skipped by max pooling (PyTorch pads with -inf) and counts as 0 for
//!   average pooling (the divisor is always the window size); the prologue
//!   applies to real pixels only;
//! - global average pooling: each thread sums its channel over `h × w`;
//! - affine: `y = x · scale[c] + shift[c]` (then ReLU), possibly in place
//!   (each thread reads the element it writes).

use super::addr::Geom;
use super::plan::{AffineOp, AffinePlan, GapPlan, PoolPlan, ELTWISE_THREADS};
use super::simt::{Buf, Kb, KbExt, Result};

/// The thread's output element: `(valid, pixel, channel)`.
fn element<K: Kb>(k: &mut K, out: &Geom) -> Result<(K::B, K::I, K::I)> {
    let tid = k.tid()?;
    let bx = k.ctaid(0)?;
    let e = k.mulc(bx, ELTWISE_THREADS as i32)?;
    let e = k.add(e, tid)?;
    let valid = k.ultc(e, out.pixels() * out.channels)?;
    let c = k.rem(e, out.channels)?;
    let p = k.div(e, out.channels)?;
    Ok((valid, p, c))
}

/// The affine's `(scale[c], shift[c])`.
fn affine_at<K: Kb>(k: &mut K, c: K::I) -> Result<(K::F, K::F)> {
    let i = k.wide(c)?;
    Ok((k.load(Buf::Scale, i)?, k.load(Buf::Shift, i)?))
}

fn apply<K: Kb>(k: &mut K, a: &AffineOp, sh: (K::F, K::F), x: K::F) -> Result<K::F> {
    let y = k.fma(x, sh.0, sh.1)?;
    if a.relu {
        k.relu(y)
    } else {
        Ok(y)
    }
}

/// Emit a max or average pooling kernel.
pub(crate) fn emit_pool<K: Kb>(k: &mut K, p: &PoolPlan) -> Result<()> {
    let (valid, pix, c) = element(k, &p.output)?;
    let (n, oy, ox) = p.output.split(k, pix)?;
    let sh = match &p.prologue {
        Some(_) => Some(affine_at(k, c)?),
        None => None,
    };
    let y0 = k.mulc(oy, p.stride[0])?;
    let y0 = k.addc(y0, -p.padding[0])?;
    let x0 = k.mulc(ox, p.stride[1])?;
    let x0 = k.addc(x0, -p.padding[1])?;
    let mut acc = k.cf(if p.max { f32::NEG_INFINITY } else { 0.0 });
    for ky in 0..p.kernel[0] {
        let y = k.addc(y0, ky)?;
        let in_y = k.ultc(y, p.input.h)?;
        for kx in 0..p.kernel[1] {
            let x = k.addc(x0, kx)?;
            let in_x = k.ultc(x, p.input.w)?;
            let ok = k.and(in_y, in_x)?;
            let ok = k.and(ok, valid)?;
            let e = p.input.elem_nyx(k, n, y, x, c)?;
            let other = acc;
            let mut v = k.load_if(ok, Buf::Input, e, other)?;
            if let (Some(a), Some(sh)) = (&p.prologue, sh) {
                let t = apply(k, a, sh, v)?;
                v = k.select(ok, t, other)?;
            }
            acc = if p.max {
                k.fmax(acc, v)?
            } else {
                // Skipped taps read `other = acc`; count them as 0.
                let zero = k.cf(0.0);
                let v = k.select(ok, v, zero)?;
                k.fadd(acc, v)?
            };
        }
    }
    if !p.max {
        let inv = k.cf(1.0 / (p.kernel[0] * p.kernel[1]) as f32);
        acc = k.fmul(acc, inv)?;
    }
    let e = p.output.elem(k, pix, c)?;
    k.store_if(valid, Buf::Output, e, acc)
}

/// Emit a global average pooling kernel.
pub(crate) fn emit_gap<K: Kb>(k: &mut K, p: &GapPlan) -> Result<()> {
    let (valid, n, c) = element(k, &p.output)?;
    let sh = match &p.prologue {
        Some(_) => Some(affine_at(k, c)?),
        None => None,
    };
    let hw = p.input.h * p.input.w;
    let first = k.mulc(n, hw)?;
    let zero = k.cf(0.0);
    let trip = k.ci(hw);
    let acc = k.loop_acc(trip, vec![zero], &mut |k, j, acc| {
        let pix = k.add(first, j)?;
        let e = p.input.elem(k, pix, c)?;
        let mut v = k.load_if(valid, Buf::Input, e, zero)?;
        if let (Some(a), Some(sh)) = (&p.prologue, sh) {
            v = apply(k, a, sh, v)?;
        }
        Ok(vec![k.fadd(acc[0], v)?])
    })?;
    let inv = k.cf(1.0 / hw as f32);
    let mean = k.fmul(acc[0], inv)?;
    let e = p.output.elem(k, n, c)?;
    k.store_if(valid, Buf::Output, e, mean)
}

/// Emit a standalone affine kernel.
pub(crate) fn emit_affine<K: Kb>(k: &mut K, p: &AffinePlan) -> Result<()> {
    let (valid, pix, c) = element(k, &p.output)?;
    let sh = affine_at(k, c)?;
    let e = p.input.elem(k, pix, c)?;
    let zero = k.cf(0.0);
    let x = k.load_if(valid, Buf::Input, e, zero)?;
    let y = apply(k, &p.affine, sh, x)?;
    let e = p.output.elem(k, pix, c)?;
    k.store_if(valid, Buf::Output, e, y)
}
