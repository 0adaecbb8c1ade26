//! Emission of a convolution task from its [`ConvPlan`]: chunk, block and
//! tile loops around the micro-kernel calls, and the panel packing.

use super::{round_up, ConvPlan, Mode};
use crate::backend::cpu::codegen::{Cg, Result};
use crate::backend::cpu::env::{
    in_base, out_base, pixel_at, pixel_ptr, split_last, vgep, vgep2, vload, Env, KBind,
    PrefetchLines, LINE_BYTES,
};
use crate::backend::cpu::microkernel::{Microkernels, UkSpec};
use crate::backend::view::ELEM_BYTES;
use crate::backend::BackendError;
use inkwell::values::{IntValue, PointerValue};
use inkwell::IntPredicate;

fn scratch<'ctx>(env: &Env<'ctx>) -> Result<PointerValue<'ctx>> {
    env.scratch
        .ok_or_else(|| BackendError::Codegen("convolution panel without scratch".into()))
}

fn wrong_mode(mode: Mode) -> BackendError {
    BackendError::Codegen(format!("convolution emitter called for {mode:?}"))
}

/// Input channels of one chunk: a constant, or a run-time value when the
/// GEMM's K is a binding ([`ConvPlan::runtime_k`]).
#[derive(Clone, Copy)]
enum Kc<'ctx> {
    Const(usize),
    Runtime(IntValue<'ctx>),
}

impl<'ctx> Kc<'ctx> {
    fn value(self, cg: &Cg<'ctx>) -> IntValue<'ctx> {
        match self {
            Kc::Const(kc) => cg.c64(kc),
            Kc::Runtime(kc) => kc,
        }
    }
}

impl ConvPlan {
    /// A GEMM's input channel count, and the offsets of the constants
    /// packed after the weights (which follow from it), taken out of the
    /// plan as bindings, so the 1x1 convs of a dense block, which differ
    /// only in K, share a body. What K still shapes stays: the panel's row
    /// stride (`kcp`, so the panel layout is the one a constant K gets) and
    /// the lanes of the last channel vector (returned). `None` for a direct
    /// conv.
    pub(crate) fn runtime_k(&mut self) -> Option<(usize, KBind)> {
        if !matches!(self.mode, Mode::Gemm { .. }) || self.weight_off != 0 {
            return None;
        }
        let bind = KBind {
            ic: self.ic,
            bias: self.bias_off,
            scale: self.prologue.map_or(0, |a| a.scale),
            shift: self.prologue.map_or(0, |a| a.shift),
        };
        let tail = self.ic % self.blocking.lanes;
        self.ic = 0;
        self.kc = 0;
        self.input.channels = 0;
        self.bias_off = 0;
        if let Some(a) = &mut self.prologue {
            a.scale = 0;
            a.shift = 0;
        }
        Some((tail, bind))
    }

    /// Task `t` is (pixel block or row segment, output-channel group), the
    /// group fastest, or slowest where the plan says so ([`ConvPlan::groups_outer`]).
    pub fn emit_task<'ctx>(
        &self,
        cg: &Cg<'ctx>,
        uks: &Microkernels<'ctx>,
        env: &Env<'ctx>,
        t: IntValue<'ctx>,
    ) -> Result<()> {
        if self.out_pairs && self.kc < self.ic {
            // `storage.rs` and the handoffs choose such outputs only where one chunk is planned
            // (`one_chunk_with_pairs`); several would store rounded partial sums.
            return Err(BackendError::Codegen(format!(
                "bf16 output from {} input channels in chunks of {}",
                self.ic, self.kc
            )));
        }
        let (r, og) = if self.groups_outer {
            let Mode::Gemm { mblocks, .. } = self.mode else {
                return Err(wrong_mode(self.mode));
            };
            let (og, r) = cg.divrem(t, mblocks)?;
            (r, og)
        } else if self.groups > 1 {
            cg.divrem(t, self.groups)?
        } else {
            (t, cg.c64(0))
        };
        match self.mode {
            Mode::Gemm { m, mc, mblocks, .. } => {
                split_last(cg, r, mblocks, mc, m - (mblocks - 1) * mc, |count| {
                    self.emit_gemm(cg, uks, env, r, og, count)
                })
            }
            Mode::Direct { owb, n_owb, .. } => {
                let (r, owb_i) = cg.divrem(r, n_owb)?;
                let (n_i, oh_i) = cg.divrem(r, self.oh)?;
                let last = self.ow - (n_owb - 1) * owb;
                split_last(cg, owb_i, n_owb, owb, last, |count| {
                    self.emit_direct(cg, uks, env, [n_i, oh_i, owb_i, og], count)
                })
            }
            Mode::Rows { rows, n_rb, .. } => {
                let (n_i, rb) = cg.divrem(r, n_rb)?;
                let last = self.oh - (n_rb - 1) * rows;
                split_last(cg, rb, n_rb, rows, last, |count| {
                    self.emit_rows(cg, uks, env, [n_i, rb, og], count)
                })
            }
        }
    }

    fn emit_gemm<'ctx>(
        &self,
        cg: &Cg<'ctx>,
        uks: &Microkernels<'ctx>,
        env: &Env<'ctx>,
        mb: IntValue<'ctx>,
        og: IntValue<'ctx>,
        count: usize,
    ) -> Result<()> {
        let Mode::Gemm { mc, pack, .. } = self.mode else {
            return Err(wrong_mode(self.mode));
        };
        let (iv, ov) = (&self.input, &self.output);
        let (in_base, out_base) = (in_base(cg, env, iv)?, out_base(cg, env, ov)?);
        let p0 = cg.mulc(mb, mc)?;
        let with_input;
        let env = match self.next_input(cg, in_base, p0)? {
            Some(lines) => {
                with_input = Env {
                    next_input: Some(lines),
                    ..*env
                };
                &with_input
            }
            None => env,
        };
        let table = self.pixel_table(cg, count, |i| pixel_ptr(cg, out_base, ov, cg.add(p0, i)?))?;
        self.for_chunks(cg, env, |c0, kc, acc, relu| {
            let (a, a_step) = if pack {
                let panel = scratch(env)?;
                cg.for_n(count, |i| {
                    let src = vgep(cg, iv, pixel_ptr(cg, in_base, iv, cg.add(p0, i)?)?, c0)?;
                    let dst = cg.gep2(panel, i, self.kcp_words())?;
                    self.copy_channels_kc(cg, env, src, dst, c0, kc)
                })?;
                (panel, self.kcp_words())
            } else {
                // Only for a flat f32 input (see `ConvPlan::new`; bf16 views are read only by
                // the bf16 kernels, which always pack).
                if iv.bf16 {
                    return Err(BackendError::Codegen(
                        "an unpacked GEMM reads a bf16 view".into(),
                    ));
                }
                (
                    cg.gep(pixel_ptr(cg, in_base, iv, p0)?, c0)?,
                    iv.pixel_stride,
                )
            };
            self.for_blocks(cg, env, og, |w, bias, col, nv, valid| {
                let spec = UkSpec {
                    mr: self.mr,
                    nv,
                    valid,
                    a_step,
                    taps: [1, 1],
                    a_row: 0,
                    a_col: 0,
                    b_tap: 0,
                    dot: self.dot(),
                    tiles: self.tiles,
                    store_pairs: self.out_pairs,
                    prefetch_next: env.next.is_some(),
                    prefetch_input: env.next_input.is_some(),
                };
                let b = cg.gep(w, cg.mulc(self.words(cg, c0)?, nv * cg.lanes)?)?;
                self.for_tiles(
                    cg,
                    uks,
                    env,
                    spec,
                    count,
                    [a, b, table, bias],
                    col,
                    kc,
                    acc,
                    relu,
                )
            })
        })
    }

    /// The input rows of the pixel block after the task's (`p0 + mc`), which its micro-kernel
    /// calls prefetch where the plan says so ([`ConvPlan::prefetch_input`]): the whole pixels,
    /// from its first pixel to its last, channels past K included. Batch-tiled runs too: the
    /// block after the task's is in the same call's image group, but for the last task, whose
    /// walk points past the group's pixels (a hint, never a fault).
    fn next_input<'ctx>(
        &self,
        cg: &Cg<'ctx>,
        in_base: PointerValue<'ctx>,
        p0: IntValue<'ctx>,
    ) -> Result<Option<PrefetchLines<'ctx>>> {
        let Mode::Gemm { mc, .. } = self.mode else {
            return Err(wrong_mode(self.mode));
        };
        if !self.prefetch_input {
            return Ok(None);
        }
        let iv = &self.input;
        let base = pixel_ptr(cg, in_base, iv, cg.addc(p0, mc)?)?;
        let cursor = cg.entry_alloca(cg.i64.into(), "input_line")?;
        let end = cg.entry_alloca(cg.i64.into(), "input_end")?;
        cg.b.build_store(cursor, cg.c64(0))?;
        let bytes = mc * iv.pixel_stride * ELEM_BYTES;
        cg.b.build_store(end, cg.c64(bytes.div_ceil(LINE_BYTES)))?;
        Ok(Some(PrefetchLines { base, cursor, end }))
    }

    fn emit_direct<'ctx>(
        &self,
        cg: &Cg<'ctx>,
        uks: &Microkernels<'ctx>,
        env: &Env<'ctx>,
        [n_i, oh_i, owb_i, og]: [IntValue<'ctx>; 4],
        count: usize,
    ) -> Result<()> {
        let Mode::Direct {
            owb,
            span: span_max,
            ..
        } = self.mode
        else {
            return Err(wrong_mode(self.mode));
        };
        let panel = scratch(env)?;
        let [kh, kw] = self.k;
        let [sh, sw] = self.s;
        let ow0 = cg.mulc(owb_i, owb)?;
        let (iv, ov) = (&self.input, &self.output);
        let img = vgep2(cg, iv, in_base(cg, env, iv)?, n_i, iv.image_stride())?;
        let out0 = pixel_at(cg, out_base(cg, env, ov)?, ov, [n_i, oh_i, ow0])?;
        let ih0 = cg.sub(cg.mulc(oh_i, sh)?, cg.c64(self.p[0]))?;
        let iw0 = cg.sub(cg.mulc(ow0, sw)?, cg.c64(self.p[1]))?;
        let span = (count - 1) * sw + kw;
        let table = self.pixel_table(cg, count, |i| vgep2(cg, ov, out0, i, ov.pixel_stride))?;
        self.for_chunks(cg, env, |c0, kc, acc, relu| {
            let Kc::Const(kc) = kc else {
                return Err(wrong_mode(self.mode));
            };
            cg.for_n(kh, |y| {
                let ih = cg.add(ih0, y)?;
                let dst_row = cg.gep2(panel, y, span_max * self.kcp_words())?;
                self.fill_panel_row(cg, env, [img, dst_row], [ih, iw0], span, c0, kc)?;
                if self.fold {
                    // A folded row's last pixels read a tile step on (times zero weights):
                    // zeros, not stale panel words that might be NaN. The next row (or the
                    // slack) starts there and is written after.
                    cg.store_v(
                        cg.vf.const_zero(),
                        cg.gepc(dst_row, span * self.kcp_words())?,
                        cg.lanes,
                    )?;
                }
                Ok(())
            })?;
            self.for_blocks(cg, env, og, |w, bias, col, nv, valid| {
                let nr = nv * cg.lanes;
                let kcp = self.kcp_words();
                let (b_taps, b_words) = self.b_taps();
                let spec = UkSpec {
                    mr: self.mr,
                    nv,
                    valid,
                    a_step: sw * kcp,
                    // Folded (`fold`, `row_k`): one tap per kernel row, its `kw` taps in K.
                    taps: if self.fold || self.row_k {
                        [kh, 1]
                    } else {
                        self.k
                    },
                    a_row: span_max * kcp,
                    a_col: kcp,
                    b_tap: if self.row_k {
                        kw * b_words * nr
                    } else {
                        b_words * nr
                    },
                    dot: self.dot(),
                    tiles: self.tiles,
                    store_pairs: self.out_pairs,
                    prefetch_next: env.next.is_some(),
                    prefetch_input: env.next_input.is_some(),
                };
                debug_assert_eq!(
                    b_taps,
                    spec.taps[0] * spec.taps[1] * if self.row_k { kw } else { 1 }
                );
                // Folded: one tile step of 32 channels covers the kernel row; `row_k`: its
                // `kw` taps of `kc` channels.
                let kc = if self.fold {
                    crate::backend::cpu::amx::K_STEP_CHANNELS
                } else if self.row_k {
                    kw * kc
                } else {
                    kc
                };
                let b = cg.gep(w, cg.mulc(self.words(cg, c0)?, nr)?)?;
                self.for_tiles(
                    cg,
                    uks,
                    env,
                    spec,
                    count,
                    [panel, b, table, bias],
                    col,
                    Kc::Const(kc),
                    acc,
                    relu,
                )
            })
        })
    }

    /// Pack input row `ih` of image `img`, pixels `iw0 .. iw0 + span`, channels `c0 ..
    /// c0 + kc`, into the panel row at `dst_row`: the prologue applied to real pixels, zeros
    /// for the padding.
    #[allow(clippy::too_many_arguments)]
    fn fill_panel_row<'ctx>(
        &self,
        cg: &Cg<'ctx>,
        env: &Env<'ctx>,
        [img, dst_row]: [PointerValue<'ctx>; 2],
        [ih, iw0]: [IntValue<'ctx>; 2],
        span: usize,
        c0: IntValue<'ctx>,
        kc: usize,
    ) -> Result<()> {
        let iv = &self.input;
        let row_ok = cg.in_range(ih, 0, self.h)?;
        cg.for_n(span, |x| {
            let iw = cg.add(iw0, x)?;
            let ok = cg.b.build_and(row_ok, cg.in_range(iw, 0, self.w)?, "")?;
            let dst = cg.gep2(dst_row, x, self.kcp_words())?;
            cg.if_else(
                ok,
                || {
                    let row = vgep2(cg, iv, img, ih, iv.row_stride())?;
                    let pixel = vgep2(cg, iv, row, iw, iv.pixel_stride)?;
                    if self.in_pairs {
                        // bf16 pairs already (a handoff): whole tile steps of words.
                        let src = cg.gep(pixel, self.words(cg, c0)?)?;
                        for w0 in (0..kc / self.k_step).step_by(cg.lanes) {
                            cg.store_v(
                                cg.load_v(cg.gepc(src, w0)?, cg.lanes)?,
                                cg.gepc(dst, w0)?,
                                cg.lanes,
                            )?;
                        }
                        return Ok(());
                    }
                    let src = vgep(cg, iv, pixel, c0)?;
                    self.copy_channels(cg, env, src, dst, c0, kc)
                },
                || {
                    // The words `copy_channels` would write: whole vectors of channels (half
                    // as many words for bf16 pairs), or whole tile steps.
                    let words = round_up(kc, self.k_quantum(cg)) / self.k_step;
                    for w0 in (0..words).step_by(cg.lanes) {
                        cg.store_v(
                            cg.vf.const_zero(),
                            cg.gepc(dst, w0)?,
                            (words - w0).min(cg.lanes),
                        )?;
                    }
                    Ok(())
                },
            )
        })
    }

    /// A [`Mode::Rows`] task: output rows `rb·rows ..` (`count` of them) of image `n_i`.
    fn emit_rows<'ctx>(
        &self,
        cg: &Cg<'ctx>,
        uks: &Microkernels<'ctx>,
        env: &Env<'ctx>,
        [n_i, rb, og]: [IntValue<'ctx>; 3],
        count: usize,
    ) -> Result<()> {
        let Mode::Rows { rows, span, .. } = self.mode else {
            return Err(wrong_mode(self.mode));
        };
        let panel = scratch(env)?;
        let kcp = self.kcp_words();
        let (iv, ov) = (&self.input, &self.output);
        let img = vgep2(cg, iv, in_base(cg, env, iv)?, n_i, iv.image_stride())?;
        let oh0 = cg.mulc(rb, rows)?;
        let ih0 = cg.sub(oh0, cg.c64(self.p[0]))?;
        let iw0 = cg.sub(cg.c64(0), cg.c64(self.p[1]))?;
        let out = out_base(cg, env, ov)?;
        let junk = cg.gepc(panel, self.rows_junk_offset(rows, span))?;
        // Positions `r·span + x`; those with `x >= OW` (between rows) go to the junk vector.
        let positions = (count - 1) * span + self.ow;
        let table = self.pixel_table(cg, positions, |p| {
            let (r, x) = (
                cg.b.build_int_unsigned_div(p, cg.c64(span), "")?,
                cg.b.build_int_unsigned_rem(p, cg.c64(span), "")?,
            );
            let real =
                cg.b.build_int_compare(IntPredicate::ULT, x, cg.c64(self.ow), "")?;
            let xc = cg.umin(x, cg.c64(self.ow - 1))?;
            let at = pixel_at(cg, out, ov, [n_i, cg.add(oh0, r)?, xc])?;
            Ok(cg.b.build_select(real, at, junk, "")?.into_pointer_value())
        })?;
        // Reading the input in place: its stored pixels, border included, are the positions
        // ([`ConvPlan::rows_in_place`]); the first is stored pixel (ih0, iw0) of the image.
        let in_place = if self.rows_in_place {
            let off = cg.add(
                cg.b.build_int_mul(ih0, cg.c64(iv.row_stride()), "")?,
                cg.b.build_int_mul(iw0, cg.c64(iv.pixel_stride), "")?,
            )?;
            Some(vgep(cg, iv, img, off)?)
        } else {
            None
        };
        self.for_chunks(cg, env, |c0, kc, acc, relu| {
            let Kc::Const(kc) = kc else {
                return Err(wrong_mode(self.mode));
            };
            if in_place.is_none() {
                cg.for_n(count + self.k[0] - 1, |y| {
                    let dst_row = cg.gep2(panel, y, span * kcp)?;
                    self.fill_panel_row(
                        cg,
                        env,
                        [img, dst_row],
                        [cg.add(ih0, y)?, iw0],
                        span,
                        c0,
                        kc,
                    )
                })?;
            }
            let a = in_place.unwrap_or(panel);
            self.for_blocks(cg, env, og, |w, bias, col, nv, valid| {
                let nr = nv * cg.lanes;
                let spec = UkSpec {
                    mr: self.mr,
                    nv,
                    valid,
                    a_step: kcp,
                    taps: self.k,
                    a_row: span * kcp,
                    a_col: kcp,
                    b_tap: self.ic_words() * nr,
                    dot: self.dot(),
                    tiles: self.tiles,
                    store_pairs: self.out_pairs,
                    prefetch_next: env.next.is_some(),
                    prefetch_input: env.next_input.is_some(),
                };
                let b = cg.gep(w, cg.mulc(self.words(cg, c0)?, nr)?)?;
                self.for_tiles(
                    cg,
                    uks,
                    env,
                    spec,
                    positions,
                    [a, b, table, bias],
                    col,
                    Kc::Const(kc),
                    acc,
                    relu,
                )
            })
        })
    }

    /// Copy `kc` channels from `src` to the panel at `dst`, applying the
    /// prologue (channel `c0 + c` of the input). Writes whole vectors: the
    /// panel's row stride is `kc` rounded up to a vector.
    fn copy_channels<'ctx>(
        &self,
        cg: &Cg<'ctx>,
        env: &Env<'ctx>,
        src: PointerValue<'ctx>,
        dst: PointerValue<'ctx>,
        c0: IntValue<'ctx>,
        kc: usize,
    ) -> Result<()> {
        cg.for_channel_vectors(kc, |c, lanes| {
            self.copy_vector(cg, env, [src, dst], c0, c, lanes)
        })?;
        if self.tiles && !self.fold && !kc.div_ceil(cg.lanes).is_multiple_of(2) {
            self.zero_half_step(cg, dst, cg.c64(kc.div_ceil(cg.lanes) * cg.lanes))?;
        }
        Ok(())
    }

    /// With `tiles`, after an odd number of channel vectors: zero the next vector's channels
    /// (from `c`), which complete the last 32-channel tile step (`amx.rs`).
    fn zero_half_step<'ctx>(
        &self,
        cg: &Cg<'ctx>,
        dst: PointerValue<'ctx>,
        c: IntValue<'ctx>,
    ) -> Result<()> {
        // `lanes` bf16 channels are half a vector of words.
        cg.store_v(
            cg.vf.const_zero(),
            cg.gep(dst, self.words(cg, c)?)?,
            cg.lanes / 2,
        )
    }

    /// Channels the panel writes of a pixel a whole number of: vectors, 32-channel tile steps,
    /// or (`row_k`, pixels of `kc` floats) single channels.
    fn k_quantum(&self, cg: &Cg<'_>) -> usize {
        if self.tiles && !self.fold {
            crate::backend::cpu::amx::K_STEP_CHANNELS
        } else if self.row_k {
            1
        } else {
            cg.lanes
        }
    }

    /// One vector of [`Self::copy_channels`]: `lanes` channels at `c` of `src`, the prologue
    /// applied, stored as a whole vector at `c` of `dst`.
    fn copy_vector<'ctx>(
        &self,
        cg: &Cg<'ctx>,
        env: &Env<'ctx>,
        [src, dst]: [PointerValue<'ctx>; 2],
        c0: IntValue<'ctx>,
        c: IntValue<'ctx>,
        lanes: usize,
    ) -> Result<()> {
        let x = vload(cg, &self.input, vgep(cg, &self.input, src, c)?, lanes)?;
        let y = match &self.prologue {
            Some(a) => a.apply(cg, env, x, cg.add(c0, c)?)?,
            None => x,
        };
        if self.dot() {
            // `lanes` bf16 channels: half a vector of words at word `c / 2`.
            return cg.store_bf16(y, cg.gep(dst, self.words(cg, c)?)?);
        }
        // Whole vectors (zeros past `kc`: the panel row's stride), but the `kc` channels
        // alone where a pixel is `kc` floats (`row_k`).
        cg.store_v(
            y,
            cg.gep(dst, c)?,
            if self.row_k { lanes } else { cg.lanes },
        )
    }

    /// The words of A or B that `channels` (even where it is a chunk or vector start)
    /// input channels take: `channels`, or half as many bf16 pairs.
    fn words<'ctx>(&self, cg: &Cg<'ctx>, channels: IntValue<'ctx>) -> Result<IntValue<'ctx>> {
        if self.dot() {
            Ok(cg.b.build_right_shift(channels, cg.c64(1), false, "")?)
        } else {
            Ok(channels)
        }
    }

    /// [`Self::copy_channels`] of a constant or run-time `kc` (all whole
    /// vectors but the last chunk's last, of `KArgs::tail` lanes).
    #[allow(clippy::too_many_arguments)]
    fn copy_channels_kc<'ctx>(
        &self,
        cg: &Cg<'ctx>,
        env: &Env<'ctx>,
        src: PointerValue<'ctx>,
        dst: PointerValue<'ctx>,
        c0: IntValue<'ctx>,
        kc: Kc<'ctx>,
    ) -> Result<()> {
        let (kc, k) = match (kc, &env.k) {
            (Kc::Const(kc), _) => return self.copy_channels(cg, env, src, dst, c0, kc),
            (Kc::Runtime(kc), Some(k)) => (kc, k),
            (Kc::Runtime(_), None) => {
                return Err(BackendError::Codegen(
                    "run-time K without its bindings".into(),
                ))
            }
        };
        let copy =
            |c: IntValue<'ctx>, lanes: usize| self.copy_vector(cg, env, [src, dst], c0, c, lanes);
        let full = cg.b.build_and(kc, cg.c64(!(cg.lanes - 1)), "")?;
        cg.for_range(cg.c64(0), full, cg.lanes, |c| copy(c, cg.lanes))?;
        if k.tail > 0 {
            let partial = cg.b.build_int_compare(IntPredicate::NE, full, kc, "")?;
            cg.if_then(partial, || copy(full, k.tail))?;
        }
        if self.tiles {
            // Channels written: `kc` rounded up to a vector; an odd number of vectors leaves
            // half a tile step to zero.
            let written =
                cg.b.build_and(cg.addc(kc, cg.lanes - 1)?, cg.c64(!(cg.lanes - 1)), "")?;
            let odd = cg.b.build_and(written, cg.c64(cg.lanes), "")?;
            let odd =
                cg.b.build_int_compare(IntPredicate::NE, odd, cg.c64(0), "")?;
            cg.if_then(odd, || self.zero_half_step(cg, dst, written))?;
        }
        Ok(())
    }

    /// Run `body(c0, kc, accumulate, relu)` for each input-channel chunk.
    fn for_chunks<'ctx>(
        &self,
        cg: &Cg<'ctx>,
        env: &Env<'ctx>,
        mut body: impl FnMut(IntValue<'ctx>, Kc<'ctx>, IntValue<'ctx>, IntValue<'ctx>) -> Result<()>,
    ) -> Result<()> {
        if let Some(k) = &env.k {
            // Chunks of the panel's row stride (`kc` rounded up to whole
            // vectors: `kc` itself for a K that takes several), the last
            // one shorter.
            return cg.for_range(cg.c64(0), k.ic, self.kcp, |c0| {
                let kc = cg.umin(cg.c64(self.kcp), cg.sub(k.ic, c0)?)?;
                let acc = cg.b.build_not(cg.eqc(c0, 0)?, "")?;
                let relu = if self.relu {
                    let end = cg.add(c0, kc)?;
                    cg.b.build_int_compare(IntPredicate::EQ, end, k.ic, "")?
                } else {
                    cg.i1.const_zero()
                };
                body(c0, Kc::Runtime(kc), acc, relu)
            });
        }
        let (full, rem) = (self.ic / self.kc, self.ic % self.kc);
        let bool_c = |b: bool| cg.i1.const_int(u64::from(b), false);
        if full == 1 {
            body(
                cg.c64(0),
                Kc::Const(self.kc),
                bool_c(false),
                bool_c(self.relu && rem == 0),
            )?;
        } else if full > 1 {
            let last = (full - 1) * self.kc;
            cg.for_range(cg.c64(0), cg.c64(full * self.kc), self.kc, |c0| {
                let acc = cg.b.build_not(cg.eqc(c0, 0)?, "")?;
                let relu = if self.relu && rem == 0 {
                    cg.eqc(c0, last)?
                } else {
                    bool_c(false)
                };
                body(c0, Kc::Const(self.kc), acc, relu)
            })?;
        }
        if rem > 0 {
            body(
                cg.c64(full * self.kc),
                Kc::Const(rem),
                bool_c(full > 0),
                bool_c(self.relu),
            )?;
        }
        Ok(())
    }

    /// Run `body(weights, bias, first channel, nv, valid)` for each output
    /// channel block of group `og`.
    fn for_blocks<'ctx>(
        &self,
        cg: &Cg<'ctx>,
        env: &Env<'ctx>,
        og: IntValue<'ctx>,
        mut body: impl FnMut(
            PointerValue<'ctx>,
            PointerValue<'ctx>,
            IntValue<'ctx>,
            usize,
            usize,
        ) -> Result<()>,
    ) -> Result<()> {
        let bk = &self.blocking;
        let nr = bk.nr();
        // Elements of one block's packed weights.
        let block_elems = match &env.k {
            Some(k) => {
                let ic = if self.tiles {
                    // Pairs padded to whole tile steps (`ConvPlan::ic_words`).
                    let pairs = self.words(cg, cg.addc(k.ic, 1)?)?;
                    let step = crate::backend::cpu::amx::TILE;
                    cg.b.build_and(cg.addc(pairs, step - 1)?, cg.c64(!(step - 1)), "")?
                } else if self.dot() {
                    self.words(cg, cg.addc(k.ic, 1)?)?
                } else {
                    k.ic
                };
                cg.mulc(ic, self.k[0] * self.k[1] * nr)?
            }
            None => {
                let (taps, words) = self.b_taps();
                cg.c64(taps * words * nr)
            }
        };
        let w = cg.gepc(env.weights, self.weight_off)?;
        let bias = match &env.k {
            Some(k) => cg.gep(env.weights, k.bias)?,
            None => cg.gepc(env.weights, self.bias_off)?,
        };
        if bk.full > 0 {
            let mut one = |j: IntValue<'ctx>| {
                body(
                    cg.gep(w, cg.b.build_int_nsw_mul(j, block_elems, "")?)?,
                    cg.gep2(bias, j, nr)?,
                    cg.mulc(j, nr)?,
                    bk.nv,
                    nr,
                )
            };
            if self.groups == 1 {
                cg.for_n(bk.full, &mut one)?;
            } else {
                let start = cg.mulc(og, self.bpg)?;
                let end = cg.umin(cg.addc(start, self.bpg)?, cg.c64(bk.full))?;
                cg.for_range(start, end, 1, &mut one)?;
            }
        }
        if bk.has_tail() {
            let body = std::cell::RefCell::new(&mut body);
            let tail = || {
                let full = cg.b.build_int_nsw_mul(cg.c64(bk.full), block_elems, "")?;
                (body.borrow_mut())(
                    cg.gep(w, full)?,
                    cg.gepc(bias, bk.full * nr)?,
                    cg.c64(bk.full * nr),
                    bk.tail_nv,
                    bk.tail_valid,
                )
            };
            if self.groups == 1 {
                tail()?;
            } else {
                cg.if_then(cg.eqc(og, self.groups - 1)?, tail)?;
            }
        }
        Ok(())
    }

    /// A stack table of pointers to the `count` output pixels of the task,
    /// `ptr(i)` each, filled by a loop: the micro-kernel reads its tile's
    /// pixel addresses from it.
    fn pixel_table<'ctx>(
        &self,
        cg: &Cg<'ctx>,
        count: usize,
        ptr: impl Fn(IntValue<'ctx>) -> Result<PointerValue<'ctx>>,
    ) -> Result<PointerValue<'ctx>> {
        let len = u32::try_from(self.max_block_pixels())
            .map_err(|_| BackendError::Codegen("pixel table too large".into()))?;
        let table = cg.entry_alloca(cg.ptr.array_type(len).into(), "pixels")?;
        cg.for_range(cg.c64(0), cg.c64(count), 1, |i| {
            cg.b.build_store(cg.ptr_elem(table, i)?, ptr(i)?)?;
            Ok(())
        })?;
        Ok(table)
    }

    /// Call the micro-kernel over `count` tile pixels: full `mr` tiles, then
    /// one shorter tile for the remainder. `table` holds the output pixel
    /// pointers, `col` the block's first channel.
    #[allow(clippy::too_many_arguments)]
    fn for_tiles<'ctx>(
        &self,
        cg: &Cg<'ctx>,
        uks: &Microkernels<'ctx>,
        env: &Env<'ctx>,
        spec: UkSpec,
        count: usize,
        [a, b, table, bias]: [PointerValue<'ctx>; 4],
        col: IntValue<'ctx>,
        kc: Kc<'ctx>,
        acc: IntValue<'ctx>,
        relu: IntValue<'ctx>,
    ) -> Result<()> {
        let kc = kc.value(cg);
        // Reduction steps of a call: channels, or bf16 pairs, in every tap.
        let steps = if spec.dot {
            cg.b.build_right_shift(cg.addc(kc, 1)?, cg.c64(1), false, "")?
        } else {
            kc
        };
        let steps = cg.mulc(steps, spec.taps[0] * spec.taps[1])?;
        let call = |mr: usize, tile: IntValue<'ctx>| -> Result<()> {
            let f = uks.get(cg, UkSpec { mr, ..spec })?;
            let a = cg.gep2(a, tile, spec.mr * spec.a_step)?;
            let cs = cg.ptr_elem(table, cg.mulc(tile, spec.mr)?)?;
            let next = match &env.next {
                Some(n) => n.call(cg, steps)?,
                None => b,
            };
            let next_input = match &env.next_input {
                Some(n) => n.call(cg, steps)?,
                None => b,
            };
            let args = [
                a.into(),
                b.into(),
                cs.into(),
                col.into(),
                bias.into(),
                kc.into(),
                acc.into(),
                relu.into(),
                next.into(),
                next_input.into(),
            ];
            cg.b.build_call(f, &args, "")?;
            Ok(())
        };
        let (full, rem) = (count / spec.mr, count % spec.mr);
        cg.for_n(full, |tile| call(spec.mr, tile))?;
        if rem > 0 {
            call(rem, cg.c64(full))?;
        }
        Ok(())
    }
}
