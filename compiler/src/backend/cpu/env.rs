//! The vocabulary every task body is written in: the values of its call
//! ([`Env`]: the kernel's constants, its shifted input and output buffers,
//! scratch, the image group, a run-time K), a GEMM conv's run-time-K
//! bindings ([`KBind`], [`KArgs`]), packed per-channel affines
//! ([`AffineRef`]), the task-count target, and the address helpers over
//! the normalised views a plan is built from (see `plan.rs`).
//!
//! The op emitters (`conv/`, `pooling.rs`, `border.rs`) and the plan
//! dispatch (`plan.rs`) all build on this module; it uses none of them.

use super::codegen::{Cg, Result, VectorIsa};
use super::pack::{pad_to_vectors, WeightsBuilder};
use crate::backend::kernel::{Affine, View};
use inkwell::values::{IntValue, PointerValue, VectorValue};

/// Tasks a kernel is split into when its shape allows: enough for a few
/// threads to balance, few enough that per-task overheads stay small.
pub(crate) const TARGET_TASKS: usize = 16;

/// The values every task body can use.
#[derive(Clone, Copy)]
pub(crate) struct Env<'ctx> {
    /// The kernel's first packed constant (`const float*`): the weights
    /// section plus [`Bindings::weights`](super::plan::Bindings::weights).
    pub weights: PointerValue<'ctx>,
    /// The arena shifted by [`Bindings::input`](super::plan::Bindings::input) and [`Bindings::output`](super::plan::Bindings::output):
    /// where the normalised input and output views' buffers start.
    pub input: PointerValue<'ctx>,
    pub output: PointerValue<'ctx>,
    /// Per-call scratch (a stack array of `scratch_floats()`), if any.
    pub scratch: Option<PointerValue<'ctx>>,
    /// First image of the group a batch-tiled kernel runs on (`None`: the
    /// kernel was planned for the whole batch). See `schedule.rs`.
    pub image0: Option<IntValue<'ctx>>,
    /// A GEMM conv's run-time K ([`KBind`]), if its shape has one.
    pub k: Option<KArgs<'ctx>>,
    /// The weights of the kernel that runs next, brought into the L2 by this kernel's
    /// micro-kernel calls so that their transfer from L3 or DRAM overlaps the multiplies
    /// instead of stalling the next kernel's first tasks (`None`: the body's micro-kernels
    /// prefetch nothing of the kind).
    ///
    /// At batch 1 most weights are read once per inference and each thread reads all of a
    /// kernel's weights (its tasks split pixels, not output channels), so a thread must bring
    /// all of them into its own L2: task `t` of this kernel takes slice `t mod slices` of the
    /// lines, with `slices` half the task count. The runtime gives each of two threads half
    /// of the tasks as a contiguous range (`runtime::pool`), so each covers every slice once;
    /// with one thread the second pass hits the L2, with more each covers a part (a hint
    /// either way). The base is the next kernel's first weights line; where there is none,
    /// this kernel's own first weights (an empty slice: every call re-reads those lines,
    /// already cached).
    pub next: Option<PrefetchLines<'ctx>>,
    /// The input rows of the pixel block after a GEMM task's, which the same thread packs
    /// next (its tasks are a contiguous range), brought into the L2 by the task's micro-kernel
    /// calls (`ConvPlan::prefetch_input`; `None`: nothing of the kind).
    pub next_input: Option<PrefetchLines<'ctx>>,
}

/// Cache lines a task's micro-kernel calls bring into the L2 while they multiply: one line per
/// reduction step (`microkernel.rs`), spread over the multiplies so that the transfer overlaps
/// them. Within a task the calls walk the lines `[cursor, end)` from `base`, each taking as
/// many lines as it has reduction steps; a call past the end re-reads the last lines, which
/// are already there. [`Env::next`] and [`Env::next_input`] are the two such walks.
#[derive(Clone, Copy)]
pub(crate) struct PrefetchLines<'ctx> {
    /// Line 0 of the walk.
    pub base: PointerValue<'ctx>,
    /// Stack slots of the task's next line and the end of its lines.
    pub cursor: PointerValue<'ctx>,
    pub end: PointerValue<'ctx>,
}

impl<'ctx> PrefetchLines<'ctx> {
    /// Where a micro-kernel call of `steps` reduction steps prefetches from (a line each), and
    /// advance the task's cursor past them.
    pub fn call(&self, cg: &Cg<'ctx>, steps: IntValue<'ctx>) -> Result<PointerValue<'ctx>> {
        let line = cg.b.build_load(cg.i64, self.cursor, "")?.into_int_value();
        let end = cg.b.build_load(cg.i64, self.end, "")?.into_int_value();
        // The call's lines stay inside the slice: start no later than `end - steps`.
        let room =
            cg.b.build_int_compare(inkwell::IntPredicate::UGE, end, steps, "")?;
        let last =
            cg.b.build_select(room, cg.sub(end, steps)?, cg.c64(0), "")?
                .into_int_value();
        let from = cg.umin(line, last)?;
        cg.b.build_store(self.cursor, cg.add(line, steps)?)?;
        let i8 = cg.ctx.i8_type();
        // SAFETY: only IR is built; a plain GEP, since a prefetch address need not be in bounds.
        Ok(unsafe {
            cg.b.build_gep(i8, self.base, &[cg.mulc(from, LINE_BYTES)?], "")?
        })
    }
}

/// Whether the f32 micro-kernels prefetch the next kernel's weights ([`PrefetchLines`]): with
/// 32 vector registers (AVX-512). In AVX2's 6x16 tile (12 FMAs a step) the prefetch and its
/// address cost more than the transfer they hide: DenseNet-121 b1 `x86-64-v3` on a Xeon,
/// 19.1 ms without, 20.6 ms with the instruction alone, 20.1 ms prefetching 512 KiB. Nor with
/// bf16 dot products, where the vdpbf16ps tiles have no register to spare: DenseNet-121 b1
/// `znver4 --precision bf16`, 20.2 -> 23.5 ms on the same Xeon.
pub(crate) fn prefetches_next(isa: VectorIsa) -> bool {
    isa.registers >= 32 && !isa.bf16
}

/// Cache line bytes of every x86 core we target.
pub(crate) const LINE_BYTES: usize = 64;

/// The bindings of a GEMM conv whose input channel count is run-time
/// (`ConvPlan::runtime_k`): K and the offsets, in the kernel's constants,
/// of those packed after the weights (bias, prologue scale and shift).
/// Zero for other kernels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct KBind {
    pub ic: usize,
    pub bias: usize,
    pub scale: usize,
    pub shift: usize,
}

/// [`KBind`] as the body's arguments, and the lanes of K's last vector
/// (part of the shape; 0 for whole vectors).
#[derive(Debug, Clone, Copy)]
pub(crate) struct KArgs<'ctx> {
    pub ic: IntValue<'ctx>,
    pub bias: IntValue<'ctx>,
    pub scale: IntValue<'ctx>,
    pub shift: IntValue<'ctx>,
    pub tail: usize,
}

/// A packed per-channel affine: element offsets of its vectors in the
/// kernel's constants (each zero-padded to whole SIMD vectors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AffineRef {
    pub scale: usize,
    pub shift: usize,
    pub relu: bool,
}

impl AffineRef {
    pub fn pack(a: &Affine, isa: VectorIsa, wb: &mut WeightsBuilder) -> AffineRef {
        AffineRef {
            scale: wb.push(&pad_to_vectors(&a.scale, isa.lanes)),
            shift: wb.push(&pad_to_vectors(&a.shift, isa.lanes)),
            relu: a.relu,
        }
    }

    /// `x * scale[c..c+L] + shift[c..c+L]` (`L` lanes), then ReLU if asked. `c`
    /// is a multiple of `L` below the padded length. In a body with a run-time K
    /// ([`Env::k`], a GEMM conv's), the offsets are that binding's.
    pub fn apply<'ctx>(
        &self,
        cg: &Cg<'ctx>,
        env: &Env<'ctx>,
        x: VectorValue<'ctx>,
        c: IntValue<'ctx>,
    ) -> Result<VectorValue<'ctx>> {
        let (scale, shift) = match &env.k {
            Some(k) => (cg.gep(env.weights, k.scale)?, cg.gep(env.weights, k.shift)?),
            None => (
                cg.gepc(env.weights, self.scale)?,
                cg.gepc(env.weights, self.shift)?,
            ),
        };
        let s = cg.load_v(cg.gep(scale, c)?, cg.lanes)?;
        let t = cg.load_v(cg.gep(shift, c)?, cg.lanes)?;
        let y = cg.fma(x, s, t)?;
        if self.relu {
            cg.relu(y)
        } else {
            Ok(y)
        }
    }
}

/// Pointer to channel 0 of the (normalised) input view's pixel `(0, 0, 0)`
/// of the task's image group (see [`Env::image0`]).
pub(crate) fn in_base<'ctx>(
    cg: &Cg<'ctx>,
    env: &Env<'ctx>,
    v: &View,
) -> Result<PointerValue<'ctx>> {
    vgepc(cg, v, group_base(cg, env, env.input, v)?, v.first_element())
}

/// [`in_base`] of the output view.
pub(crate) fn out_base<'ctx>(
    cg: &Cg<'ctx>,
    env: &Env<'ctx>,
    v: &View,
) -> Result<PointerValue<'ctx>> {
    vgepc(
        cg,
        v,
        group_base(cg, env, env.output, v)?,
        v.first_element(),
    )
}

/// `buffer` (the arena shifted to a view's buffer) shifted to the first
/// image of the task's group in the view `v` (itself outside batch tiling).
pub(crate) fn group_base<'ctx>(
    cg: &Cg<'ctx>,
    env: &Env<'ctx>,
    buffer: PointerValue<'ctx>,
    v: &View,
) -> Result<PointerValue<'ctx>> {
    match env.image0 {
        Some(n0) => vgep2(cg, v, buffer, n0, v.image_stride()),
        None => Ok(buffer),
    }
}

/// Pointer to pixel `p` of the view (row-major over n, h, w), from
/// `base = in_base(v)` or `out_base(v)`.
pub(crate) fn pixel_ptr<'ctx>(
    cg: &Cg<'ctx>,
    base: PointerValue<'ctx>,
    v: &View,
    p: IntValue<'ctx>,
) -> Result<PointerValue<'ctx>> {
    if v.is_flat() {
        return vgep2(cg, v, base, p, v.pixel_stride);
    }
    let (n, r) = cg.divrem(p, v.h * v.w)?;
    let (h, w) = cg.divrem(r, v.w)?;
    pixel_at(cg, base, v, [n, h, w])
}

/// Pointer to pixel `(n, h, w)` of the view, from `base = in_base(v)` or `out_base(v)`.
pub(crate) fn pixel_at<'ctx>(
    cg: &Cg<'ctx>,
    base: PointerValue<'ctx>,
    v: &View,
    [n, h, w]: [IntValue<'ctx>; 3],
) -> Result<PointerValue<'ctx>> {
    let off = cg.add(
        cg.add(cg.mulc(n, v.image_stride())?, cg.mulc(h, v.row_stride())?)?,
        cg.mulc(w, v.pixel_stride)?,
    )?;
    vgep(cg, v, base, off)
}

/// `p + i` elements of view `v`'s storage: f32, or bf16 for a [`View::bf16`] view. Every
/// address inside a view goes through these (and [`vload`], [`vstore`] for its values).
pub(crate) fn vgep<'ctx>(
    cg: &Cg<'ctx>,
    v: &View,
    p: PointerValue<'ctx>,
    i: IntValue<'ctx>,
) -> Result<PointerValue<'ctx>> {
    if v.bf16 {
        cg.gep_bf16(p, i)
    } else {
        cg.gep(p, i)
    }
}

/// [`vgep`] by a constant.
pub(crate) fn vgepc<'ctx>(
    cg: &Cg<'ctx>,
    v: &View,
    p: PointerValue<'ctx>,
    i: usize,
) -> Result<PointerValue<'ctx>> {
    if i == 0 {
        return Ok(p);
    }
    vgep(cg, v, p, cg.c64(i))
}

/// [`vgep`] by `i · stride`.
pub(crate) fn vgep2<'ctx>(
    cg: &Cg<'ctx>,
    v: &View,
    p: PointerValue<'ctx>,
    i: IntValue<'ctx>,
    stride: usize,
) -> Result<PointerValue<'ctx>> {
    vgep(cg, v, p, cg.mulc(i, stride)?)
}

/// Load `lanes` channels of view `v` at `p` as a float vector.
pub(crate) fn vload<'ctx>(
    cg: &Cg<'ctx>,
    v: &View,
    p: PointerValue<'ctx>,
    lanes: usize,
) -> Result<VectorValue<'ctx>> {
    if v.bf16 {
        cg.load_bf16(p, lanes)
    } else {
        cg.load_v(p, lanes)
    }
}

/// Store `lanes` channels of `x` into view `v` at `p` (rounded to bf16, to nearest even, for a
/// bf16 view: whole vectors only).
pub(crate) fn vstore<'ctx>(
    cg: &Cg<'ctx>,
    v: &View,
    x: VectorValue<'ctx>,
    p: PointerValue<'ctx>,
    lanes: usize,
) -> Result<()> {
    if !v.bf16 {
        return cg.store_v(x, p, lanes);
    }
    if lanes != cg.lanes {
        return Err(crate::backend::BackendError::Codegen(format!(
            "a store of {lanes} bf16 lanes (bf16 views hold whole vectors of {})",
            cg.lanes
        )));
    }
    cg.store_bf16(x, p)
}

/// Emit `body(count)` with the constant `count` of items in block `blk`:
/// `last` for the final block of `blocks`, `full` for the others.
pub(crate) fn split_last<'ctx>(
    cg: &Cg<'ctx>,
    blk: IntValue<'ctx>,
    blocks: usize,
    full: usize,
    last: usize,
    mut body: impl FnMut(usize) -> Result<()>,
) -> Result<()> {
    if last == full || blocks == 1 {
        return body(if blocks == 1 { last } else { full });
    }
    let is_last = cg.eqc(blk, blocks - 1)?;
    let body = std::cell::RefCell::new(&mut body);
    cg.if_else(
        is_last,
        || (body.borrow_mut())(last),
        || (body.borrow_mut())(full),
    )
}
