//! From compiled kernel lists to a `.dnc` artefact (ARCHITECTURE.md, Runtime contract): the
//! manifest the runtime reads, plus the weights, shared-object, PTX and cubin sections.
//!
//! With both targets the weights section holds the CPU weights at offset 0
//! and the CUDA weights at the next [`CUDA_WEIGHTS_ALIGN`] boundary; the
//! manifest's `cuda.weights` range says where. The CUDA launch table is
//! [`CompiledCuda::kernels`] in order, each argument of the PTX ABI (weights
//! and arena base pointers) at offset 0.

use crate::backend::cuda::{ptxas::PtxasReport, CompiledCuda, KernelParam};
use crate::backend::graph::GraphKernels;
use crate::backend::kernel::View;
pub use crate::error::ArtefactBuildError;
use crate::memory::MemoryReport;
use crate::targets::CompiledTargets;
use runtime::artefact::{
    ArenaView, ArtefactWriter, ByteRange, CpuTarget, CpuVariant, CudaArg, CudaLaunch, CudaTarget,
    KernelInfo, Manifest, MemoryPlan, SectionKind, TensorSpec, CUDA_LAUNCH_VERSION,
    CUDA_WEIGHTS_ALIGN, DTYPE_F32,
};

type Result<T> = std::result::Result<T, ArtefactBuildError>;

macro_rules! bail {
    ($($arg:tt)*) => {
        return Err(ArtefactBuildError::Inconsistent(format!($($arg)*)))
    };
}

/// The compiler version recorded in every artefact.
pub fn compiler_version() -> String {
    format!("densenetc {}", env!("CARGO_PKG_VERSION"))
}

fn arena_view(v: &View) -> Result<ArenaView> {
    if v.border != [0, 0] {
        bail!("a graph input or output view has a border ({:?})", v.border);
    }
    Ok(ArenaView {
        offset: v.offset as u64,
        n: v.n,
        h: v.h,
        w: v.w,
        channels: v.channels,
        pixel_stride: v.pixel_stride,
        channel_offset: v.channel_offset,
    })
}

fn tensor(name: &str, shape: Vec<usize>, v: &View) -> Result<TensorSpec> {
    Ok(TensorSpec {
        name: name.to_owned(),
        shape,
        dtype: DTYPE_F32.to_owned(),
        view: arena_view(v)?,
    })
}

/// Everything an artefact is built from.
#[derive(Debug)]
pub struct ArtefactParts<'a> {
    /// The resolved model configuration (stored opaque in the manifest).
    pub config: serde_json::Value,
    /// The optimised, memory-planned graph.
    pub graph: &'a ir::Graph,
    /// The kernels of that graph ([`crate::backend::graph::kernels_of`]).
    pub kernels: &'a GraphKernels,
    /// The memory figures of the pipeline, if it planned memory.
    pub memory: Option<&'a MemoryReport>,
    /// The code of every target, compiled from `kernels.kernels`.
    /// The code of every target, compiled from `kernels.kernels`. The CPU variants' packed
    /// weights are moved into the artefact (left empty), so a large model's weights are not
    /// held twice.
    pub code: &'a mut CompiledTargets,
    /// Class names, one per output class.
    pub labels: Option<Vec<String>>,
}

/// Build the artefact writer (manifest, weights, and the sections of each
/// target: CPU shared object; PTX and, when ptxas assembled it, the cubin).
pub fn build_artefact(p: ArtefactParts<'_>) -> Result<ArtefactWriter> {
    let g = p.graph;
    let (&input_id, &output_id) = match (g.inputs(), g.outputs()) {
        ([i], [o]) => (i, o),
        (i, o) => bail!(
            "an artefact needs one input and one output, the graph has {} and {}",
            i.len(),
            o.len()
        ),
    };
    let (in_view, out_view) = match (p.kernels.inputs.as_slice(), p.kernels.outputs.as_slice()) {
        ([i], [o]) => (i, o),
        _ => bail!("the kernel list does not place exactly one input and one output"),
    };
    let in_shape = g.node(input_id).ty.shape.clone();
    let out_shape = g.node(output_id).ty.shape.clone();
    let Some(&batch) = in_shape.first() else {
        bail!("the input has rank 0");
    };
    if p.code.cpu.is_empty() && p.code.cuda.is_none() {
        bail!("an artefact needs at least one target");
    }
    let schedule = schedule(&p)?;
    // Variants whose packing agrees byte for byte (the same vector ISA) share one copy.
    let shared: Vec<Option<usize>> = (0..p.code.cpu.len())
        .map(|i| (0..i).find(|&j| p.code.cpu[j].packed_weights == p.code.cpu[i].packed_weights))
        .collect();
    let mut weights = Vec::new();
    let mut weight_ranges: Vec<ByteRange> = Vec::new();
    for (i, c) in p.code.cpu.iter_mut().enumerate() {
        let range = match shared[i] {
            Some(j) => weight_ranges[j],
            None if weights.is_empty() => {
                weights = std::mem::take(&mut c.packed_weights);
                ByteRange {
                    offset: 0,
                    bytes: weights.len() as u64,
                }
            }
            None => append_aligned(&mut weights, &c.packed_weights),
        };
        weight_ranges.push(range);
    }
    for c in &mut p.code.cpu {
        c.packed_weights = Vec::new();
    }
    let (cpus, cuda) = (&p.code.cpu, p.code.cuda.as_ref());
    let cpu = cpus.first();
    let ptxas = p
        .code
        .ptxas
        .as_ref()
        .map(|r| r.as_ref().map_err(Clone::clone));
    // Every CPU variant's arena: an AMX one may read past its last view (`read_slack_bytes`).
    let arena = cpus
        .iter()
        .map(|c| c.arena_bytes)
        .chain([p.kernels.arena_bytes, cuda.map_or(0, |c| c.arena_bytes)])
        .max()
        .unwrap_or(0);
    let mut code = Vec::new();
    let mut variants = Vec::new();
    for (c, &weights_range) in cpus.iter().zip(&weight_ranges) {
        variants.push(CpuVariant {
            cpu: c.target.cpu.clone(),
            features: required_features(c),
            isa: c.target.isa.to_string(),
            code: append_aligned(&mut code, &c.shared_object),
            weights: weights_range,
        });
    }
    let cuda_manifest = match cuda {
        Some(c) => {
            let offset = if weights.is_empty() {
                0
            } else {
                weights.len().div_ceil(CUDA_WEIGHTS_ALIGN as usize) * CUDA_WEIGHTS_ALIGN as usize
            };
            weights.resize(offset, 0);
            weights.extend_from_slice(&c.weights);
            Some(cuda_target(
                c,
                ByteRange {
                    offset: offset as u64,
                    bytes: c.weights.len() as u64,
                },
                ptxas.as_ref(),
            )?)
        }
        None => None,
    };
    let manifest = Manifest {
        compiler_version: compiler_version(),
        config: p.config,
        batch,
        input: tensor("input", in_shape, in_view)?,
        output: tensor(
            match crate::head::of_graph(g).map(|h| h.0) {
                Some(crate::head::HeadKind::Features) => "features",
                Some(
                    crate::head::HeadKind::Softmax
                    | crate::head::HeadKind::Sigmoid
                    | crate::head::HeadKind::OpNorm,
                ) => "probabilities",
                _ => "logits",
            },
            out_shape,
            out_view,
        )?,
        schedule,
        memory: MemoryPlan {
            arena_bytes: arena as u64,
            naive_bytes: p.memory.map_or(0, |m| m.naive_bytes as u64),
            lower_bound_bytes: p.memory.map_or(0, |m| m.lower_bound_bytes as u64),
        },
        cpu: cpu.map(|c| CpuTarget {
            abi_version: runtime::abi::DNC_ABI_VERSION,
            cpu: c.target.cpu.clone(),
            features: required_features(c),
            variants: if variants.len() > 1 {
                variants
            } else {
                Vec::new()
            },
            precision: if c.target.isa.bf16 { "bf16" } else { "fp32" }.into(),
        }),
        cuda: cuda_manifest,
        labels: p.labels,
        head: crate::head::of_graph(g).map(|(kind, classes)| runtime::artefact::HeadInfo {
            kind: kind.name().to_owned(),
            classes,
        }),
    };
    let mut w = ArtefactWriter::new(manifest);
    w.add_section(SectionKind::Weights, weights)?;
    if cpu.is_some() {
        w.add_section(SectionKind::CpuSharedObject, code)?;
    }
    if let Some(c) = cuda {
        w.add_section(SectionKind::Ptx, c.ptx.clone().into_bytes())?;
        if let Some(cubin) = &c.cubin {
            w.add_section(SectionKind::Cubin, cubin.clone())?;
        }
    }
    Ok(w)
}

/// One entry per kernel description: the CPU code's own list when there is
/// one (the runtime checks it against the shared object), else the
/// descriptions; with CUDA, each entry's `detail.cuda` holds the plans of
/// its launches.
fn schedule(p: &ArtefactParts<'_>) -> Result<Vec<KernelInfo>> {
    let descs = &p.kernels.kernels;
    let mut schedule: Vec<KernelInfo> = match p.code.cpu.first() {
        Some(cpu) => cpu
            .kernels
            .iter()
            .map(|k| {
                let op = descs
                    .iter()
                    .find(|d| d.name == k.name)
                    .map_or_else(|| "kernel".to_owned(), |d| d.op.class());
                KernelInfo {
                    name: k.name.clone(),
                    op,
                    macs: k.macs,
                    detail: serde_json::json!({ "tasks": k.tasks, "plan": k.plan }),
                }
            })
            .collect(),
        None => descs
            .iter()
            .map(|d| KernelInfo {
                name: d.name.clone(),
                op: d.op.class(),
                macs: d.macs(),
                detail: serde_json::json!({}),
            })
            .collect(),
    };
    if let Some(cuda) = &p.code.cuda {
        if schedule.len() != cuda.descs().len() {
            bail!(
                "the CPU code has {} kernels but the CUDA code {}",
                schedule.len(),
                cuda.descs().len()
            );
        }
        for l in &cuda.kernels {
            let k = &mut schedule[l.desc];
            if k.name != l.name {
                bail!("CUDA launch `{}` is not for kernel `{}`", l.symbol, k.name);
            }
            if !k.detail.is_object() {
                k.detail = serde_json::json!({});
            }
            let plans = k.detail["cuda"].as_array().cloned().unwrap_or_default();
            let mut plans = plans;
            plans.push(serde_json::json!(l.plan));
            k.detail["cuda"] = serde_json::Value::Array(plans);
        }
    }
    Ok(schedule)
}

/// Appends `bytes` to `section` at the next 64-byte boundary; returns where they lie.
fn append_aligned(section: &mut Vec<u8>, bytes: &[u8]) -> ByteRange {
    let offset = section.len().div_ceil(64) * 64;
    section.resize(offset, 0);
    section.extend_from_slice(bytes);
    ByteRange {
        offset: offset as u64,
        bytes: bytes.len() as u64,
    }
}

/// The features the runtime must find on the host before it runs `c`'s code: the host's
/// feature string for `native`; for a named CPU model (whose name the runtime does not know),
/// the extensions of the level LLVM compiled it for (`TargetInfo::level`), so that a multi-CPU
/// artefact falls back to another variant on a CPU without them; `x86-64-vN` names carry
/// their level themselves. Then what the code uses beyond that: `avx512bf16` for bf16 code,
/// `amx-tile` and `amx-bf16` for code on the AMX tiles (the only code that requires AMX
/// features: the check asks the OS for the tile state, which other code must not depend on).
fn required_features(c: &crate::backend::cpu::CompiledCpu) -> String {
    let t = &c.target;
    let mut features: Vec<String> = match t.level.and_then(runtime::level_extensions) {
        Some(level) => level.iter().map(|f| format!("+{f}")).collect(),
        None => Vec::new(),
    };
    for f in t.features.split(',').filter(|f| !f.is_empty()) {
        if (t.isa.amx || !f.starts_with("+amx")) && !features.iter().any(|g| g == f) {
            features.push(f.to_owned());
        }
    }
    let mut extra = vec![];
    if t.isa.bf16 {
        extra.push("+avx512bf16");
    }
    if t.isa.amx {
        extra.extend(["+amx-tile", "+amx-bf16"]);
    }
    for f in extra {
        if !features.iter().any(|g| g == f) {
            features.push(f.to_owned());
        }
    }
    features.join(",")
}

/// The manifest's CUDA target: the launch table of `c`, its weights at
/// `weights` in the weights section, and what ptxas said.
fn cuda_target(
    c: &CompiledCuda,
    weights: ByteRange,
    ptxas: Option<&std::result::Result<&PtxasReport, String>>,
) -> Result<CudaTarget> {
    let launches = c
        .kernels
        .iter()
        .map(|l| CudaLaunch {
            entry: l.symbol.clone(),
            kernel: l.desc,
            grid: l.grid,
            block: l.block,
            dynamic_shared_bytes: l.dynamic_shared_bytes,
            static_shared_bytes: l.static_shared_bytes,
            args: l
                .params
                .iter()
                .map(|p| match *p {
                    KernelParam::Weights { offset } => CudaArg::Weights { offset },
                    KernelParam::Arena { offset } => CudaArg::Arena { offset },
                    KernelParam::Scalar { value } => CudaArg::Scalar { value },
                })
                .collect(),
        })
        .collect();
    let cubin = match (ptxas, &c.cubin) {
        (Some(Ok(r)), Some(_)) => serde_json::json!({
            "present": true,
            "max_registers": r.kernels.iter().map(|k| k.registers).max().unwrap_or(0),
            "kernels_with_spills": r.kernels.iter().filter(|k| k.spills()).map(|k| k.name.clone()).collect::<Vec<_>>(),
        }),
        (Some(Err(why)), _) => serde_json::json!({ "present": false, "reason": why }),
        _ => serde_json::json!({ "present": c.cubin.is_some() }),
    };
    Ok(CudaTarget {
        arch: c.arch.clone(),
        launch_version: CUDA_LAUNCH_VERSION,
        weights,
        arena_bytes: c.arena_bytes as u64,
        launches,
        detail: serde_json::json!({ "cubin": cubin }),
        precision: c.precision.name().into(),
    })
}
