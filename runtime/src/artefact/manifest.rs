//! The manifest: what an artefact computes and how to run it, as JSON in its own section.
//!
//! The runtime reads `batch`, `input`, `output`, `memory.arena_bytes`, `cpu`, `cuda` and
//! `labels`; the rest (`config`, `schedule`, the other memory figures) is there for
//! `densenetc inspect` and for people. Unknown fields are ignored: additions that do not change
//! how the runtime must execute an artefact do not need a new format version.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::cuda::ByteRange;
pub use super::cuda::CudaTarget;
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
    /// The input tensor (the caller's is NCHW, as in PyTorch).
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
    /// What the output is (`--head`); absent (older artefacts too): the classifier's logits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<HeadInfo>,
}

/// The output head an artefact was compiled with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadInfo {
    /// `logits`, `softmax`, `sigmoid`, `op-norm` (sigmoid + torchxrayvision's operating-point
    /// normalisation: 0.5 is each class's threshold) or `features` (the pooled feature vector).
    pub kind: String,
    /// Output width: classes, or feature channels for `features`.
    pub classes: usize,
}

impl HeadInfo {
    /// Whether the outputs are probabilities (`softmax`, `sigmoid`, `op-norm`).
    pub fn is_probability(&self) -> bool {
        matches!(self.kind.as_str(), "softmax" | "sigmoid" | "op-norm")
    }

    /// Whether each class is an independent probability thresholded at 0.5 (multi-label).
    pub fn is_multi_label(&self) -> bool {
        matches!(self.kind.as_str(), "sigmoid" | "op-norm")
    }
}

/// A tensor crossing the runtime boundary.
///
/// The caller's tensor is NCHW (rank 4) or NC (rank 2, logits); the generated code reads or
/// writes it at `view` in the arena, NHWC. The runtime copies between the two.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSpec {
    /// A name for messages (`input`, `logits`).
    pub name: String,
    /// The shape, batch first: `[N, C, H, W]` or `[N, C]`.
    pub shape: Vec<usize>,
    /// The element type; only `f32` today.
    pub dtype: String,
    /// Where the generated code finds the tensor in the arena.
    pub view: ArenaView,
}

impl TensorSpec {
    /// An f32 tensor of `shape` stored densely at arena byte `offset`.
    pub fn f32(name: &str, shape: &[usize], offset: u64) -> Self {
        let [n, c, h, w] = nchw(shape).unwrap_or([0; 4]);
        TensorSpec {
            name: name.to_owned(),
            shape: shape.to_vec(),
            dtype: DTYPE_F32.to_owned(),
            view: ArenaView {
                offset,
                n,
                h,
                w,
                channels: c,
                pixel_stride: c,
                channel_offset: 0,
            },
        }
    }

    /// The element count (valid after [`Manifest::validate`]; saturates otherwise).
    pub fn elements(&self) -> usize {
        self.shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .unwrap_or(usize::MAX)
    }

    /// `[N, C, H, W]` of the shape (`H = W = 1` for rank 2), if its rank is 2 or 4.
    pub fn nchw(&self) -> Option<[usize; 4]> {
        nchw(&self.shape)
    }
}

fn nchw(shape: &[usize]) -> Option<[usize; 4]> {
    match *shape {
        [n, c] => Some([n, c, 1, 1]),
        [n, c, h, w] => Some([n, c, h, w]),
        _ => None,
    }
}

/// An NHWC window of the arena, as the compiler's kernel views describe it: element
/// `(n, h, w, c)` lives at byte `offset + 4 * (((n * h_count + h) * w_count + w) * pixel_stride
/// + channel_offset + c)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArenaView {
    /// Byte offset of the buffer's first element (a multiple of 4).
    pub offset: u64,
    pub n: usize,
    pub h: usize,
    pub w: usize,
    /// Channels in the view.
    pub channels: usize,
    /// Elements between consecutive pixels.
    pub pixel_stride: usize,
    /// First channel of the view within each pixel.
    pub channel_offset: usize,
}

impl ArenaView {
    /// One past the view's last byte, or `None` on overflow.
    pub fn end_bytes(&self) -> Option<u64> {
        let last_pixel = self
            .n
            .checked_mul(self.h)?
            .checked_mul(self.w)?
            .checked_sub(1)?;
        let elements = last_pixel
            .checked_mul(self.pixel_stride)?
            .checked_add(self.channel_offset)?
            .checked_add(self.channels)?;
        u64::try_from(elements)
            .ok()?
            .checked_mul(4)?
            .checked_add(self.offset)
    }
}

/// One scheduled kernel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KernelInfo {
    /// The graph node(s) it computes, e.g. `features.denseblock1.denselayer1.conv1`.
    pub name: String,
    /// The kind of kernel, e.g. `conv1x1`, `conv7x7/2`, `avgpool2x2/2`: profiles group by it.
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
    /// The generated-code ABI version it was compiled against ([`crate::abi::DNC_ABI_VERSION`]).
    pub abi_version: u32,
    /// The LLVM CPU name the code was compiled for (`x86-64-v3`, `znver3`, …).
    pub cpu: String,
    /// The LLVM target feature string (`+avx2,+fma,…`). The runtime refuses to load code whose
    /// `+` features (or whose `x86-64-vN` level) this CPU lacks, instead of crashing on an
    /// illegal instruction; record the full string whenever it is known.
    #[serde(default)]
    pub features: String,
    /// The code variants of a multi-CPU artefact (`--cpu x86-64-v3,x86-64-v4`), most demanding
    /// first; empty for one variant, whose code is the whole shared-object section and whose
    /// weights start at offset 0 of the weights section. With variants, `cpu` and `features`
    /// above repeat the first variant's, and the first variant's code and weights start at
    /// offset 0 of their sections, so a runtime that predates variants runs the first one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub variants: Vec<CpuVariant>,
    /// Arithmetic of the conv and linear kernels: `fp32`, or `bf16` (`vdpbf16ps`: operands
    /// rounded to bf16, f32 sums; the code then requires `+avx512bf16`, which `features`
    /// lists). Informative; absent (an fp32 artefact, or one that predates it) means `fp32`.
    /// With variants it is the first variant's: `--precision bf16` falls back to fp32 on the
    /// variants whose CPU lacks AVX512_BF16, whose `isa` then lacks the `+bf16` suffix.
    #[serde(default = "fp32", skip_serializing_if = "is_fp32")]
    pub precision: String,
}

fn fp32() -> String {
    "fp32".into()
}

fn is_fp32(p: &String) -> bool {
    p == "fp32"
}

/// One CPU code variant of a multi-CPU artefact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuVariant {
    /// The LLVM CPU name (`x86-64-v4`, `znver5`, …).
    pub cpu: String,
    /// The LLVM target feature string whose `+` features the host must have (see
    /// [`CpuTarget::features`]).
    #[serde(default)]
    pub features: String,
    /// The kernels' vector ISA (`avx2`, `avx512`), for people.
    #[serde(default)]
    pub isa: String,
    /// The variant's shared object: a byte range of the shared-object section.
    pub code: ByteRange,
    /// The variant's packed weights: a byte range of the weights section (variants whose
    /// packing is byte-identical share one range).
    pub weights: ByteRange,
}

impl CpuTarget {
    /// The variants as a list, a one-variant artefact's included (its code the whole
    /// `code_len`-byte section, its weights all of the first `weights_len` bytes).
    pub fn variant_list(&self, code_len: u64, weights_len: u64) -> Vec<CpuVariant> {
        if !self.variants.is_empty() {
            return self.variants.clone();
        }
        vec![CpuVariant {
            cpu: self.cpu.clone(),
            features: self.features.clone(),
            isa: String::new(),
            code: ByteRange {
                offset: 0,
                bytes: code_len,
            },
            weights: ByteRange {
                offset: 0,
                bytes: weights_len,
            },
        }]
    }

    /// Checks that every variant's ranges lie inside their sections.
    pub fn validate_variants(&self, code_len: u64, weights_len: u64) -> Result<(), ArtefactError> {
        let inside =
            |r: &ByteRange, len: u64| r.offset.checked_add(r.bytes).is_some_and(|e| e <= len);
        for v in &self.variants {
            if !inside(&v.code, code_len) || v.code.bytes == 0 {
                return Err(invalid(format!(
                    "CPU variant '{}': code range {}+{} is outside the {code_len}-byte shared-object section",
                    v.cpu, v.code.offset, v.code.bytes
                )));
            }
            if !inside(&v.weights, weights_len) {
                return Err(invalid(format!(
                    "CPU variant '{}': weights range {}+{} is outside the {weights_len}-byte weights section",
                    v.cpu, v.weights.offset, v.weights.bytes
                )));
            }
            if v.weights.offset % 64 != 0 || v.code.offset % 64 != 0 {
                return Err(invalid(format!(
                    "CPU variant '{}': its code and weights must start on 64-byte boundaries",
                    v.cpu
                )));
            }
        }
        Ok(())
    }
}

fn invalid(msg: String) -> ArtefactError {
    ArtefactError::ManifestInvalid(msg)
}

fn check_tensor(t: &TensorSpec, batch: usize, arena_bytes: u64) -> Result<(), ArtefactError> {
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
    let Some([n, c, h, w]) = t.nchw() else {
        return Err(invalid(format!(
            "tensor '{name}' has shape {:?}: only NCHW (rank 4) and NC (rank 2) are supported",
            t.shape
        )));
    };
    let v = &t.view;
    let fits = v
        .channel_offset
        .checked_add(v.channels)
        .is_some_and(|e| e <= v.pixel_stride);
    if (v.n, v.h, v.w, v.channels) != (n, h, w, c) || !fits || !v.offset.is_multiple_of(4) {
        return Err(invalid(format!(
            "tensor '{name}' of shape {:?} has an inconsistent arena view {v:?}",
            t.shape
        )));
    }
    if v.end_bytes().is_none_or(|end| end > arena_bytes) {
        return Err(invalid(format!(
            "tensor '{name}': arena view {v:?} extends past the {arena_bytes}-byte arena"
        )));
    }
    Ok(())
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
        if usize::try_from(self.memory.arena_bytes).map_or(true, |b| b > isize::MAX as usize) {
            return Err(invalid(format!(
                "arena of {} bytes is too large",
                self.memory.arena_bytes
            )));
        }
        check_tensor(&self.input, self.batch, self.memory.arena_bytes)?;
        check_tensor(&self.output, self.batch, self.memory.arena_bytes)?;
        if self.cpu.is_none() && self.cuda.is_none() {
            return Err(invalid(
                "no target: the artefact holds neither CPU nor CUDA code".into(),
            ));
        }
        if self.cpu.is_some() && !present.contains(&SectionKind::CpuSharedObject) {
            return Err(ArtefactError::MissingSection(
                SectionKind::CpuSharedObject.name(),
            ));
        }
        if self.cuda.is_some() && !present.contains(&SectionKind::Ptx) {
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

    /// Checks the CUDA launch table (if any) against the weights section's length and the PTX
    /// text; after [`Manifest::validate`].
    pub fn validate_cuda(&self, weights_len: u64, ptx: Option<&[u8]>) -> Result<(), ArtefactError> {
        let Some(cuda) = &self.cuda else {
            return Ok(());
        };
        let ptx = ptx.ok_or(ArtefactError::MissingSection(SectionKind::Ptx.name()))?;
        let text = std::str::from_utf8(ptx)
            .map_err(|e| invalid(format!("the PTX section is not UTF-8 text: {e}")))?;
        cuda.validate(
            self.schedule.len(),
            self.memory.arena_bytes,
            weights_len,
            text,
        )
    }
}
