//! From a compiled CPU kernel list to a `.dnc` artefact (DESIGN §5): the
//! manifest the runtime reads, plus the weights and shared-object sections.

use crate::backend::cpu::CompiledCpu;
use crate::backend::graph::GraphKernels;
use crate::backend::kernel::View;
use crate::memory::MemoryReport;
use anyhow::{bail, Context, Result};
use runtime::artefact::{
    ArenaView, ArtefactWriter, CpuTarget, KernelInfo, Manifest, MemoryPlan, SectionKind,
    TensorSpec, DTYPE_F32,
};

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
    /// The CPU code compiled from `kernels.kernels`.
    pub compiled: &'a CompiledCpu,
    /// Class names, one per output class.
    pub labels: Option<Vec<String>>,
}

/// Build the artefact writer (manifest + weights + CPU shared object).
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
    let batch = *in_shape.first().context("the input has rank 0")?;
    let schedule = p
        .compiled
        .kernels
        .iter()
        .map(|k| {
            let op = p
                .kernels
                .kernels
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
        .collect();
    let arena = p.kernels.arena_bytes.max(p.compiled.arena_bytes);
    let manifest = Manifest {
        compiler_version: compiler_version(),
        config: p.config,
        batch,
        input: tensor("input", in_shape, in_view)?,
        output: tensor("logits", out_shape, out_view)?,
        schedule,
        memory: MemoryPlan {
            arena_bytes: arena as u64,
            naive_bytes: p.memory.map_or(0, |m| m.naive_bytes as u64),
            lower_bound_bytes: p.memory.map_or(0, |m| m.lower_bound_bytes as u64),
        },
        cpu: Some(CpuTarget {
            abi_version: runtime::abi::DNC_ABI_VERSION,
            cpu: p.compiled.target.cpu.clone(),
            features: p.compiled.target.features.clone(),
        }),
        cuda: None,
        labels: p.labels,
    };
    let mut w = ArtefactWriter::new(manifest);
    w.add_section(SectionKind::Weights, p.compiled.packed_weights.clone())?;
    w.add_section(
        SectionKind::CpuSharedObject,
        p.compiled.shared_object.clone(),
    )?;
    Ok(w)
}
