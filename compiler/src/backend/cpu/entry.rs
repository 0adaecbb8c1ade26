//! The generated module's entry points: one task function per kernel, the
//! `dnc_run` schedule that hands each to the runtime's parallel-for, and a
//! few metadata functions. See [`super`] for the ABI contract.
//!
//! A kernel's task function is a small wrapper: it turns the context into
//! the kernel's [`Bindings`] (its constants' and views' places) and calls
//! the task *body* of its [`Shape`], which kernels of equal shape share
//! ([`Bodies`]). Bodies are `noinline`: inlined into every wrapper, each
//! kernel would again carry its own copy, which is what sharing saves
//! (LLVM's work follows the code emitted; DenseNet-121 has 58 Winograd
//! kernels of a handful of shapes). The call costs once per task range.

use super::codegen::VectorIsa;
use super::codegen::{Cg, Result};
use super::env::{prefetches_next, Env, KArgs, PrefetchLines, LINE_BYTES};
use super::microkernel::Microkernels;
use super::plan::{Bindings, Plan, Shape};
use super::schedule::Segment;
use crate::backend::BackendError;
use inkwell::module::Linkage;
use inkwell::types::{FunctionType, StructType};
use inkwell::values::{FunctionValue, PointerValue};
use inkwell::GlobalVisibility;
use std::collections::HashMap;

// The ABI is the runtime's (`runtime::abi`): one definition for both sides.
use runtime::abi::context_field;
pub use runtime::abi::{symbols, DNC_ABI_VERSION as ABI_VERSION};

/// The field of the extended context (`Abi::ext_ty`) that holds the group's first image.
const IMAGE0_FIELD: u32 = context_field::COUNT;

struct Abi<'ctx> {
    ctx_ty: StructType<'ctx>,
    /// The context the generated code hands to `parallel_for`: a copy of
    /// the runtime's followed by the first image of the current group.
    ext_ty: StructType<'ctx>,
    task_ty: FunctionType<'ctx>,
    pfor_ty: FunctionType<'ctx>,
    /// `void body(const float* weights, float* input, float* output,
    /// i64 image0, i64 begin, i64 end, i64 k, i64 bias, i64 scale,
    /// i64 shift, const float* next, i64 next_lines, i64 slices)`: the weights and arena
    /// shifted by the kernel's [`Bindings`], its run-time K (`env::KBind`, 0 where none), then
    /// the next kernel's weights to prefetch ([`Env::next`], [`Prefetch`]).
    body_ty: FunctionType<'ctx>,
}

/// How kernel `i` runs: `groups` image groups of `chunk` images (one group
/// outside batch tiling), one `parallel_for` per group.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Groups {
    pub groups: usize,
    pub chunk: usize,
}

/// Which kernels one LLVM module defines. The kernels are split over
/// several modules that LLVM optimises and compiles on parallel threads;
/// the *main* module also holds the exported entry points, which call the
/// other modules' task functions (external, hidden from the shared
/// object's dynamic symbols). A module emits the body of each of its
/// kernels (once per module, internal).
#[derive(Debug, Clone)]
pub(crate) struct ModulePart {
    /// Indices into the plans, ascending.
    pub kernels: Vec<usize>,
    /// Holds `dnc_run` and the other exported functions.
    pub main: bool,
    /// Other modules exist (task functions are then shared across modules).
    pub split: bool,
}

/// The task symbol of kernel `i`.
pub(crate) fn task_symbol(i: usize, name: &str) -> String {
    format!("dnc_k{i}_{}", sanitize(name))
}

/// How each kernel of a segmented schedule runs (see [`Groups`]).
pub(crate) fn groups_of(n_plans: usize, segments: &[Segment], batch: usize) -> Vec<Groups> {
    let mut groups = vec![
        Groups {
            groups: 1,
            chunk: batch
        };
        n_plans
    ];
    for s in segments {
        for g in &mut groups[s.start..s.end] {
            *g = Groups {
                groups: s.groups(batch),
                chunk: s.chunk,
            };
        }
    }
    groups
}

/// The task bodies: one per distinct (shape, batch-tiled) pair, numbered in
/// kernel order of first use.
#[derive(Debug, Clone)]
pub(crate) struct Bodies {
    /// Body of each kernel.
    pub of: Vec<usize>,
    /// Symbol of each body.
    pub symbols: Vec<String>,
}

impl Bodies {
    pub fn new(plans: &[(String, Plan)], groups: &[Groups]) -> Bodies {
        let mut keys: Vec<(&Shape, bool)> = Vec::new();
        let mut symbols = Vec::new();
        let of = plans
            .iter()
            .zip(groups)
            .map(|((_, plan), g)| {
                let key = (&plan.shape, g.groups > 1);
                match keys.iter().position(|k| *k == key) {
                    Some(b) => b,
                    None => {
                        keys.push(key);
                        symbols.push(format!("dnc_b{}_{}", keys.len() - 1, plan.kind()));
                        keys.len() - 1
                    }
                }
            })
            .collect();
        Bodies { of, symbols }
    }
}

/// Emit the task functions (and their bodies) of `part`'s kernels and, in
/// the main module, the exported entry points. `segments` cover `plans` in
/// order (see `schedule.rs`).
pub(crate) fn emit_module<'ctx>(
    cg: &Cg<'ctx>,
    plans: &[(String, Plan)],
    segments: &[Segment],
    batch: usize,
    bodies: &Bodies,
    part: &ModulePart,
) -> Result<()> {
    let p = cg.ptr.into();
    let void = cg.ctx.void_type();
    let pm: inkwell::types::BasicMetadataTypeEnum = cg.ptr.into();
    let i64m: inkwell::types::BasicMetadataTypeEnum = cg.i64.into();
    let ctx_fields = vec![p; context_field::COUNT as usize];
    let mut ext_fields = ctx_fields.clone();
    ext_fields.push(cg.i64.into());
    let abi = Abi {
        ctx_ty: cg.ctx.struct_type(&ctx_fields, false),
        ext_ty: cg.ctx.struct_type(&ext_fields, false),
        task_ty: void.fn_type(&[pm, i64m, i64m], false),
        pfor_ty: void.fn_type(&[pm, pm, pm, i64m], false),
        body_ty: void.fn_type(
            &[
                pm, pm, pm, i64m, i64m, i64m, i64m, i64m, i64m, i64m, pm, i64m, i64m,
            ],
            false,
        ),
    };
    let uks = Microkernels::default();
    let groups = groups_of(plans.len(), segments, batch);
    let mut tasks: Vec<Option<FunctionValue<'ctx>>> = vec![None; plans.len()];
    let mut emitted: HashMap<usize, FunctionValue<'ctx>> = HashMap::new();
    for &i in &part.kernels {
        let (name, plan) = &plans[i];
        let b = bodies.of[i];
        let body = match emitted.get(&b) {
            Some(f) => *f,
            None => {
                let tiled = groups[i].groups > 1;
                let f = emit_body(cg, &abi, &uks, &bodies.symbols[b], &plan.shape, tiled)?;
                emitted.insert(b, f);
                f
            }
        };
        let f = emit_task_fn(
            cg,
            &abi,
            &task_symbol(i, name),
            body,
            plan.bind,
            groups[i],
            part.split,
            Prefetch::of(plans, segments, batch, i, cg.isa),
        )?;
        tasks[i] = Some(f);
    }
    if !part.main {
        return Ok(());
    }
    // The other modules' task functions, declared.
    let tasks: Vec<FunctionValue<'ctx>> = tasks
        .into_iter()
        .enumerate()
        .map(|(i, f)| {
            f.unwrap_or_else(|| {
                let f = cg.module.add_function(
                    &task_symbol(i, &plans[i].0),
                    abi.task_ty,
                    Some(Linkage::External),
                );
                f.as_global_value().set_visibility(GlobalVisibility::Hidden);
                f
            })
        })
        .collect();
    emit_run(cg, &abi, plans, segments, batch, &tasks)?;
    emit_run_kernel(cg, &abi, plans, &groups, &tasks)?;
    emit_metadata(cg, plans, &groups)?;
    Ok(())
}

fn load_field<'ctx>(
    cg: &Cg<'ctx>,
    abi: &Abi<'ctx>,
    ctx: PointerValue<'ctx>,
    field: u32,
) -> Result<PointerValue<'ctx>> {
    let p = cg.b.build_struct_gep(abi.ctx_ty, ctx, field, "")?;
    Ok(cg.b.build_load(cg.ptr, p, "")?.into_pointer_value())
}

/// The shared body of `shape`: tasks `[begin, end)` of any kernel of that
/// shape, placed by its arguments.
fn emit_body<'ctx>(
    cg: &Cg<'ctx>,
    abi: &Abi<'ctx>,
    uks: &Microkernels<'ctx>,
    symbol: &str,
    shape: &Shape,
    tiled: bool,
) -> Result<FunctionValue<'ctx>> {
    let f = cg.function(symbol, abi.body_ty, Linkage::Internal);
    cg.noinline(f);
    let scratch = match shape.scratch_floats() {
        0 => None,
        n => {
            let len = u32::try_from(n)
                .map_err(|_| BackendError::Codegen(format!("scratch of {n} floats")))?;
            Some(cg.entry_alloca(cg.f32.array_type(len).into(), "panel")?)
        }
    };
    let env = Env {
        weights: cg.param_ptr(f, 0)?,
        input: cg.param_ptr(f, 1)?,
        output: cg.param_ptr(f, 2)?,
        scratch,
        image0: if tiled {
            Some(cg.param_int(f, 3)?)
        } else {
            None
        },
        k: match shape.runtime_k {
            Some(tail) => Some(KArgs {
                ic: cg.param_int(f, 6)?,
                bias: cg.param_int(f, 7)?,
                scale: cg.param_int(f, 8)?,
                shift: cg.param_int(f, 9)?,
                tail,
            }),
            None => None,
        },
        // Batch-tiled or not ([`Prefetch::of`] says which kernel's weights).
        next: if prefetches_next(cg.isa) {
            Some(PrefetchLines {
                base: cg.param_ptr(f, 10)?,
                cursor: cg.entry_alloca(cg.i64.into(), "next_line")?,
                end: cg.entry_alloca(cg.i64.into(), "next_end")?,
            })
        } else {
            None
        },
        next_input: None,
    };
    let (begin, end) = (cg.param_int(f, 4)?, cg.param_int(f, 5)?);
    let (lines, slices) = (cg.param_int(f, 11)?, cg.param_int(f, 12)?);
    if shape.uses_tiles() {
        super::amx::configure(cg)?;
    }
    cg.for_range(begin, end, 1, |t| {
        let Some(next) = &env.next else {
            return shape.emit_task(cg, uks, &env, t);
        };
        // Task `t`'s slice of the next kernel's weights ([`Env::next`]): `slices >= 1`.
        let rounded = cg.add(lines, cg.sub(slices, cg.c64(1))?)?;
        let per = cg.b.build_int_unsigned_div(rounded, slices, "")?;
        let slice = cg.b.build_int_unsigned_rem(t, slices, "")?;
        let first = cg.b.build_int_mul(slice, per, "")?;
        let first = cg.umin(first, lines)?;
        cg.b.build_store(next.cursor, first)?;
        cg.b.build_store(next.end, cg.umin(cg.add(first, per)?, lines)?)?;
        shape.emit_task(cg, uks, &env, t)
    })?;
    cg.b.build_return(None)?;
    Ok(f)
}

/// Most bytes of the next kernel's weights a kernel prefetches ([`Env::next`]): half the
/// smallest L2 of the AVX-512 CPUs (1 MiB per core on Zen 4/5 and Skylake-SP, 2 MiB on
/// Sapphire Rapids), so that they do not push out what the running kernel still reads.
/// DenseNet-121 b1 on a Xeon (2 MiB L2), kernels summed: none 12.40 ms, 256 KiB 12.09,
/// 512 KiB 11.81, 1 MiB 11.81 (DenseNet-121's growth convs read 590 KiB each).
const PREFETCH_NEXT_BYTES: usize = 512 << 10;

/// What kernel `i` prefetches of the next kernel's weights (see [`Env::next`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Prefetch {
    /// Where the lines start, in floats of the weights section (a whole line).
    pub first_float: usize,
    /// Cache lines to prefetch (0: none).
    pub lines: usize,
    /// Slices the lines are cut into, one per task `t mod slices`.
    pub slices: usize,
}

impl Prefetch {
    /// Kernel `i` prefetches the first [`PREFETCH_NEXT_BYTES`] of the weights of the kernel
    /// its threads run next ([`runs_after`]) where its micro-kernels do ([`prefetches_next`]).
    pub fn of(
        plans: &[(String, Plan)],
        segments: &[Segment],
        batch: usize,
        i: usize,
        isa: VectorIsa,
    ) -> Prefetch {
        let none = Prefetch {
            slices: 1,
            ..Prefetch::default()
        };
        let floats_per_line = LINE_BYTES / 4;
        let Some((_, next)) = runs_after(segments, batch, i, plans.len()).map(|j| &plans[j]) else {
            return none;
        };
        if !prefetches_next(isa) || next.weight_floats.is_empty() {
            return none;
        }
        let first = next.weight_floats.start / floats_per_line * floats_per_line;
        let lines = (next.weight_floats.end - first)
            .div_ceil(floats_per_line)
            .min(PREFETCH_NEXT_BYTES / LINE_BYTES);
        Prefetch {
            first_float: first,
            lines,
            slices: plans[i].1.tasks().div_ceil(2).max(1),
        }
    }
}

/// The kernel that runs after kernel `i` of `n` (`None` after the last): `i + 1`, but for the
/// last kernel of a batch-tiled segment (`schedule.rs`) the segment's first, which runs next
/// for every image group but the last. So in a batch-tiled dense block each kernel brings in
/// the weights that the next one reads for this image group, as at batch 1, and the block's
/// last kernel those of its first for the next group. DenseNet-121 b8 on a Xeon (AVX-512), 15
/// interleaved rounds, without the walk in tiled segments -> with it: 109.4 -> 104.2 ms (the
/// paired ratio's median 0.960, 14 rounds of 15 faster); DenseNet-BC-100 b64 113.0 -> 112.1 ms
/// (0.983, 11 of 15). That was a window where the shared host slowed every kernel; in a quiet
/// one (9 rounds) DenseNet-121 b8 was unchanged (76.9 ms, ratio 0.9999) and BC-100 b64 0.988.
pub(crate) fn runs_after(segments: &[Segment], batch: usize, i: usize, n: usize) -> Option<usize> {
    let tiled_end = segments
        .iter()
        .find(|s| s.groups(batch) > 1 && s.end == i + 1 && s.start <= i);
    match tiled_end {
        Some(s) => Some(s.start),
        None => (i + 1 < n).then_some(i + 1),
    }
}

/// `void k(const dnc_ctx* ctx, i64 begin, i64 end)`: tasks `[begin, end)`,
/// by a call of the kernel's body with its bindings.
#[allow(clippy::too_many_arguments)]
fn emit_task_fn<'ctx>(
    cg: &Cg<'ctx>,
    abi: &Abi<'ctx>,
    symbol: &str,
    body: FunctionValue<'ctx>,
    bind: Bindings,
    groups: Groups,
    shared: bool,
    prefetch: Prefetch,
) -> Result<FunctionValue<'ctx>> {
    // Internal unless another module's `dnc_run` calls it; never exported.
    let linkage = if shared {
        Linkage::External
    } else {
        Linkage::Internal
    };
    let f = cg.function(symbol, abi.task_ty, linkage);
    if shared {
        f.as_global_value().set_visibility(GlobalVisibility::Hidden);
    }
    let ctx = cg.param_ptr(f, 0)?;
    let (begin, end) = (cg.param_int(f, 1)?, cg.param_int(f, 2)?);
    let section = load_field(cg, abi, ctx, context_field::WEIGHTS)?;
    let weights = cg.gepc(section, bind.weights)?;
    // Without a next kernel to prefetch, the body's calls re-read this kernel's first lines.
    let next = match prefetch.lines {
        0 => weights,
        _ => cg.gepc(section, prefetch.first_float)?,
    };
    let arena = load_field(cg, abi, ctx, context_field::ARENA)?;
    let image0 = if groups.groups > 1 {
        let p = cg.b.build_struct_gep(abi.ext_ty, ctx, IMAGE0_FIELD, "")?;
        cg.b.build_load(cg.i64, p, "image0")?.into_int_value()
    } else {
        cg.c64(0)
    };
    let args = [
        weights.into(),
        cg.gepc(arena, bind.input)?.into(),
        cg.gepc(arena, bind.output)?.into(),
        image0.into(),
        begin.into(),
        end.into(),
        cg.c64(bind.k.ic).into(),
        cg.c64(bind.k.bias).into(),
        cg.c64(bind.k.scale).into(),
        cg.c64(bind.k.shift).into(),
        next.into(),
        cg.c64(prefetch.lines).into(),
        cg.c64(prefetch.slices).into(),
    ];
    cg.b.build_call(body, &args, "")?;
    cg.b.build_return(None)?;
    Ok(f)
}

/// `parallel_for` of `task` over `n` tasks, handing it `ext`.
fn call_pfor<'ctx>(
    cg: &Cg<'ctx>,
    abi: &Abi<'ctx>,
    ext: PointerValue<'ctx>,
    task: FunctionValue<'ctx>,
    n: usize,
) -> Result<()> {
    let pfor = load_field(cg, abi, ext, context_field::PARALLEL_FOR)?;
    let pool = load_field(cg, abi, ext, context_field::POOL)?;
    let args = [
        pool.into(),
        task.as_global_value().as_pointer_value().into(),
        ext.into(),
        cg.c64(n).into(),
    ];
    cg.b.build_indirect_call(abi.pfor_ty, pfor, &args, "")?;
    Ok(())
}

/// A stack copy of the runtime's context extended with the group's first
/// image (set to 0).
fn extended_ctx<'ctx>(
    cg: &Cg<'ctx>,
    abi: &Abi<'ctx>,
    ctx: PointerValue<'ctx>,
) -> Result<PointerValue<'ctx>> {
    let ext = cg.entry_alloca(abi.ext_ty.into(), "ctx")?;
    for field in 0..context_field::COUNT {
        let v = load_field(cg, abi, ctx, field)?;
        cg.b.build_store(cg.b.build_struct_gep(abi.ext_ty, ext, field, "")?, v)?;
    }
    set_image0(cg, abi, ext, cg.c64(0))?;
    Ok(ext)
}

fn set_image0<'ctx>(
    cg: &Cg<'ctx>,
    abi: &Abi<'ctx>,
    ext: PointerValue<'ctx>,
    image0: inkwell::values::IntValue<'ctx>,
) -> Result<()> {
    cg.b.build_store(
        cg.b.build_struct_gep(abi.ext_ty, ext, IMAGE0_FIELD, "")?,
        image0,
    )?;
    Ok(())
}

/// Run `body` once per image group, with `ext`'s first image set.
fn for_groups<'ctx>(
    cg: &Cg<'ctx>,
    abi: &Abi<'ctx>,
    ext: PointerValue<'ctx>,
    g: Groups,
    mut body: impl FnMut() -> Result<()>,
) -> Result<()> {
    if g.groups == 1 {
        return body();
    }
    cg.for_n(g.groups, |i| {
        set_image0(cg, abi, ext, cg.mulc(i, g.chunk)?)?;
        body()
    })
}

/// `void dnc_run(const dnc_ctx*)`: every kernel in order, the kernels of a
/// batch-tiled segment group by group.
fn emit_run<'ctx>(
    cg: &Cg<'ctx>,
    abi: &Abi<'ctx>,
    plans: &[(String, Plan)],
    segments: &[Segment],
    batch: usize,
    tasks: &[FunctionValue<'ctx>],
) -> Result<()> {
    let ty = cg.ctx.void_type().fn_type(&[cg.ptr.into()], false);
    let f = cg.function(symbols::RUN, ty, Linkage::External);
    let ctx = cg.param_ptr(f, 0)?;
    let ext = extended_ctx(cg, abi, ctx)?;
    for s in segments {
        let g = Groups {
            groups: s.groups(batch),
            chunk: s.chunk,
        };
        for_groups(cg, abi, ext, g, || {
            for i in s.start..s.end {
                call_pfor(cg, abi, ext, tasks[i], plans[i].1.tasks())?;
            }
            Ok(())
        })?;
    }
    cg.b.build_return(None)?;
    Ok(())
}

/// `i32 dnc_run_kernel(const dnc_ctx*, i64 index)`: one kernel (0) or -1.
fn emit_run_kernel<'ctx>(
    cg: &Cg<'ctx>,
    abi: &Abi<'ctx>,
    plans: &[(String, Plan)],
    groups: &[Groups],
    tasks: &[FunctionValue<'ctx>],
) -> Result<()> {
    let ty = cg.i32.fn_type(&[cg.ptr.into(), cg.i64.into()], false);
    let f = cg.function(symbols::RUN_KERNEL, ty, Linkage::External);
    let ctx = cg.param_ptr(f, 0)?;
    let index = cg.param_int(f, 1)?;
    let ext = extended_ctx(cg, abi, ctx)?;
    let bad = cg.ctx.append_basic_block(f, "bad");
    let mut cases = Vec::with_capacity(plans.len());
    let entry = cg.b.get_insert_block();
    for (i, ((_, plan), task)) in plans.iter().zip(tasks).enumerate() {
        let bb = cg.ctx.append_basic_block(f, "kernel");
        cg.b.position_at_end(bb);
        for_groups(cg, abi, ext, groups[i], || {
            call_pfor(cg, abi, ext, *task, plan.tasks())
        })?;
        cg.b.build_return(Some(&cg.i32.const_zero()))?;
        cases.push((cg.c64(i), bb));
    }
    cg.b.position_at_end(bad);
    cg.b.build_return(Some(&cg.i32.const_int(u64::MAX, true)))?;
    if let Some(entry) = entry {
        cg.b.position_at_end(entry);
    }
    cg.b.build_switch(index, bad, &cases)?;
    Ok(())
}

fn emit_metadata(cg: &Cg<'_>, plans: &[(String, Plan)], groups: &[Groups]) -> Result<()> {
    cg.function(
        symbols::ABI_VERSION,
        cg.i32.fn_type(&[], false),
        Linkage::External,
    );
    cg.b.build_return(Some(&cg.i32.const_int(u64::from(ABI_VERSION), false)))?;

    cg.function(
        symbols::KERNEL_COUNT,
        cg.i64.fn_type(&[], false),
        Linkage::External,
    );
    cg.b.build_return(Some(&cg.c64(plans.len())))?;

    let ty = cg.i64.fn_type(&[cg.i64.into()], false);
    let f = cg.function(symbols::KERNEL_TASKS, ty, Linkage::External);
    let index = cg.param_int(f, 0)?;
    let entry = cg.b.get_insert_block();
    let bad = cg.ctx.append_basic_block(f, "bad");
    cg.b.position_at_end(bad);
    cg.b.build_return(Some(&cg.i64.const_int(u64::MAX, true)))?;
    let mut cases = Vec::with_capacity(plans.len());
    for (i, (_, plan)) in plans.iter().enumerate() {
        let bb = cg.ctx.append_basic_block(f, "kernel");
        cg.b.position_at_end(bb);
        cg.b.build_return(Some(&cg.c64(plan.tasks() * groups[i].groups)))?;
        cases.push((cg.c64(i), bb));
    }
    if let Some(entry) = entry {
        cg.b.position_at_end(entry);
    }
    cg.b.build_switch(index, bad, &cases)?;
    Ok(())
}

/// A symbol-safe spelling of a kernel name (ASCII alphanumerics and `_`).
fn sanitize(name: &str) -> String {
    let s: String = name
        .chars()
        .take(48)
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if s.is_empty() {
        "kernel".into()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_kernel_of_a_batch_tiled_segment_runs_before_its_first() {
        // Kernels 0..10 at batch 8: 2..5 in groups of 2 images, 5..8 in one group of 8.
        let segments = [
            Segment {
                start: 2,
                end: 5,
                chunk: 2,
            },
            Segment {
                start: 5,
                end: 8,
                chunk: 8,
            },
        ];
        let after: Vec<_> = (0..10).map(|i| runs_after(&segments, 8, i, 10)).collect();
        let expected = [1, 2, 3, 4, 2, 6, 7, 8, 9].map(Some);
        assert_eq!(after[..9], expected);
        assert_eq!(after[9], None);
        // At batch 1 every segment is one group.
        assert_eq!(runs_after(&segments, 2, 4, 10), Some(5));
    }
}
