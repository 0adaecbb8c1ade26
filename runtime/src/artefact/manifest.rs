//! The manifest: what an artefact computes and how to run it, as JSON in its own section.
//!
//! The runtime reads `batch`, `input`, `output`, `memory.arena_bytes`, `cpu`, `cuda` and
//! `labels`; the rest (`config`, `schedule`, the other memory figures) is there for
//! `densenetc inspect` and for people. Unknown fields are ignored: additions that do not change
//! how the runtime must execute an artefact do not need a new format version.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::format::SectionKind;
use crate::error::ArtefactError;

/// The dtype of every tensor crossing the runtime today.
pub const DTYPE_F32: &str = "f32";

/// The manifest of one artefact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The compiler that wrote the artefact, e.g. `densenetc 0.1.0`.
    pub compiler_version: String,
    /// The model configuration as the compiler resolved it (opaque to the runtime).
    #[serde(default)]
    pub config: Value,
    /// The batch size the code was compiled for (the first dimension of input and output).
    pub batch: usize,
    /// The input tensor (NCHW, as in PyTorch).
    pub input: TensorSpec,
    /// The output tensor (`[N, num_classes]` logits).
    pub output: TensorSpec,
    /// The kernels in execution order.
    #[serde(default)]
    pub schedule: Vec<KernelInfo>,
    /// The memory plan's summary.
    pub memory: MemoryPlan,
    /// The CPU code, when the artefact has any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuTarget>,
    /// The CUDA code, when the artefact has any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cuda: Option<CudaTarget>,
    /// Class names, one per output class, when the compiler was given them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
}

/// A tensor crossing the runtime boundary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSpec {
    /// A name for messages (`input`, `logits`).
    pub name: String,
    /// The shape, batch first.
    pub shape: Vec<usize>,
    /// The element type; only `f32` today.
    pub dtype: String,
    /// The memory layout callers use (`NCHW` for the input, `NC` for the logits).
    pub layout: String,
}

impl TensorSpec {
    /// An f32 tensor spec.
    pub fn f32(name: &str, shape: &[usize], layout: &str) -> Self {
        TensorSpec {
            name: name.to_owned(),
            shape: shape.to_vec(),
            dtype: DTYPE_F32.to_owned(),
            layout: layout.to_owned(),
        }
    }

    /// The element count (valid after [`Manifest::validate`]; saturates otherwise).
    pub fn elements(&self) -> usize {
        self.shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .unwrap_or(usize::MAX)
    }
}

/// One scheduled kernel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KernelInfo {
    /// The graph node(s) it computes, e.g. `features.denseblock1.denselayer1.conv1`.
    pub name: String,
    /// The kind of kernel, e.g. `conv2d`, `avgpool2x2`.
    pub op: String,
    /// Multiply-accumulates, for profiles.
    #[serde(default)]
    pub macs: u64,
    /// Anything else the compiler wants to show (views, tiling); opaque to the runtime.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub detail: Value,
}

/// The memory plan's summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryPlan {
    /// The activation arena each session allocates (64-byte aligned, zeroed once).
    pub arena_bytes: u64,
    /// Bytes if every intermediate were kept (for comparison).
    #[serde(default)]
    pub naive_bytes: u64,
    /// The planner's lower bound.
    #[serde(default)]
    pub lower_bound_bytes: u64,
}

/// The CPU code's description.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuTarget {
    /// The entry symbol exported by the shared object (see [`crate::abi`]).
    pub entry: String,
    /// The generated-code ABI version it was compiled against ([`crate::abi::DNC_ABI_VERSION`]).
    pub abi_version: u32,
    /// The LLVM CPU name the code was compiled for (`x86-64-v3`, `znver3`, …).
    pub cpu: String,
    /// The LLVM target features, if any were given.
    #[serde(default)]
    pub features: String,
}

/// The CUDA code's description (the CUDA executor is not implemented yet).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CudaTarget {
    /// The architecture the PTX targets, e.g. `sm_80`.
    pub arch: String,
    /// Anything else the CUDA backend records; opaque to this runtime.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub detail: Value,
}

fn invalid(msg: String) -> ArtefactError {
    ArtefactError::ManifestInvalid(msg)
}

fn check_tensor(t: &TensorSpec, batch: usize) -> Result<(), ArtefactError> {
    let name = &t.name;
    if t.dtype != DTYPE_F32 {
        return Err(invalid(format!(
            "tensor '{name}' has dtype '{}', only f32 is supported",
            t.dtype
        )));
    }
    if t.shape.is_empty() || t.shape.contains(&0) {
        return Err(invalid(format!(
            "tensor '{name}' has shape {:?}: every dimension must be positive",
            t.shape
        )));
    }
    let bytes = t
        .shape
        .iter()
        .try_fold(4usize, |a, &d| a.checked_mul(d))
        .filter(|&b| b <= isize::MAX as usize);
    if bytes.is_none() {
        return Err(invalid(format!(
            "tensor '{name}' of shape {:?} is too large",
            t.shape
        )));
    }
    if t.shape[0] != batch {
        return Err(invalid(format!(
            "tensor '{name}' has shape {:?} but the batch is {batch}",
            t.shape
        )));
    }
    Ok(())
}

fn is_c_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && s.len() <= 256
}

impl Manifest {
    /// Parses a manifest section.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ArtefactError> {
        serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))
    }

    /// The manifest as pretty JSON (what the writer stores).
    pub fn to_json(&self) -> Result<Vec<u8>, ArtefactError> {
        serde_json::to_vec_pretty(self).map_err(|e| invalid(e.to_string()))
    }

    /// Checks the manifest against itself and against the kinds of the sections present.
    pub fn validate(&self, present: &[SectionKind]) -> Result<(), ArtefactError> {
        if self.compiler_version.is_empty() {
            return Err(invalid("compiler_version is empty".into()));
        }
        if self.batch == 0 {
            return Err(invalid("batch is 0".into()));
        }
        check_tensor(&self.input, self.batch)?;
        check_tensor(&self.output, self.batch)?;
        if usize::try_from(self.memory.arena_bytes).map_or(true, |b| b > isize::MAX as usize) {
            return Err(invalid(format!(
                "arena of {} bytes is too large",
                self.memory.arena_bytes
            )));
        }
        if self.cpu.is_none() && self.cuda.is_none() {
            return Err(invalid(
                "no target: the artefact holds neither CPU nor CUDA code".into(),
            ));
        }
        if let Some(cpu) = &self.cpu {
            if !is_c_identifier(&cpu.entry) {
                return Err(invalid(format!(
                    "cpu entry symbol {:?} is not a C identifier",
                    cpu.entry
                )));
            }
            if !present.contains(&SectionKind::CpuSharedObject) {
                return Err(ArtefactError::MissingSection(
                    SectionKind::CpuSharedObject.name(),
                ));
            }
        }
        if self.cuda.is_some()
            && !present.contains(&SectionKind::Ptx)
            && !present.contains(&SectionKind::Cubin)
        {
            return Err(ArtefactError::MissingSection(SectionKind::Ptx.name()));
        }
        if let Some(labels) = &self.labels {
            let classes = self.output.shape.last().copied().unwrap_or(0);
            if labels.len() != classes {
                return Err(invalid(format!(
                    "{} labels for {classes} output classes",
                    labels.len()
                )));
            }
            if let Some(i) = labels.iter().position(|l| l.contains('\0')) {
                return Err(invalid(format!("label {i} contains a NUL character")));
            }
        }
        Ok(())
    }
}
