//! The CUDA backend: kernel descriptions → LLVM IR for the NVPTX target
//! (inkwell) → PTX text, plus the packed weights section the kernels read
//! and one [`LaunchSpec`] per kernel.
//!
//! ```text
//! [KernelDesc] ─plan─▶ KernelPlan (shape key: tiling, geometry) + bindings + packed weights
//!              ─dedup─▶ one entry per distinct KernelPlan
//!              ─emit─▶ LLVM module, one ptx_kernel per entry (Kb → nvptx)
//!              ─O3──▶ PTX (sm_80 default) ─ptxas (optional)─▶ cubin, register report
//! ```
//!
//! Every kernel is written once against the SIMT builder trait of `simt.rs`;
//! the emulator (`emulate.rs`, built with the `emulator` feature, which the
//! crate's tests enable) runs the same emission code on the CPU, so index
//! arithmetic, coverage of the output views and numerics are testable
//! without a GPU.
//!
//! Modules, bottom-up (each uses only those above it):
//!
//! ```text
//! precision  Precision, tensor-core Operand types, rounding, error bounds
//! arch       NVPTX target machine, the supported sm_XX
//! pack       the packed weights section (GEMM B matrices, biases)
//! simt       the SIMT kernel builder trait (Kb) the kernels are written in
//! addr       view geometry and NHWC addressing over Kb
//! plan       KernelDesc → KernelPlan (shape key: tiling, geometry) + bindings
//! mma        the tensor-core step of the GEMM (warp tiles, fragments)
//! gemm       the implicit-GEMM kernel (convs, linear)
//! eltwise    pools, global average pool, affine
//! head       output heads: sigmoid, softmax, op-norm (one block per image)
//! nvptx      Kb → LLVM IR for NVPTX
//! ptxas      the optional offline assembler
//! (this)     lower: plans, dedup, emit, PTX; the PTX ABI types
//! emulate    Kb on the CPU, runs a CompiledCuda (feature `emulator`)
//! ```
//!
//! # PTX ABI
//!
//! The PTX holds one `.entry` per distinct kernel *shape* ([`CudaEntry`]):
//! everything the code depends on (op, tiling, view geometries, kernel
//! window, flags) is compiled in, and launches whose shapes are equal share
//! the entry. What differs between them, where their weights and views
//! lie and a 1x1 GEMM's input channels, is bound at launch
//! ([`KernelParam`]): pointers are `.u64` global-memory device pointers, a
//! base plus the launch's byte offset, and the scalar is a `.u32`, in this
//! order:
//!
//! ```c
//! __global__ void e(const float *matrix, const float *bias, /* GEMMs: packed B, bias    */
//!                   const float *scale, const float *shift, /* when there is an affine  */
//!                   const float *head_params,               /* op-norm heads only       */
//!                   const float *input,
//!                   float *output,
//!                   unsigned k);  /* 1x1 GEMMs only: input channels, 1..=2^30-1 */
//! ```
//!
//! `weights + offset` for the first five (pieces of
//! [`CompiledCuda::weights`], uploaded once; offsets are multiples of 64
//! bytes and `weights` must be 16-byte aligned, as cuMemAlloc's 256 are),
//! `arena + offset` for the views (the view's first channel at its
//! buffer's first stored pixel, border included; 4-byte aligned). The
//! code makes no other alignment assumption. `input` and `output` may
//! alias (an in-place affine; a dense layer's prefix read and slice written
//! of one block buffer), the weights are read-only.
//!
//! The runtime launches [`CompiledCuda::kernels`] in order on one stream,
//! each with its entry, `grid`, `block`, `dynamic_shared_bytes` (always 0:
//! shared memory is static) and arguments. Each launch must complete
//! before the next reads its output, which in-order launches on one stream
//! guarantee. The arguments are fixed per launch: the same launches, with
//! the same pointers, replay as a CUDA graph.
//!
//! Zero borders: the memory plan stores some buffers (the bottleneck
//! outputs) with a zero border for the CPU's direct convolutions, which
//! read it as padding. No CUDA kernel reads a border (every tap is bounds
//! checked; the emulator faults a border read) or writes one (it faults a
//! border store too), so the CUDA code leaves borders alone and each kernel
//! description is exactly one launch.

mod addr;
mod arch;
mod eltwise;
#[cfg(feature = "emulator")]
pub mod emulate;
mod gemm;
mod head;
mod mma;
mod nvptx;
mod pack;
mod plan;
mod precision;
pub mod ptxas;
mod simt;

pub use arch::{ARCHES, TRIPLE};
pub use pack::WEIGHT_ALIGN;
pub use plan::Launch;
pub use precision::{
    Operand, Precision, BF16_REL_BOUND, FP16_REL_BOUND, FP32_REL_BOUND, TF32_REL_BOUND,
};

use crate::backend::kernel::{KernelDesc, KernelOp, ELEM_BYTES};
use crate::backend::BackendError;
use inkwell::context::Context;
use inkwell::passes::PassBuilderOptions;
use inkwell::targets::FileType;
use nvptx::Nvptx;
use pack::WeightsBuilder;
use plan::{KernelPlan, Slot};
use simt::Kb;
use std::collections::HashMap;

/// How to compile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CudaOptions {
    /// CUDA architecture: `sm_80` (default), `sm_90`, … (see [`ARCHES`]).
    pub arch: String,
    /// LLVM optimisation level 0..=3.
    pub opt_level: u8,
    /// Arithmetic of the GEMM (conv, linear) kernels.
    pub precision: Precision,
}

impl Default for CudaOptions {
    fn default() -> Self {
        CudaOptions {
            arch: "sm_80".into(),
            opt_level: 3,
            precision: Precision::Fp32,
        }
    }
}

/// A kernel argument of the PTX ABI (module docs): a device pointer,
/// `base + offset` bytes, or a scalar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum KernelParam {
    /// `const float*` into the packed weights section.
    Weights { offset: u64 },
    /// `float*` into the activation arena.
    Arena { offset: u64 },
    /// `unsigned` (`.u32`): a count in `1..=2^30-1`.
    Scalar { value: u32 },
}

/// The kind of a kernel parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ParamKind {
    Weights,
    Arena,
    Scalar,
}

impl KernelParam {
    pub fn kind(&self) -> ParamKind {
        match self {
            KernelParam::Weights { .. } => ParamKind::Weights,
            KernelParam::Arena { .. } => ParamKind::Arena,
            KernelParam::Scalar { .. } => ParamKind::Scalar,
        }
    }
}

/// One PTX `.entry`: the code of one kernel shape.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CudaEntry {
    /// The `.entry` symbol: `dnc_e<index>_<kind>`.
    pub symbol: String,
    /// Threads per block (its `maxntid`).
    pub threads: u32,
    /// Static shared memory it declares.
    pub static_shared_bytes: u32,
    /// Its parameters, in order.
    pub params: Vec<ParamKind>,
    /// Launches that run it.
    pub launches: usize,
    /// A one-line description of the shape.
    pub plan: String,
}

/// How to launch one kernel.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LaunchSpec {
    /// The kernel description's name.
    pub name: String,
    /// Index of the kernel description in the list given to [`lower`].
    pub desc: usize,
    /// The PTX `.entry` symbol (shared by launches of one shape).
    pub symbol: String,
    /// Index of the entry in [`CompiledCuda::entries`].
    pub entry: usize,
    pub grid: [u32; 3],
    pub block: [u32; 3],
    /// Dynamic shared memory to request at launch (always 0 today).
    pub dynamic_shared_bytes: u32,
    /// Static shared memory the kernel declares (informative).
    pub static_shared_bytes: u32,
    /// The arguments, in the entry's parameter order.
    pub params: Vec<KernelParam>,
    /// A one-line description of the lowering decision.
    pub plan: String,
}

/// The result of lowering a kernel list.
#[derive(Debug, Clone)]
pub struct CompiledCuda {
    /// PTX text (one module, one `.entry` per kernel shape).
    pub ptx: String,
    /// The architecture the PTX targets.
    pub arch: String,
    /// The arithmetic of its GEMM kernels.
    pub precision: Precision,
    /// Launches, in the order the runtime must issue them: one per kernel
    /// description (it writes the output view's real pixels).
    pub kernels: Vec<LaunchSpec>,
    /// The distinct kernels, in order of first launch.
    pub entries: Vec<CudaEntry>,
    /// The device weights section (little-endian f32).
    pub weights: Vec<u8>,
    /// Arena bytes the kernels touch (the largest view end).
    pub arena_bytes: usize,
    /// The LLVM module(s) as generated (before optimisation); large kernel
    /// lists are lowered as several modules, printed one after the other.
    pub llvm_ir: String,
    /// The PTX assembled by `ptxas` for `arch`, once [`Self::assemble`] ran.
    pub cubin: Option<Vec<u8>>,
    descs: Vec<KernelDesc>,
    /// The plan each entry was emitted from, by entry index (what the
    /// emulator runs).
    #[cfg(feature = "emulator")]
    plans: Vec<KernelPlan>,
}

impl CompiledCuda {
    /// The kernel descriptions this was compiled from.
    pub fn descs(&self) -> &[KernelDesc] {
        &self.descs
    }

    /// Assemble the PTX with `ptxas` (see [`ptxas::find`]), keep the cubin
    /// in [`Self::cubin`] and return the register/spill report.
    pub fn assemble(
        &mut self,
        ptxas_path: &std::path::Path,
    ) -> Result<ptxas::PtxasReport, ptxas::PtxasError> {
        let report = ptxas::assemble(ptxas_path, &self.ptx, &self.arch)?;
        self.cubin = Some(report.cubin.clone());
        Ok(report)
    }
}

fn invalid(index: usize, desc: &KernelDesc, message: String) -> BackendError {
    BackendError::InvalidKernel {
        index,
        name: desc.name.clone(),
        message,
    }
}

/// The weights of a kernel that runs as a GEMM (conv, linear).
fn gemm_weights(k: &KernelDesc) -> Option<&[f32]> {
    match &k.op {
        KernelOp::Conv(c) => Some(&c.weight),
        KernelOp::Linear(l) => Some(&l.weight),
        _ => None,
    }
}

/// Emit the body of the kernel planned by `plan`.
fn emit<K: Kb>(k: &mut K, plan: &KernelPlan) -> simt::Result<()> {
    match plan {
        KernelPlan::Gemm(p) => gemm::emit(k, p),
        KernelPlan::Pool(p) => eltwise::emit_pool(k, p),
        KernelPlan::Gap(p) => eltwise::emit_gap(k, p),
        KernelPlan::Affine(p) => eltwise::emit_affine(k, p),
        KernelPlan::Head(p) => head::emit(k, p),
    }
}

/// The PTX symbol of entry `index` of kind `kind` (`[a-z0-9]`).
fn symbol(index: usize, kind: &str) -> String {
    format!("dnc_e{index:03}_{kind}")
}

/// Entries per module below which one module (one thread) is used.
const KERNELS_PER_MODULE: usize = 64;

/// Modules to lower `kernels` entries in: one per core, at least
/// [`KERNELS_PER_MODULE`] entries each.
fn chunk_count(kernels: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (kernels / KERNELS_PER_MODULE).clamp(1, cores.max(1))
}

/// The PTX after its module header (`.version`, `.target`,
/// `.address_size`): what a further module adds to the first one.
fn strip_ptx_header(ptx: &str) -> &str {
    match ptx.find(".address_size") {
        Some(at) => ptx[at..].split_once('\n').map_or("", |(_, rest)| rest),
        None => ptx,
    }
}

/// One LLVM module holding `items`' kernels: its IR as generated and its
/// PTX after optimisation.
fn lower_module(
    items: &[(&KernelPlan, &CudaEntry)],
    opts: &CudaOptions,
) -> Result<(String, String), BackendError> {
    let machine = arch::machine(&opts.arch, opts.opt_level)?;
    let context = Context::create();
    let module = context.create_module("densenetc_cuda");
    module.set_triple(&machine.get_triple());
    module.set_data_layout(&machine.get_target_data().get_data_layout());
    for (plan, entry) in items {
        let params = plan.params();
        let mut k = Nvptx::kernel(&context, &module, &entry.symbol, entry.threads, &params)?;
        emit(&mut k, plan)?;
        k.finish()?;
    }
    module
        .verify()
        .map_err(|e| BackendError::Codegen(format!("invalid module: {e}")))?;
    let llvm_ir = module.print_to_string().to_string();

    // The kernels are emitted already unrolled where it matters; LLVM's own
    // unrolling would only grow the PTX.
    let passes = PassBuilderOptions::create();
    passes.set_loop_unrolling(false);
    passes.set_loop_vectorization(false);
    passes.set_loop_slp_vectorization(false);
    module
        .run_passes(
            &format!("default<O{}>", opts.opt_level.min(3)),
            &machine,
            passes,
        )
        .map_err(|e| BackendError::Codegen(format!("optimisation failed: {e}")))?;
    let ptx = machine
        .write_to_memory_buffer(&module, FileType::Assembly)
        .map_err(|e| BackendError::Codegen(format!("PTX emission failed: {e}")))?;
    let ptx = String::from_utf8_lossy(ptx.as_slice())
        .trim_end_matches('\0')
        .to_string();
    Ok((llvm_ir, ptx))
}

/// Lower `kernels` (launched in order) to PTX.
pub fn lower(kernels: &[KernelDesc], opts: &CudaOptions) -> Result<CompiledCuda, BackendError> {
    let mut wb = WeightsBuilder::default();
    let mut plans: Vec<KernelPlan> = Vec::new();
    let mut entries: Vec<CudaEntry> = Vec::new();
    let mut by_shape: HashMap<KernelPlan, usize> = HashMap::new();
    let mut specs = Vec::with_capacity(kernels.len());
    for (index, k) in kernels.iter().enumerate() {
        k.validate().map_err(|m| invalid(index, k, m))?;
        if let (Some(op), Some(w)) = (opts.precision.operand(), gemm_weights(k)) {
            precision::check_weights(op, w).map_err(|m| invalid(index, k, m))?;
        }
        let (mut plan, bindings) = KernelPlan::new(k, &mut wb).map_err(|m| invalid(index, k, m))?;
        if let KernelPlan::Gemm(g) = &mut plan {
            g.set_precision(opts.precision);
        }
        let launch = plan.launch().map_err(|m| invalid(index, k, m))?;
        let shared =
            u32::try_from(plan.shared_bytes()).map_err(|e| invalid(index, k, e.to_string()))?;
        let summary = plan.summary();
        let entry = match by_shape.get(&plan) {
            Some(&e) => e,
            None => {
                let e = entries.len();
                entries.push(CudaEntry {
                    symbol: symbol(e, &plan.kind()),
                    threads: launch.block[0],
                    static_shared_bytes: shared,
                    params: plan
                        .params()
                        .iter()
                        .map(|p| match p.slot {
                            Slot::Buf(b) if b.is_weights() => ParamKind::Weights,
                            Slot::Buf(_) => ParamKind::Arena,
                            Slot::Scalar(_) => ParamKind::Scalar,
                        })
                        .collect(),
                    launches: 0,
                    plan: summary.clone(),
                });
                by_shape.insert(plan.clone(), e);
                plans.push(plan);
                e
            }
        };
        entries[entry].launches += 1;
        let mut summary = summary;
        let mut params = Vec::with_capacity(bindings.len());
        for &(slot, at) in &bindings {
            let offset = at * ELEM_BYTES as u64;
            params.push(match slot {
                Slot::Buf(b) if b.is_weights() => KernelParam::Weights { offset },
                Slot::Buf(_) => KernelParam::Arena { offset },
                Slot::Scalar(s) => {
                    summary.push_str(&format!(" {s:?}={at}"));
                    KernelParam::Scalar {
                        value: u32::try_from(at).map_err(|e| invalid(index, k, e.to_string()))?,
                    }
                }
            });
        }
        specs.push(LaunchSpec {
            name: k.name.clone(),
            desc: index,
            symbol: entries[entry].symbol.clone(),
            entry,
            grid: launch.grid,
            block: launch.block,
            dynamic_shared_bytes: 0,
            static_shared_bytes: shared,
            params,
            plan: summary,
        });
    }
    if wb.len() > i64::MAX as usize / 4 {
        return Err(BackendError::Codegen("weights section too large".into()));
    }

    // Kernels are independent (no calls, per-kernel shared arrays): large
    // lists are split into modules lowered on parallel threads, each with its
    // own LLVM context, and their PTX is concatenated under one header.
    let chunks = chunk_count(plans.len());
    let per = plans.len().div_ceil(chunks).max(1);
    let items: Vec<(&KernelPlan, &CudaEntry)> = plans.iter().zip(&entries).collect();
    let parts: Vec<Result<(String, String), BackendError>> = std::thread::scope(|s| {
        // An empty list still gets a module: the header, and the check of the arch.
        let chunks: Vec<&[(&KernelPlan, &CudaEntry)]> = if items.is_empty() {
            vec![&[]]
        } else {
            items.chunks(per).collect()
        };
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| s.spawn(move || lower_module(chunk, opts)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(BackendError::Codegen("PTX lowering panicked".into())))
            })
            .collect()
    });
    let mut llvm_ir = String::new();
    let mut ptx = String::new();
    for (i, part) in parts.into_iter().enumerate() {
        let (ir, text) = part?;
        llvm_ir.push_str(&ir);
        if i == 0 {
            ptx.push_str(&text);
        } else {
            ptx.push('\n');
            ptx.push_str(strip_ptx_header(&text));
        }
    }

    let arena_bytes = kernels
        .iter()
        .flat_map(|k| [k.input.end_bytes(), k.output.end_bytes()])
        .max()
        .unwrap_or(0);
    Ok(CompiledCuda {
        ptx,
        arch: opts.arch.clone(),
        precision: opts.precision,
        kernels: specs,
        entries,
        weights: wb.into_bytes(),
        arena_bytes,
        llvm_ir,
        cubin: None,
        descs: kernels.to_vec(),
        #[cfg(feature = "emulator")]
        plans,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_further_module_adds_its_body_only() {
        let ptx = "//\n// Generated by LLVM NVPTX Back-End\n//\n\n.version 7.0\n.target sm_80\n\
                   .address_size 64\n\n\t// .globl\tk1\n.visible .entry k1()\n{\n\tret;\n}\n";
        let body = strip_ptx_header(ptx);
        assert!(
            body.starts_with("\n\t// .globl\tk1\n.visible .entry k1()"),
            "{body}"
        );
        assert!(!body.contains(".version") && !body.contains(".target"));
    }

    #[test]
    fn small_lists_stay_in_one_module() {
        assert_eq!(chunk_count(0), 1);
        assert_eq!(chunk_count(KERNELS_PER_MODULE - 1), 1);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(chunk_count(100 * KERNELS_PER_MODULE), cores);
    }
}
