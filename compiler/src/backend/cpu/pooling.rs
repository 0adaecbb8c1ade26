//! Memory-bound kernels, vectorised along channels (NHWC's contiguous axis):
//! max/average pooling, global average pooling and the standalone channel
//! affine. Each applies its optional prologue to real pixels as it loads
//! them; pooling skips padded taps, which is exactly -inf padding for max and
//! (with the divisor counting them) zero padding for average.

use super::codegen::{Cg, Result, VectorIsa};
use super::env::{
    in_base, out_base, pixel_at, pixel_ptr, split_last, vgep, vgep2, vgepc, vload, vstore,
    AffineRef, Env, TARGET_TASKS,
};
use super::pack::WeightsBuilder;
use crate::backend::kernel::{Affine, PoolKernel, View};
use inkwell::values::{IntValue, PointerValue, VectorValue};

/// Pool windows up to this many taps are unrolled.
const UNROLL_TAPS: usize = 16;
/// Pixels of one affine task at most.
const AFFINE_BLOCK_MAX: usize = 256;
/// Channels one global-pool task reduces (8 ymm or 4 zmm accumulators).
const GAP_CHUNK: usize = 64;

/// One output row per task.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct PoolPlan {
    max: bool,
    n: usize,
    h: usize,
    w: usize,
    c: usize,
    oh: usize,
    ow: usize,
    k: [usize; 2],
    s: [usize; 2],
    p: [usize; 2],
    input: View,
    output: View,
    prologue: Option<AffineRef>,
}

impl PoolPlan {
    pub fn new(
        p: &PoolKernel,
        max: bool,
        i: &View,
        o: &View,
        isa: VectorIsa,
        wb: &mut WeightsBuilder,
    ) -> Self {
        PoolPlan {
            max,
            n: i.n,
            h: i.h,
            w: i.w,
            c: i.channels,
            oh: o.h,
            ow: o.w,
            k: p.kernel,
            s: p.stride,
            p: p.padding,
            input: *i,
            output: *o,
            prologue: p.prologue.as_ref().map(|a| AffineRef::pack(a, isa, wb)),
        }
    }

    pub fn tasks(&self) -> usize {
        self.n * self.oh
    }

    pub fn emit_task<'ctx>(&self, cg: &Cg<'ctx>, env: &Env<'ctx>, t: IntValue<'ctx>) -> Result<()> {
        let (n_i, oh_i) = cg.divrem(t, self.oh)?;
        let (iv, ov) = (&self.input, &self.output);
        let img = vgep2(cg, iv, in_base(cg, env, iv)?, n_i, iv.image_stride())?;
        let out_row = pixel_at(cg, out_base(cg, env, ov)?, ov, [n_i, oh_i, cg.c64(0)])?;
        let ih0 = cg.sub(cg.mulc(oh_i, self.s[0])?, cg.c64(self.p[0]))?;
        let init = cg.splat_c(if self.max { f32::NEG_INFINITY } else { 0.0 });
        let scale = cg.splat_c(1.0 / (self.k[0] * self.k[1]) as f32);
        cg.for_n(self.ow, |ow_i| {
            let iw0 = cg.sub(cg.mulc(ow_i, self.s[1])?, cg.c64(self.p[1]))?;
            let dst = vgep2(cg, ov, out_row, ow_i, ov.pixel_stride)?;
            cg.for_channel_vectors(self.c, |c, lanes| {
                let acc = cg.vec_slot(init)?;
                // The bounds checks only where padding can put a tap
                // outside the image.
                let padded = self.p != [0, 0];
                let tap = |ih: IntValue<'ctx>, row_ok: IntValue<'ctx>, iw: IntValue<'ctx>| {
                    let load = || {
                        let row = vgep2(cg, iv, img, ih, iv.row_stride())?;
                        let src = vgep(cg, iv, vgep2(cg, iv, row, iw, iv.pixel_stride)?, c)?;
                        let v = load_prologue(cg, env, iv, self.prologue, src, c, lanes)?;
                        let a = cg.load_slot(acc)?;
                        let r = if self.max {
                            cg.pool_max(a, v)?
                        } else {
                            cg.fadd(a, v)?
                        };
                        cg.store_slot(acc, r)
                    };
                    if padded {
                        let ok = cg.b.build_and(row_ok, cg.in_range(iw, 0, self.w)?, "")?;
                        cg.if_then(ok, load)
                    } else {
                        load()
                    }
                };
                let [kh, kw] = self.k;
                if kh * kw <= UNROLL_TAPS {
                    for y in 0..kh {
                        let ih = cg.addc(ih0, y)?;
                        let row_ok = cg.in_range(ih, 0, self.h)?;
                        for x in 0..kw {
                            tap(ih, row_ok, cg.addc(iw0, x)?)?;
                        }
                    }
                } else {
                    cg.for_n(kh, |y| {
                        let ih = cg.add(ih0, y)?;
                        let row_ok = cg.in_range(ih, 0, self.h)?;
                        cg.for_n(kw, |x| tap(ih, row_ok, cg.add(iw0, x)?))
                    })?;
                }
                let mut r = cg.load_slot(acc)?;
                if !self.max {
                    r = cg.fmul(r, scale)?;
                }
                vstore(cg, ov, r, vgep(cg, ov, dst, c)?, lanes)
            })
        })
    }
}

/// Load `lanes` channels at `src` (channel `c` of the input view `v`) and apply the
/// prologue if there is one.
fn load_prologue<'ctx>(
    cg: &Cg<'ctx>,
    env: &Env<'ctx>,
    v: &View,
    prologue: Option<AffineRef>,
    src: PointerValue<'ctx>,
    c: IntValue<'ctx>,
    lanes: usize,
) -> Result<VectorValue<'ctx>> {
    let x = vload(cg, v, src, lanes)?;
    match prologue {
        Some(a) => a.apply(cg, env, x, c),
        None => Ok(x),
    }
}

/// One image × one chunk of 64 channels per task.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct GapPlan {
    input: View,
    output: View,
    prologue: Option<AffineRef>,
    chunks: usize,
}

impl GapPlan {
    pub fn new(
        prologue: Option<&Affine>,
        i: &View,
        o: &View,
        isa: VectorIsa,
        wb: &mut WeightsBuilder,
    ) -> Self {
        GapPlan {
            input: *i,
            output: *o,
            prologue: prologue.map(|a| AffineRef::pack(a, isa, wb)),
            chunks: i.channels.div_ceil(GAP_CHUNK),
        }
    }

    pub fn tasks(&self) -> usize {
        self.input.n * self.chunks
    }

    pub fn emit_task<'ctx>(&self, cg: &Cg<'ctx>, env: &Env<'ctx>, t: IntValue<'ctx>) -> Result<()> {
        let (i, o) = (&self.input, &self.output);
        let hw = i.h * i.w;
        let (n_i, ch) = cg.divrem(t, self.chunks)?;
        let c0 = cg.mulc(ch, GAP_CHUNK)?;
        let img = vgep(
            cg,
            i,
            vgep2(cg, i, in_base(cg, env, i)?, n_i, i.image_stride())?,
            c0,
        )?;
        let dst = vgep(
            cg,
            o,
            vgep2(cg, o, out_base(cg, env, o)?, n_i, o.image_stride())?,
            c0,
        )?;
        let last = i.channels - (self.chunks - 1) * GAP_CHUNK;
        split_last(cg, ch, self.chunks, GAP_CHUNK, last, |count| {
            let l = cg.lanes;
            let nvec = count.div_ceil(l);
            let lanes = |v: usize| (count - v * l).min(l);
            let mut acc = Vec::with_capacity(nvec);
            for _ in 0..nvec {
                acc.push(cg.vec_slot(cg.vf.const_zero())?);
            }
            cg.for_n(i.h, |y| {
                let row = vgep2(cg, i, img, y, i.row_stride())?;
                cg.for_n(i.w, |x| {
                    let src = vgep2(cg, i, row, x, i.pixel_stride)?;
                    for (v, slot) in acc.iter().enumerate() {
                        let c = cg.addc(c0, v * l)?;
                        let p = vgepc(cg, i, src, v * l)?;
                        let x = load_prologue(cg, env, i, self.prologue, p, c, lanes(v))?;
                        cg.store_slot(*slot, cg.fadd(cg.load_slot(*slot)?, x)?)?;
                    }
                    Ok(())
                })
            })?;
            let inv = cg.splat_c(1.0 / hw as f32);
            for (v, slot) in acc.iter().enumerate() {
                let r = cg.fmul(cg.load_slot(*slot)?, inv)?;
                vstore(cg, o, r, vgepc(cg, o, dst, v * l)?, lanes(v))?;
            }
            Ok(())
        })
    }
}

/// A block of pixels per task; in place when input and output views agree.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct AffinePlan {
    input: View,
    output: View,
    affine: AffineRef,
    block: usize,
    blocks: usize,
}

impl AffinePlan {
    pub fn new(a: &Affine, i: &View, o: &View, isa: VectorIsa, wb: &mut WeightsBuilder) -> Self {
        let pixels = i.pixels();
        let block = pixels.div_ceil(TARGET_TASKS).clamp(1, AFFINE_BLOCK_MAX);
        AffinePlan {
            input: *i,
            output: *o,
            affine: AffineRef::pack(a, isa, wb),
            block,
            blocks: pixels.div_ceil(block),
        }
    }

    pub fn tasks(&self) -> usize {
        self.blocks
    }

    pub fn emit_task<'ctx>(&self, cg: &Cg<'ctx>, env: &Env<'ctx>, t: IntValue<'ctx>) -> Result<()> {
        let (i, o) = (&self.input, &self.output);
        let (in_base, out_base) = (in_base(cg, env, i)?, out_base(cg, env, o)?);
        let p0 = cg.mulc(t, self.block)?;
        let last = i.pixels() - (self.blocks - 1) * self.block;
        split_last(cg, t, self.blocks, self.block, last, |count| {
            cg.for_n(count, |px| {
                let p = cg.add(p0, px)?;
                let (src, dst) = (
                    pixel_ptr(cg, in_base, i, p)?,
                    pixel_ptr(cg, out_base, o, p)?,
                );
                cg.for_channel_vectors(i.channels, |c, lanes| {
                    let src = vgep(cg, i, src, c)?;
                    let y = load_prologue(cg, env, i, Some(self.affine), src, c, lanes)?;
                    vstore(cg, o, y, vgep(cg, o, dst, c)?, lanes)
                })
            })
        })
    }
}
