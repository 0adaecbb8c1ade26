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
use super::env::{Env, KBind};
use super::head::HeadPlan;
use super::microkernel::Microkernels;
use super::pack::WeightsBuilder;
use super::pooling::{AffinePlan, GapPlan, PoolPlan};
use crate::backend::kernel::{KernelDesc, KernelOp, View};
use crate::backend::view::ELEM_BYTES;
use inkwell::values::IntValue;
use inkwell::IntPredicate;

/// LLVM work of a kernel's task function when its body is shared, in the
/// units of [`Plan::codegen_cost`]: a few loads and a call (an estimate).
pub(crate) const WRAPPER_COST: usize = 1;

/// The lowering decision for one kernel: its shape and its bindings.
#[derive(Debug)]
pub(crate) struct Plan {
    pub shape: Shape,
    pub bind: Bindings,
    /// The floats of the weights section this kernel reads (its packed constants).
    pub weight_floats: std::ops::Range<usize>,
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
    Head(HeadPlan),
}

/// The view's geometry at arena offset 0 and channel offset 0, and the
/// f32 elements it was shifted by (a bf16 view's channel offset is even).
fn normalise(v: &View) -> (View, usize) {
    let shift = (v.offset + v.channel_offset * v.elem_bytes()) / ELEM_BYTES;
    (
        View {
            offset: 0,
            channel_offset: 0,
            ..*v
        },
        shift,
    )
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
            OpPlan::Pool(_) | OpPlan::Gap(_) | OpPlan::Affine(_) | OpPlan::Head(_) => 8,
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
            OpPlan::Head(_) => "head",
        }
    }

    /// Plan `desc` (already validated) for `isa` and pack its constants into `wb`; `pairs`
    /// says whether its input and its output are bf16 pairs ([`ConvPlan::handoffs`]).
    pub fn new(
        desc: &KernelDesc,
        isa: VectorIsa,
        pairs: [bool; 2],
        wb: &mut WeightsBuilder,
    ) -> Plan {
        let (i, input) = normalise(&desc.input);
        let (o, output) = normalise(&desc.output);
        let (i, o) = (&i, &o);
        let mut local = WeightsBuilder::default();
        let wl = &mut local;
        let mut op = match &desc.op {
            KernelOp::Conv(c) if WinogradPlan::applies(c, i, o, isa) => {
                OpPlan::Winograd(WinogradPlan::new(c, i, o, isa, wl))
            }
            // A bf16 output view is stored as the bf16 pairs of a handoff (`storage.rs`).
            KernelOp::Conv(c) => {
                let pairs = [pairs[0], pairs[1] || o.bf16];
                OpPlan::Conv(ConvPlan::new(c, i, o, isa, pairs, wl))
            }
            KernelOp::Linear(l) => OpPlan::Conv(ConvPlan::linear(l, i, o, isa, wl)),
            KernelOp::MaxPool(p) => OpPlan::Pool(PoolPlan::new(p, true, i, o, isa, wl)),
            KernelOp::AvgPool(p) => OpPlan::Pool(PoolPlan::new(p, false, i, o, isa, wl)),
            KernelOp::GlobalAvgPool { prologue } => {
                OpPlan::Gap(GapPlan::new(prologue.as_ref(), i, o, isa, wl))
            }
            KernelOp::Affine(a) => OpPlan::Affine(AffinePlan::new(a, i, o, isa, wl)),
            KernelOp::Head(h) => OpPlan::Head(HeadPlan::new(h, i, o, wl)),
        };
        let (runtime_k, k) = match &mut op {
            OpPlan::Conv(p) => p
                .runtime_k()
                .map_or((None, KBind::default()), |(tail, k)| (Some(tail), k)),
            _ => (None, KBind::default()),
        };
        // The kernel's constants were packed on their own, so their offsets are relative to
        // its first one; appended, every piece stays 64-byte aligned.
        let weights = wb.append(local);
        Plan {
            weight_floats: weights..wb.len(),
            shape: Shape {
                op,
                border: BorderPlan::new(o),
                runtime_k,
            },
            bind: Bindings {
                weights,
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

    /// Bytes past the end of its input view the kernel may read (never use): the arena must
    /// have them (`ConvPlan::rows_in_place`).
    pub fn read_slack_bytes(&self) -> usize {
        match &self.shape.op {
            OpPlan::Conv(p) => p.read_slack_bytes(),
            _ => 0,
        }
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
            OpPlan::Head(p) => p.tasks(),
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

    /// Whether the tasks multiply on the AMX tiles (the body then loads the tile
    /// configuration first, `amx.rs`).
    pub fn uses_tiles(&self) -> bool {
        matches!(&self.op, OpPlan::Conv(p) if p.tiles)
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
            OpPlan::Head(p) => p.emit_task(cg, env, t),
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
