//! From a [`KernelDesc`] to a *plan* (tiling, task split, packed constants)
//! and from a plan to the body of one parallel task.
//!
//! Each kernel's work is split into `tasks()` independent tasks; the task
//! function generated for the kernel runs a range of them (see
//! `entry.rs`). Plans only hold numbers, so they can be printed and tested
//! without LLVM.

use super::codegen::{Cg, Result, LANES};
use super::conv::ConvPlan;
use super::microkernel::Microkernels;
use super::pack::{pad_to_vectors, WeightsBuilder};
use super::pool::{AffinePlan, GapPlan, PoolPlan};
use crate::backend::kernel::{Affine, KernelDesc, KernelOp};
use inkwell::values::{IntValue, PointerValue, VectorValue};

/// Tasks a kernel is split into when its shape allows: enough for a few
/// threads to balance, few enough that per-task overheads stay small.
pub(crate) const TARGET_TASKS: usize = 16;

/// The values every task body can use.
pub(crate) struct Env<'ctx> {
    /// Base of the weights section (`const float*`).
    pub weights: PointerValue<'ctx>,
    /// Base of the activation arena (`float*`).
    pub arena: PointerValue<'ctx>,
    /// Per-call scratch (a stack array of `scratch_floats()`), if any.
    pub scratch: Option<PointerValue<'ctx>>,
}

/// A packed per-channel affine: element offsets of its vectors in the
/// weights section (each zero-padded to whole SIMD vectors).
#[derive(Debug, Clone, Copy)]
pub(crate) struct AffineRef {
    pub scale: usize,
    pub shift: usize,
    pub relu: bool,
}

impl AffineRef {
    pub fn pack(a: &Affine, wb: &mut WeightsBuilder) -> AffineRef {
        AffineRef {
            scale: wb.push(&pad_to_vectors(&a.scale)),
            shift: wb.push(&pad_to_vectors(&a.shift)),
            relu: a.relu,
        }
    }

    /// `x * scale[c..c+8] + shift[c..c+8]`, then ReLU if asked. `c` is a
    /// multiple of 8 below the padded length.
    pub fn apply<'ctx>(
        &self,
        cg: &Cg<'ctx>,
        env: &Env<'ctx>,
        x: VectorValue<'ctx>,
        c: IntValue<'ctx>,
    ) -> Result<VectorValue<'ctx>> {
        let s = cg.load_v(cg.gep(cg.gepc(env.weights, self.scale)?, c)?, LANES)?;
        let t = cg.load_v(cg.gep(cg.gepc(env.weights, self.shift)?, c)?, LANES)?;
        let y = cg.fma(x, s, t)?;
        if self.relu {
            cg.relu(y)
        } else {
            Ok(y)
        }
    }
}

/// The lowering decision for one kernel.
#[derive(Debug)]
pub(crate) enum Plan {
    Conv(ConvPlan),
    Pool(PoolPlan),
    Gap(GapPlan),
    Affine(AffinePlan),
}

impl Plan {
    /// Plan `desc` (already validated) and pack its constants into `wb`.
    pub fn new(desc: &KernelDesc, wb: &mut WeightsBuilder) -> Plan {
        let (i, o) = (&desc.input, &desc.output);
        match &desc.op {
            KernelOp::Conv(c) => Plan::Conv(ConvPlan::new(c, i, o, wb)),
            KernelOp::Linear(l) => Plan::Conv(ConvPlan::linear(l, i, o, wb)),
            KernelOp::MaxPool(p) => Plan::Pool(PoolPlan::new(p, true, i, o, wb)),
            KernelOp::AvgPool(p) => Plan::Pool(PoolPlan::new(p, false, i, o, wb)),
            KernelOp::GlobalAvgPool { prologue } => {
                Plan::Gap(GapPlan::new(prologue.as_ref(), i, o, wb))
            }
            KernelOp::Affine(a) => Plan::Affine(AffinePlan::new(a, i, o, wb)),
        }
    }

    pub fn tasks(&self) -> usize {
        match self {
            Plan::Conv(p) => p.tasks(),
            Plan::Pool(p) => p.tasks(),
            Plan::Gap(p) => p.tasks(),
            Plan::Affine(p) => p.tasks(),
        }
    }

    /// Floats of per-call scratch the task body needs (0 for none).
    pub fn scratch_floats(&self) -> usize {
        match self {
            Plan::Conv(p) => p.scratch_floats(),
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
        match self {
            Plan::Conv(p) => p.emit_task(cg, uks, env, t),
            Plan::Pool(p) => p.emit_task(cg, env, t),
            Plan::Gap(p) => p.emit_task(cg, env, t),
            Plan::Affine(p) => p.emit_task(cg, env, t),
        }
    }
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
