//! From a [`KernelDesc`] to a *plan* (tiling, task split, packed constants)
//! and from a plan to the body of one parallel task.
//!
//! Each kernel's work is split into `tasks()` independent tasks; the task
//! function generated for the kernel runs a range of them (see
//! `entry.rs`). Plans only hold numbers, so they can be printed and tested
//! without LLVM.
//!
//! A plan is split into its [`Shape`], everything the emitted code depends
//! on, and its [`Bindings`], the three numbers that place it: where its
//! packed constants start in the weights section and where its input and
//! output views start in the arena. Kernels of equal shape share one task
//! body that takes the bindings as arguments (`entry.rs`). To make that
//! exact, the op plans are built from *normalised* views (arena offset and
//! channel offset 0, the geometry kept) and from a weights builder of
//! their own (offsets relative to the kernel's first constant), so a plan
//! cannot see, and its code cannot depend on, where the kernel sits. The
//! code assumes no alignment of a view or of the weights (every load and
//! store is 4-byte aligned, see `codegen.rs`), so no alignment fact has to
//! be part of the shape.

use super::border::BorderPlan;
use super::codegen::{Cg, Result, VectorIsa};
use super::conv::{ConvPlan, Mode, WinogradPlan};
use super::microkernel::Microkernels;
use super::pack::{pad_to_vectors, WeightsBuilder};
use super::pool::{AffinePlan, GapPlan, PoolPlan};
use crate::backend::kernel::{Affine, KernelDesc, KernelOp, View};
use crate::backend::view::ELEM_BYTES;
use inkwell::values::{IntValue, PointerValue, VectorValue};
use inkwell::IntPredicate;

/// Tasks a kernel is split into when its shape allows: enough for a few
/// threads to balance, few enough that per-task overheads stay small.
pub(crate) const TARGET_TASKS: usize = 16;

/// The values every task body can use.
pub(crate) struct Env<'ctx> {
    /// The kernel's first packed constant (`const float*`): the weights
    /// section plus [`Bindings::weights`].
    pub weights: PointerValue<'ctx>,
    /// The arena shifted by [`Bindings::input`] and [`Bindings::output`]:
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
}

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

/// LLVM work of a kernel's task function when its body is shared, in the
/// units of [`Plan::codegen_cost`]: a few loads and a call (an estimate).
pub(crate) const WRAPPER_COST: usize = 1;

/// The lowering decision for one kernel: its shape and its bindings.
#[derive(Debug)]
pub(crate) struct Plan {
    pub shape: Shape,
    pub bind: Bindings,
}

/// Everything that shapes a kernel's code: the op's plan over normalised
/// views, and the zeroing of the output's border slice when the output
/// buffer has one. Kernels with equal shapes share one task body.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Shape {
    op: OpPlan,
    border: Option<BorderPlan>,
    /// A GEMM conv whose K is a binding ([`KBind`]): the lanes of K's last
    /// vector (0: whole vectors).
    pub runtime_k: Option<usize>,
}

/// Where a kernel sits, in f32 elements: its first packed constant in the
/// weights section, and the shifts of its input and output views in the
/// arena (arena offset plus channel offset; the rest of the addressing is
/// the normalised view's, part of the [`Shape`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Bindings {
    pub weights: usize,
    pub input: usize,
    pub output: usize,
    pub k: KBind,
}

#[derive(Debug, PartialEq, Eq)]
enum OpPlan {
    Conv(ConvPlan),
    Winograd(WinogradPlan),
    Pool(PoolPlan),
    Gap(GapPlan),
    Affine(AffinePlan),
}

/// The view's geometry at arena offset 0 and channel offset 0, and the
/// elements it was shifted by.
fn normalise(v: &View) -> (View, usize) {
    let shift = v.offset / ELEM_BYTES + v.channel_offset;
    (
        View {
            offset: 0,
            channel_offset: 0,
            ..*v
        },
        shift,
    )
}

/// Pack a kernel's constants on their own, so their offsets are relative to
/// the kernel's first one, then append them to the section: returns where
/// they start. Every piece starts on a `WEIGHT_ALIGN` boundary in both.
fn append(wb: &mut WeightsBuilder, local: WeightsBuilder) -> usize {
    let floats: Vec<f32> = local
        .into_bytes()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    if floats.is_empty() {
        wb.len()
    } else {
        wb.push(&floats)
    }
}

impl Plan {
    /// Relative LLVM work to optimise and compile this kernel's task body,
    /// to balance modules compiled in parallel (measured on DenseNet-121: a
    /// Winograd kernel's unrolled transforms cost about twice a direct
    /// conv, which costs about twice a pool). A kernel whose body is shared
    /// adds only its wrapper, [`WRAPPER_COST`].
    pub fn codegen_cost(&self) -> usize {
        match &self.shape.op {
            OpPlan::Winograd(_) => 32,
            OpPlan::Conv(_) => 16,
            OpPlan::Pool(_) | OpPlan::Gap(_) | OpPlan::Affine(_) => 8,
        }
    }

    /// A name for the shape's body: what it computes.
    pub fn kind(&self) -> &'static str {
        match &self.shape.op {
            OpPlan::Winograd(_) => "winograd",
            OpPlan::Conv(p) if matches!(p.mode, Mode::Gemm { .. }) => "gemm",
            OpPlan::Conv(_) => "direct",
            OpPlan::Pool(_) => "pool",
            OpPlan::Gap(_) => "gap",
            OpPlan::Affine(_) => "affine",
        }
    }

    /// Plan `desc` (already validated) for `isa` and pack its constants into `wb`.
    pub fn new(desc: &KernelDesc, isa: VectorIsa, wb: &mut WeightsBuilder) -> Plan {
        let (i, input) = normalise(&desc.input);
        let (o, output) = normalise(&desc.output);
        let (i, o) = (&i, &o);
        let mut local = WeightsBuilder::default();
        let wl = &mut local;
        let mut op = match &desc.op {
            KernelOp::Conv(c) if WinogradPlan::applies(c, i, o, isa) => {
                OpPlan::Winograd(WinogradPlan::new(c, i, o, isa, wl))
            }
            KernelOp::Conv(c) => OpPlan::Conv(ConvPlan::new(c, i, o, isa, wl)),
            KernelOp::Linear(l) => OpPlan::Conv(ConvPlan::linear(l, i, o, isa, wl)),
            KernelOp::MaxPool(p) => OpPlan::Pool(PoolPlan::new(p, true, i, o, isa, wl)),
            KernelOp::AvgPool(p) => OpPlan::Pool(PoolPlan::new(p, false, i, o, isa, wl)),
            KernelOp::GlobalAvgPool { prologue } => {
                OpPlan::Gap(GapPlan::new(prologue.as_ref(), i, o, isa, wl))
            }
            KernelOp::Affine(a) => OpPlan::Affine(AffinePlan::new(a, i, o, isa, wl)),
        };
        let (runtime_k, k) = match &mut op {
            OpPlan::Conv(p) => p
                .runtime_k()
                .map_or((None, KBind::default()), |(tail, k)| (Some(tail), k)),
            _ => (None, KBind::default()),
        };
        Plan {
            shape: Shape {
                op,
                border: BorderPlan::new(o),
                runtime_k,
            },
            bind: Bindings {
                weights: append(wb, local),
                input,
                output,
                k,
            },
        }
    }

    /// Tasks of the op, then one per image whose output border is zeroed.
    pub fn tasks(&self) -> usize {
        self.shape.tasks()
    }

    /// Stack bytes a task call needs beyond its registers and spills.
    pub fn stack_bytes(&self) -> usize {
        self.shape.stack_bytes()
    }
}

impl Shape {
    fn op_tasks(&self) -> usize {
        match &self.op {
            OpPlan::Conv(p) => p.tasks(),
            OpPlan::Winograd(p) => p.tasks(),
            OpPlan::Pool(p) => p.tasks(),
            OpPlan::Gap(p) => p.tasks(),
            OpPlan::Affine(p) => p.tasks(),
        }
    }

    /// Tasks of the op, then one per image whose output border is zeroed.
    pub fn tasks(&self) -> usize {
        self.op_tasks() + self.border.as_ref().map_or(0, BorderPlan::tasks)
    }

    /// Stack bytes a task call needs beyond its registers and spills.
    pub fn stack_bytes(&self) -> usize {
        match &self.op {
            OpPlan::Conv(p) => p.stack_bytes(),
            OpPlan::Winograd(p) => p.stack_bytes(),
            _ => 0,
        }
    }

    /// Floats of per-call scratch the task body needs (0 for none).
    pub fn scratch_floats(&self) -> usize {
        match &self.op {
            OpPlan::Conv(p) => p.scratch_floats(),
            OpPlan::Winograd(p) => p.scratch_floats(),
            _ => 0,
        }
    }

    /// Emit the body of task `t` at the builder's position.
    pub fn emit_task<'ctx>(
        &self,
        cg: &Cg<'ctx>,
        uks: &Microkernels<'ctx>,
        env: &Env<'ctx>,
        t: IntValue<'ctx>,
    ) -> Result<()> {
        let op = |t| match &self.op {
            OpPlan::Conv(p) => p.emit_task(cg, uks, env, t),
            OpPlan::Winograd(p) => p.emit_task(cg, uks, env, t),
            OpPlan::Pool(p) => p.emit_task(cg, env, t),
            OpPlan::Gap(p) => p.emit_task(cg, env, t),
            OpPlan::Affine(p) => p.emit_task(cg, env, t),
        };
        match &self.border {
            None => op(t),
            Some(border) => {
                let n = self.op_tasks();
                let is_op =
                    cg.b.build_int_compare(IntPredicate::ULT, t, cg.c64(n), "")?;
                cg.if_else(
                    is_op,
                    || op(t),
                    || border.emit_task(cg, env, cg.sub(t, cg.c64(n))?),
                )
            }
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
    cg.gepc(group_base(cg, env, env.input, v)?, v.first_element())
}

/// [`in_base`] of the output view.
pub(crate) fn out_base<'ctx>(
    cg: &Cg<'ctx>,
    env: &Env<'ctx>,
    v: &View,
) -> Result<PointerValue<'ctx>> {
    cg.gepc(group_base(cg, env, env.output, v)?, v.first_element())
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
        Some(n0) => cg.gep2(buffer, n0, v.image_stride()),
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
        return cg.gep2(base, p, v.pixel_stride);
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
    cg.gep(base, off)
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
