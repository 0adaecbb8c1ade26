//! The CPU backend: kernel descriptions → LLVM IR (inkwell) → x86-64 object
//! → shared object, plus the packed weights section the code reads.
//!
//! ```text
//! [KernelDesc] ─plan─▶ Plan (tiling, tasks) + packed weights
//!              ─emit─▶ LLVM modules (a task body per kernel shape, a task
//!                      fn per kernel calling it, dnc_run, …)
//!              ─O3──▶ object file ─cc -shared─▶ .so
//! ```
//!
//! # Generated-code ABI (version [`ABI_VERSION`])
//!
//! ```c
//! typedef void (*dnc_task_fn)(const struct dnc_ctx *ctx, int64_t begin, int64_t end);
//! typedef void (*dnc_parallel_for_fn)(void *pool, dnc_task_fn task,
//!                                     const struct dnc_ctx *ctx, int64_t n_tasks);
//! struct dnc_ctx {
//!     const float *weights;              /* packed_weights, 64-byte aligned recommended */
//!     float *arena;                      /* activation arena, >= arena_bytes          */
//!     dnc_parallel_for_fn parallel_for;  /* supplied by the runtime                   */
//!     void *pool;                        /* opaque, passed back to parallel_for       */
//! };
//! void    dnc_run(const struct dnc_ctx *ctx);                    /* all kernels, in order */
//! int32_t dnc_run_kernel(const struct dnc_ctx *ctx, int64_t i);  /* one kernel; -1: bad i */
//! int32_t dnc_abi_version(void);
//! int64_t dnc_kernel_count(void);
//! int64_t dnc_kernel_tasks(int64_t i);                           /* -1: bad i */
//! ```
//!
//! **Parallel-for contract.** For each kernel, the generated code calls
//! `parallel_for(pool, task, ctx, n)` once (once per image group in a
//! batch-tiled run of kernels, see `schedule.rs`; `ctx` is then the
//! generated code's own extended copy of the context, which the runtime
//! passes to `task` untouched, as always). The runtime must call `task`
//! on ranges `[begin, end)` that together cover `[0, n)` exactly once, in
//! any order, from any threads, possibly concurrently, and return only when
//! all calls have returned (the next kernel reads what this one wrote).
//! Sequential execution is `task(ctx, 0, n)`. Tasks write disjoint outputs
//! and need no synchronisation of their own. A task call uses at most
//! [`MAX_TASK_STACK`] bytes of stack beyond its frame basics, so worker
//! threads need a modest stack (the 2 MiB Rust default is ample).
//!
//! The code calls nothing but `parallel_for` (linked with `-z defs`; it may
//! reference libc's `memset`/`memcpy` if LLVM forms them) and has no global
//! state: one loaded object serves any number of contexts concurrently.
//! Weights and arena may be at any 4-byte alignment; 64 bytes is faster.
//! Shapes, the batch size and arena offsets are compile-time constants (the
//! offsets in each kernel's task function, the shapes in the body it calls,
//! see `entry.rs`): one shared object per (graph, batch), its arena at least
//! [`CompiledCpu::arena_bytes`] (with inputs placed by
//! [`crate::backend::graph::kernels_of`], its `arena_bytes`).

mod amx;
mod border;
mod codegen;
mod conv;
mod entry;
mod env;
mod head;
pub mod isa;
mod link;
mod microkernel;
mod pack;
mod plan;
mod pooling;
pub mod schedule;
mod storage;
mod target;

use crate::backend::precision::Precision;
pub use entry::{symbols, ABI_VERSION};
pub use isa::{VectorIsa, CPU_BF16_REL_BOUND};
pub use pack::WEIGHT_ALIGN;
pub use target::TargetInfo;

use crate::backend::kernel::{KernelDesc, View};
use crate::backend::BackendError;
use codegen::Cg;
use inkwell::context::Context;
use inkwell::passes::PassBuilderOptions;
use inkwell::targets::FileType;
use pack::WeightsBuilder;
use plan::Plan;
use std::path::PathBuf;

/// Upper bound of the stack scratch one task call uses.
pub const MAX_TASK_STACK: usize = 384 * 1024;

/// How to compile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuOptions {
    /// `native` (the host CPU and its features) or an LLVM x86 CPU name
    /// (`x86-64-v3`, `znver3`, `skylake`, …).
    pub cpu: String,
    /// LLVM optimisation level 0..=3.
    pub opt_level: u8,
    /// Also render the optimised module as assembly.
    pub emit_asm: bool,
    /// The C compiler driver used to link; `None` tries `$DNC_CC`, `$CC`,
    /// `cc`, `gcc`, `clang`.
    pub linker: Option<PathBuf>,
    /// Activation bytes one image group of a batch-tiled segment may touch
    /// (`schedule.rs`); 0 runs every kernel over the whole batch.
    pub batch_tile_bytes: usize,
    /// Views that must hold their values when `dnc_run` returns (the graph
    /// outputs); batch tiling never lets another value clobber them.
    pub live_out: Vec<View>,
    /// Threads LLVM compiles on (0 = one per core): the kernels are split
    /// into that many modules (fewer for small graphs), linked together.
    pub codegen_threads: usize,
    /// The kernels' vector width in bits: `None` for the widest the CPU has (512 with AVX-512,
    /// else 256), `Some(256)` for the AVX2 kernels on an AVX-512 CPU.
    pub vector_bits: Option<usize>,
    /// The convolutions' arithmetic: fp32, or bf16 dot products on CPUs with AVX512_BF16
    /// (`isa.rs`).
    pub precision: Precision,
    /// Keep the LLVM IR before and after optimisation as text
    /// ([`CompiledCpu::llvm_ir_before`], for `--dump-dir`); printing a
    /// whole network's IR takes a noticeable share of compile time.
    pub keep_ir: bool,
    /// On the AMX tiles, a 1x1 conv whose output only the next 3x3 conv reads stores it as
    /// bf16 pairs, which that conv copies into its panel as they are (`conv/mod.rs`,
    /// [`ConvPlan::handoffs`]): the same rounding, half the bytes. `false` keeps f32.
    pub tile_handoff: bool,
    /// On the AMX tiles, store the activations whose every reader and writer can as bf16
    /// instead of f32 (`storage.rs`): the dense blocks' concatenations and the bottlenecks'
    /// outputs, half the bytes moved. `false` keeps f32.
    pub bf16_storage: bool,
}

impl Default for CpuOptions {
    fn default() -> Self {
        CpuOptions {
            cpu: "native".into(),
            opt_level: 3,
            emit_asm: false,
            linker: None,
            batch_tile_bytes: schedule::DEFAULT_TILE_BYTES,
            live_out: Vec::new(),
            codegen_threads: 0,
            vector_bits: None,
            precision: Precision::Fp32,
            keep_ir: false,
            tile_handoff: true,
            bf16_storage: true,
        }
    }
}

/// What was decided for one kernel.
#[derive(Debug, Clone)]
pub struct CompiledKernel {
    pub name: String,
    /// The task function's symbol (local to the shared object).
    pub symbol: String,
    /// The task body the task function calls, shared by every kernel of
    /// the same shape (`plan::Shape`).
    pub body: String,
    /// Tasks handed to `parallel_for`.
    pub tasks: usize,
    pub macs: u64,
    /// The tiling plan, for dumps.
    pub plan: String,
}

/// The result of compiling a kernel list.
#[derive(Debug, Clone)]
pub struct CompiledCpu {
    /// The ELF shared object exporting the ABI above.
    pub shared_object: Vec<u8>,
    /// The weights section the code reads (`dnc_ctx.weights`).
    pub packed_weights: Vec<u8>,
    /// Arena bytes the kernels touch (the largest view end).
    pub arena_bytes: usize,
    pub kernels: Vec<CompiledKernel>,
    pub target: TargetInfo,
    /// The modules as generated, and after the O3 pipeline (one after the
    /// other); empty unless [`CpuOptions::keep_ir`].
    pub llvm_ir_before: String,
    pub llvm_ir_after: String,
    /// Assembly of the optimised module, when asked for.
    pub asm: Option<String>,
}

impl CompiledCpu {
    /// Write the inspectable artefacts into `dir` (for `--dump-dir`):
    /// `cpu-before-opt.ll`, `cpu-after-opt.ll`, `cpu.s` when assembly was
    /// asked for, and `cpu-kernels.txt` (target, then per kernel its task
    /// body, tasks, MACs and tiling plan).
    pub fn dump(&self, dir: &std::path::Path) -> Result<(), BackendError> {
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).map_err(|source| BackendError::Io {
                context: format!("writing {}", path.display()),
                source,
            })
        };
        write("cpu-before-opt.ll", &self.llvm_ir_before)?;
        write("cpu-after-opt.ll", &self.llvm_ir_after)?;
        if let Some(asm) = &self.asm {
            write("cpu.s", asm)?;
        }
        let mut table = format!(
            "target {} cpu {} features {}\narena_bytes {} weights_bytes {}\n",
            self.target.triple,
            self.target.cpu,
            self.target.features,
            self.arena_bytes,
            self.packed_weights.len()
        );
        for (i, k) in self.kernels.iter().enumerate() {
            table.push_str(&format!(
                "{i:4} {} body={} tasks={} macs={} {}\n",
                k.symbol, k.body, k.tasks, k.macs, k.plan
            ));
        }
        write("cpu-kernels.txt", &table)
    }
}

/// What one LLVM module compiled to.
struct ModuleOutput {
    object: Vec<u8>,
    ir_before: String,
    ir_after: String,
    asm: Option<String>,
}

/// Kernels per module below which splitting does not pay (thread start,
/// per-module overheads, one more object to link).
const MIN_KERNELS_PER_MODULE: usize = 16;

/// Split the kernels into modules compiled in parallel: up to `threads`
/// (0 = one per core) of similar estimated LLVM work. Module 0 is the main
/// one.
///
/// A body's users go to the same module, so each body is emitted once in
/// all: emitting it in every module that uses it would compile it again
/// there, and a body (a Winograd one especially) is worth tens of
/// wrappers. The unit placed is thus a body with its users, costing the
/// body (`Plan::codegen_cost`) plus a wrapper per user; the units are
/// placed largest first, each on the least loaded module (LPT), which
/// keeps the modules within about one body of each other. Modules need
/// not hold contiguous kernels: the main module declares the others' task
/// functions.
fn module_parts(
    plans: &[(String, Plan)],
    bodies: &entry::Bodies,
    threads: usize,
) -> Vec<entry::ModulePart> {
    let threads = match threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let n_bodies = bodies.symbols.len();
    let n = threads
        .min(plans.len() / MIN_KERNELS_PER_MODULE)
        .min(n_bodies)
        .clamp(1, 16);
    let mut cost = vec![0; n_bodies];
    let mut users = vec![Vec::new(); n_bodies];
    for (i, (_, plan)) in plans.iter().enumerate() {
        let b = bodies.of[i];
        if users[b].is_empty() {
            cost[b] += plan.codegen_cost();
        }
        cost[b] += plan::WRAPPER_COST;
        users[b].push(i);
    }
    let mut order: Vec<usize> = (0..n_bodies).collect();
    order.sort_by_key(|&b| (std::cmp::Reverse(cost[b]), b));
    let mut load = vec![0; n];
    let mut kernels: Vec<Vec<usize>> = vec![Vec::new(); n];
    for b in order {
        let m = (0..n).min_by_key(|&m| (load[m], m)).unwrap_or(0);
        load[m] += cost[b];
        kernels[m].extend(&users[b]);
    }
    kernels
        .into_iter()
        .enumerate()
        .map(|(m, mut ks)| {
            ks.sort_unstable();
            entry::ModulePart {
                kernels: ks,
                main: m == 0,
                split: n > 1,
            }
        })
        .collect()
}

/// Emit, verify, optimise and compile one module to an object file.
fn compile_module(
    plans: &[(String, Plan)],
    segments: &[schedule::Segment],
    batch: usize,
    bodies: &entry::Bodies,
    part: &entry::ModulePart,
    target: &TargetInfo,
    opts: &CpuOptions,
) -> Result<ModuleOutput, BackendError> {
    let machine = target::machine(target, opts.opt_level)?;
    let context = Context::create();
    let cg = Cg::new(&context, "densenetc_kernels", target)?;
    cg.module.set_triple(&machine.get_triple());
    cg.module
        .set_data_layout(&machine.get_target_data().get_data_layout());
    entry::emit_module(&cg, plans, segments, batch, bodies, part)?;
    cg.module
        .verify()
        .map_err(|e| BackendError::Codegen(format!("invalid module: {e}")))?;
    let ir_before = if opts.keep_ir {
        cg.module.print_to_string().to_string()
    } else {
        String::new()
    };
    let passes = format!("default<O{}>", opts.opt_level.min(3));
    cg.module
        .run_passes(&passes, &machine, pass_options())
        .map_err(|e| BackendError::Codegen(format!("optimisation failed: {e}")))?;
    let ir_after = if opts.keep_ir {
        cg.module.print_to_string().to_string()
    } else {
        String::new()
    };
    let object = machine
        .write_to_memory_buffer(&cg.module, FileType::Object)
        .map_err(|e| BackendError::Codegen(format!("object emission failed: {e}")))?
        .as_slice()
        .to_vec();
    let asm = if opts.emit_asm {
        let buf = machine
            .write_to_memory_buffer(&cg.module, FileType::Assembly)
            .map_err(|e| BackendError::Codegen(format!("assembly emission failed: {e}")))?;
        Some(String::from_utf8_lossy(buf.as_slice()).into_owned())
    } else {
        None
    };
    Ok(ModuleOutput {
        object,
        ir_before,
        ir_after,
        asm,
    })
}

/// The O3 pipeline without LLVM's own unrolling and vectorisation: the
/// kernels are emitted already vectorised and register-blocked, and letting
/// LLVM fully unroll every constant-trip packing loop multiplies code size
/// and compile time (DenseNet-121: 10x the IR) for no speed.
fn pass_options() -> PassBuilderOptions {
    let o = PassBuilderOptions::create();
    o.set_loop_unrolling(false);
    o.set_loop_interleaving(false);
    o.set_loop_vectorization(false);
    o.set_loop_slp_vectorization(false);
    o
}

/// Whether code for `cpu` (`native` or an LLVM CPU name) can compute in `precision`: `Ok`,
/// or the error [`compile`] would give (bf16 on a CPU without AVX512_BF16, a CUDA-only
/// precision, an unknown CPU).
pub fn check_precision(cpu: &str, precision: Precision) -> Result<(), BackendError> {
    let mut target = target::resolve(cpu)?;
    target::set_precision(&mut target, precision)
}

/// Compile `kernels` (run in order by `dnc_run`) for the CPU.
pub fn compile(kernels: &[KernelDesc], opts: &CpuOptions) -> Result<CompiledCpu, BackendError> {
    for (index, k) in kernels.iter().enumerate() {
        k.validate()
            .map_err(|message| BackendError::InvalidKernel {
                index,
                name: k.name.clone(),
                message,
            })?;
    }
    let mut target = target::resolve(&opts.cpu)?;
    match opts.vector_bits {
        None => {}
        Some(256) => target.isa = VectorIsa::AVX2,
        Some(512) if target.isa == VectorIsa::AVX512 => {}
        Some(bits) => {
            return Err(BackendError::Target(format!(
                "{bits}-bit vectors are not available on CPU `{}` (256, or 512 with AVX-512)",
                target.cpu
            )))
        }
    }
    target::set_precision(&mut target, opts.precision)?;
    // Fail early (and once) if LLVM cannot target it; each module thread makes its own.
    target::machine(&target, opts.opt_level)?;

    let handoffs = if opts.tile_handoff {
        conv::ConvPlan::handoffs(kernels, target.isa)
    } else {
        vec![[false; 2]; kernels.len()]
    };
    let stored = if opts.bf16_storage {
        storage::bf16_views(kernels, target.isa, &opts.live_out)
    } else {
        kernels.to_vec()
    };
    let batch = stored.first().map_or(1, |k| k.input.n);
    let segments = if stored.iter().all(|k| k.input.n == batch) {
        schedule::segments(&stored, &opts.live_out, opts.batch_tile_bytes)
    } else {
        schedule::segments(&stored, &opts.live_out, 0)
    };
    let mut wb = WeightsBuilder::default();
    let mut plans: Vec<(String, Plan)> = Vec::with_capacity(kernels.len());
    for s in &segments {
        for (k, io) in stored[s.start..s.end].iter().zip(&handoffs[s.start..s.end]) {
            // A tiled kernel is planned for one group of `chunk` images.
            let mut k = k.clone();
            k.input.n = s.chunk;
            k.output.n = s.chunk;
            plans.push((k.name.clone(), Plan::new(&k, target.isa, *io, &mut wb)));
        }
    }
    for (index, (name, plan)) in plans.iter().enumerate() {
        if plan.stack_bytes() > MAX_TASK_STACK {
            return Err(BackendError::InvalidKernel {
                index,
                name: name.clone(),
                message: format!("needs {} bytes of stack scratch", plan.stack_bytes()),
            });
        }
    }

    let groups = entry::groups_of(plans.len(), &segments, batch);
    let bodies = entry::Bodies::new(&plans, &groups);
    let parts = module_parts(&plans, &bodies, opts.codegen_threads);
    let outputs: Vec<Result<ModuleOutput, BackendError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = parts
            .iter()
            .map(|part| {
                let (plans, segments, bodies, target) = (&plans, &segments, &bodies, &target);
                scope.spawn(move || {
                    compile_module(plans, segments, batch, bodies, part, target, opts)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(BackendError::Codegen(
                        "a code generation thread panicked".into(),
                    ))
                })
            })
            .collect()
    });
    let outputs = outputs.into_iter().collect::<Result<Vec<_>, _>>()?;
    let join = |f: fn(&ModuleOutput) -> &str| -> String {
        outputs.iter().map(f).collect::<Vec<_>>().join("\n")
    };
    let llvm_ir_before = join(|o| &o.ir_before);
    let llvm_ir_after = join(|o| &o.ir_after);
    let asm = opts
        .emit_asm
        .then(|| join(|o| o.asm.as_deref().unwrap_or_default()));
    let objects: Vec<&[u8]> = outputs.iter().map(|o| o.object.as_slice()).collect();
    let symbols: Vec<String> = plans
        .iter()
        .enumerate()
        .map(|(i, (name, _))| entry::task_symbol(i, name))
        .collect();
    let shared_object = link::shared_object(&objects, opts.linker.as_deref())?;

    // The views' ends, and what a kernel may read past its input's (`Plan::read_slack_bytes`;
    // `plans` are in kernel order, a batch-tiled kernel's last group ends where its view does).
    let arena_bytes = kernels
        .iter()
        .zip(&stored)
        .zip(&plans)
        .flat_map(|((k, st), (_, plan))| {
            [
                k.input.end_bytes(),
                k.output.end_bytes(),
                st.input.end_bytes() + plan.read_slack_bytes(),
            ]
        })
        .max()
        .unwrap_or(0);
    let compiled = kernels
        .iter()
        .zip(&plans)
        .zip(symbols)
        .enumerate()
        .map(|(i, ((k, (_, plan)), symbol))| {
            let entry::Groups { groups, chunk } = groups[i];
            CompiledKernel {
                name: k.name.clone(),
                symbol,
                body: bodies.symbols[bodies.of[i]].clone(),
                tasks: plan.tasks() * groups,
                macs: k.macs(),
                plan: if groups > 1 {
                    format!("{groups} groups of {chunk} images, each {plan:?}")
                } else {
                    format!("{plan:?}")
                },
            }
        })
        .collect();
    Ok(CompiledCpu {
        shared_object,
        packed_weights: wb.into_bytes(),
        arena_bytes,
        kernels: compiled,
        target,
        llvm_ir_before,
        llvm_ir_after,
        asm,
    })
}
