//! The CUDA part of the manifest: the launch table the CUDA executor replays, and its checks.
//!
//! The table lists, in the order they must be issued on one stream, every kernel launch of
//! one inference: the PTX `.entry` to call, its grid, block and dynamic shared memory, and its
//! arguments: device pointers given as byte offsets into the device weights (a range of the
//! weights section) or into the session's device arena, and 32-bit scalars (a 1x1 GEMM's input
//! channels). Launches of kernels of one shape share an entry and differ only in these
//! arguments; shapes are compiled into the PTX. The arguments are fixed per launch, so the same
//! launches replay as a CUDA graph.
//!
//! [`CUDA_LAUNCH_VERSION`] versions this table: a manifest whose `cuda` object lacks it was
//! written before the CUDA executor existed, one with another value by another compiler
//! (version 1: pointer arguments only, one entry per launch); all are rejected with a message
//! naming the versions.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ArtefactError;

/// The version of the launch table this runtime executes.
pub const CUDA_LAUNCH_VERSION: u32 = 2;
/// The values of [`CudaTarget::precision`] this runtime accepts (`compile --precision`).
pub const CUDA_PRECISIONS: [&str; 4] = ["fp32", "tf32", "fp16", "bf16"];
/// Largest [`CudaArg::Scalar`]: the kernels use scalars in signed 32-bit arithmetic (as counts
/// rounded up to a tile), so 2^30 - 1, the compiler's bound on a GEMM's reduction length.
pub const CUDA_MAX_SCALAR: u32 = i32::MAX as u32 / 2;
/// Alignment (bytes) of the device weights range within the weights section: the kernels load
/// 16-byte vectors relative to its start.
pub const CUDA_WEIGHTS_ALIGN: u64 = 256;
/// Largest static shared memory of a kernel (the PTX limit without opt-in).
pub const MAX_STATIC_SHARED: u32 = 48 * 1024;
/// Largest shared memory per block of any supported architecture (sm_90: 227 KiB).
pub const MAX_SHARED: u32 = 227 * 1024;

/// The CUDA code's description.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CudaTarget {
    /// The architecture the PTX targets (and the cubin, when there is one), e.g. `sm_80`.
    pub arch: String,
    /// [`CUDA_LAUNCH_VERSION`] of the compiler that wrote the table (0: none recorded).
    #[serde(default)]
    pub launch_version: u32,
    /// Where the device weights lie in the weights section.
    #[serde(default)]
    pub weights: ByteRange,
    /// Bytes of the arena the kernels touch (at most `memory.arena_bytes`, which the executor
    /// allocates).
    #[serde(default)]
    pub arena_bytes: u64,
    /// Every launch of one inference, in issue order.
    #[serde(default)]
    pub launches: Vec<CudaLaunch>,
    /// Anything else the compiler records (ptxas report, …); opaque to this runtime.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub detail: Value,
    /// Arithmetic of the GEMM kernels: `fp32` (SIMT FMA), or `tf32`, `fp16` or `bf16` (the
    /// operand type of the tensor cores; f32 accumulation and storage). Informative (the
    /// PTX is what runs); artefacts that predate it are `fp32`.
    #[serde(default = "fp32")]
    pub precision: String,
}

fn fp32() -> String {
    "fp32".into()
}

/// A byte range of a section.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ByteRange {
    pub offset: u64,
    pub bytes: u64,
}

/// One kernel launch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CudaLaunch {
    /// The PTX `.entry` (and cubin function) name.
    pub entry: String,
    /// The index in `manifest.schedule` of the kernel this launch belongs to.
    pub kernel: usize,
    pub grid: [u32; 3],
    pub block: [u32; 3],
    /// Dynamic shared memory requested at launch.
    pub dynamic_shared_bytes: u32,
    /// Static shared memory the kernel declares (checked against the limits; informative).
    #[serde(default)]
    pub static_shared_bytes: u32,
    /// The `.param`s of the entry, in order.
    pub args: Vec<CudaArg>,
}

impl CudaLaunch {
    /// Thread blocks in the grid.
    pub fn blocks(&self) -> u64 {
        self.grid.iter().map(|&g| u64::from(g)).product()
    }
}

/// A kernel argument: a device pointer, `base + offset` (a `.u64` parameter), or a scalar (a
/// `.u32` parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CudaArg {
    /// Into the device weights (`CudaTarget::weights`), 16-byte aligned.
    Weights { offset: u64 },
    /// Into the session's device arena, 4-byte aligned.
    Arena { offset: u64 },
    /// A count in `1..=CUDA_MAX_SCALAR`.
    Scalar { value: u32 },
}

impl CudaArg {
    /// The PTX parameter type the argument is passed as.
    pub fn ptx_type(&self) -> &'static str {
        match self {
            CudaArg::Weights { .. } | CudaArg::Arena { .. } => ".u64",
            CudaArg::Scalar { .. } => ".u32",
        }
    }
}

fn invalid(msg: String) -> ArtefactError {
    ArtefactError::ManifestInvalid(format!("CUDA launch table: {msg}"))
}

/// The `.entry` functions of a PTX module and their parameters' types (`.u64`, `.u32`, …).
pub fn ptx_entries(ptx: &str) -> HashMap<&str, Vec<&str>> {
    let mut entries = HashMap::new();
    let mut rest = ptx;
    while let Some(at) = rest.find(".entry") {
        rest = &rest[at + ".entry".len()..];
        let name_len = rest
            .trim_start()
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '$'))
            .unwrap_or(0);
        let start = rest.len() - rest.trim_start().len();
        let name = &rest[start..start + name_len];
        let after = rest[start + name_len..].trim_start();
        if name.is_empty() || !after.starts_with('(') {
            continue;
        }
        let params = after.find(')').map_or("", |end| &after[1..end]);
        let types = params
            .split(',')
            .filter_map(|p| {
                let mut words = p.split_whitespace();
                (words.next() == Some(".param")).then(|| words.next().unwrap_or(""))
            })
            .collect();
        entries.insert(name, types);
    }
    entries
}

fn check_dims(i: usize, l: &CudaLaunch) -> Result<(), ArtefactError> {
    let [gx, gy, gz] = l.grid;
    let [bx, by, bz] = l.block;
    if l.grid.contains(&0) || gx > i32::MAX as u32 || gy > 65535 || gz > 65535 {
        return Err(invalid(format!(
            "launch {i} `{}`: grid {:?} outside 1..=(2^31-1, 65535, 65535)",
            l.entry, l.grid
        )));
    }
    let threads = u64::from(bx) * u64::from(by) * u64::from(bz);
    if l.block.contains(&0) || bx > 1024 || by > 1024 || bz > 64 || threads > 1024 {
        return Err(invalid(format!(
            "launch {i} `{}`: block {:?} outside 1..=(1024, 1024, 64) or over 1024 threads",
            l.entry, l.block
        )));
    }
    let shared = u64::from(l.static_shared_bytes) + u64::from(l.dynamic_shared_bytes);
    if l.static_shared_bytes > MAX_STATIC_SHARED || shared > u64::from(MAX_SHARED) {
        return Err(invalid(format!(
            "launch {i} `{}`: {} static + {} dynamic bytes of shared memory (at most {} \
             static, {} in all)",
            l.entry, l.static_shared_bytes, l.dynamic_shared_bytes, MAX_STATIC_SHARED, MAX_SHARED
        )));
    }
    Ok(())
}

impl CudaTarget {
    /// Checks the table against itself, the schedule length, the arena the executor allocates,
    /// the weights section's length and the PTX text.
    pub fn validate(
        &self,
        schedule_len: usize,
        arena_bytes: u64,
        weights_len: u64,
        ptx: &str,
    ) -> Result<(), ArtefactError> {
        match self.launch_version {
            CUDA_LAUNCH_VERSION => {}
            0 => {
                return Err(invalid(format!(
                    "none recorded (the artefact predates the CUDA executor; this runtime reads \
                     version {CUDA_LAUNCH_VERSION}): recompile it"
                )))
            }
            v => {
                return Err(invalid(format!(
                    "version {v}, this runtime reads version {CUDA_LAUNCH_VERSION}: recompile \
                     the artefact with a matching compiler"
                )))
            }
        }
        if !CUDA_PRECISIONS.contains(&self.precision.as_str()) {
            return Err(invalid(format!(
                "precision `{}` is not fp32, tf32, fp16 or bf16",
                self.precision
            )));
        }
        let digits = self.arch.strip_prefix("sm_").unwrap_or("");
        let digits = digits.strip_suffix('a').unwrap_or(digits);
        if digits.len() < 2 || !digits.chars().all(|c| c.is_ascii_digit()) {
            return Err(invalid(format!(
                "architecture `{}` is not sm_NN or sm_NNa",
                self.arch
            )));
        }
        let w = self.weights;
        if !w.offset.is_multiple_of(CUDA_WEIGHTS_ALIGN)
            || w.offset
                .checked_add(w.bytes)
                .is_none_or(|e| e > weights_len)
        {
            return Err(invalid(format!(
                "device weights {w:?} are not a {CUDA_WEIGHTS_ALIGN}-byte aligned range of the \
                 {weights_len}-byte weights section"
            )));
        }
        if self.arena_bytes > arena_bytes {
            return Err(invalid(format!(
                "the kernels touch {} arena bytes but the arena has {arena_bytes}",
                self.arena_bytes
            )));
        }
        if self.launches.is_empty() {
            return Err(invalid("no launches".into()));
        }
        let entries = ptx_entries(ptx);
        for (i, l) in self.launches.iter().enumerate() {
            let Some(params) = entries.get(l.entry.as_str()) else {
                return Err(invalid(format!(
                    "launch {i}: entry `{}` is not in the PTX",
                    l.entry
                )));
            };
            if params.len() != l.args.len() {
                return Err(invalid(format!(
                    "launch {i} `{}`: {} arguments for {} parameters",
                    l.entry,
                    l.args.len(),
                    params.len()
                )));
            }
            for (j, (a, &ty)) in l.args.iter().zip(params).enumerate() {
                if a.ptx_type() != ty {
                    return Err(invalid(format!(
                        "launch {i} `{}` argument {j}: {a:?} for a `{ty}` parameter",
                        l.entry
                    )));
                }
            }
            if schedule_len != 0 && l.kernel >= schedule_len {
                return Err(invalid(format!(
                    "launch {i} `{}`: kernel {} of a {schedule_len}-kernel schedule",
                    l.entry, l.kernel
                )));
            }
            check_dims(i, l)?;
            for (j, a) in l.args.iter().enumerate() {
                let (offset, size, align, what) = match *a {
                    CudaArg::Weights { offset } => (offset, w.bytes, 16, "weights"),
                    CudaArg::Arena { offset } => (offset, self.arena_bytes, 4, "arena"),
                    CudaArg::Scalar { value } => {
                        if !(1..=CUDA_MAX_SCALAR).contains(&value) {
                            return Err(invalid(format!(
                                "launch {i} `{}` argument {j}: scalar {value} outside \
                                 1..={CUDA_MAX_SCALAR}",
                                l.entry
                            )));
                        }
                        continue;
                    }
                };
                // A pointer at the very end of an empty buffer is allowed (nothing is read).
                if !offset.is_multiple_of(align) || offset > size || (offset == size && size != 0) {
                    return Err(invalid(format!(
                        "launch {i} `{}` argument {j}: {what} offset {offset} outside the \
                         {size}-byte {what} or not {align}-byte aligned",
                        l.entry
                    )));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_entries_and_their_parameters() {
        let ptx = "//\n.version 7.0\n.target sm_80\n.visible .entry dnc_k000_a(\n\t.param .u64 \
                   dnc_k000_a_param_0,\n\t.param .u64 dnc_k000_a_param_1\n)\n{\n ret;\n}\n\
                   .visible .entry b$x()\n{ ret; }\n";
        let e = ptx_entries(ptx);
        assert_eq!(e.get("dnc_k000_a"), Some(&vec![".u64", ".u64"]));
        assert_eq!(e.get("b$x"), Some(&vec![]));
        assert_eq!(e.len(), 2);
        let ptx = ".visible .entry e(\n\t.param .u64 e_param_0,\n\t.param .u32 e_param_1\n)\n{}";
        assert_eq!(ptx_entries(ptx).get("e"), Some(&vec![".u64", ".u32"]));
    }
}
