//! Zeroing an output view's slice of its buffer's zero border.
//!
//! The memory plan gives a buffer a border when all its readers are padded
//! convolutions without a prologue, and makes the buffer's writers
//! responsible for the zeros (see `ir::Buffer`). Each writer zeroes its own
//! channel slice of every border pixel, once per run, as extra tasks (one
//! per image) after the op's own.

use super::codegen::{Cg, Result};
use super::env::{group_base, vgep2, vgepc, Env};
use crate::backend::kernel::View;
use inkwell::values::{IntValue, PointerValue};

#[derive(Debug, PartialEq, Eq)]
pub(crate) struct BorderPlan {
    view: View,
}

impl BorderPlan {
    /// A plan for `v`'s border, if it has one.
    pub fn new(v: &View) -> Option<BorderPlan> {
        (!v.is_flat()).then_some(BorderPlan { view: *v })
    }

    pub fn tasks(&self) -> usize {
        self.view.n
    }

    /// Zero the border slice of image `n`.
    pub fn emit_task<'ctx>(&self, cg: &Cg<'ctx>, env: &Env<'ctx>, n: IntValue<'ctx>) -> Result<()> {
        let v = &self.view;
        let [bh, bw] = v.border;
        let (rows, cols) = (v.h + 2 * bh, v.w + 2 * bw);
        // Stored pixel (0, 0) of image n, first channel of the view.
        // (The view is normalised: offset and channel offset are 0.)
        let image = vgep2(
            cg,
            v,
            group_base(cg, env, env.output, v)?,
            n,
            v.image_stride(),
        )?;
        cg.for_n(rows, |r| {
            let row = vgep2(cg, v, image, r, v.row_stride())?;
            let inner = cg.in_range(r, bh, bh + v.h)?;
            cg.if_else(
                inner,
                || {
                    self.zero(cg, row, 0, bw)?;
                    self.zero(cg, row, bw + v.w, cols)
                },
                || self.zero(cg, row, 0, cols),
            )
        })
    }

    /// Zero the view's channels of pixels `[from, to)` of a stored row (for a bf16 view,
    /// its `channels / 2` words: an even count from an even channel, `View::validate`).
    fn zero<'ctx>(
        &self,
        cg: &Cg<'ctx>,
        row: PointerValue<'ctx>,
        from: usize,
        to: usize,
    ) -> Result<()> {
        let v = &self.view;
        let first = vgepc(cg, v, row, from * v.pixel_stride)?;
        let words = if v.bf16 {
            v.channels.div_ceil(2)
        } else {
            v.channels
        };
        cg.for_n(to.saturating_sub(from), |x| {
            let px = vgep2(cg, v, first, x, v.pixel_stride)?;
            cg.for_channel_vectors(words, |c, lanes| {
                cg.store_v(cg.vf.const_zero(), cg.gep(px, c)?, lanes.min(cg.lanes))
            })
        })
    }
}
