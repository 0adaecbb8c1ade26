//! Driving NVIDIA's `ptxas` offline (no GPU needed): find it, assemble PTX
//! for an architecture, and parse its `-v` report (registers, spills,
//! shared memory per kernel). The cubin it writes can be embedded in an
//! artefact so the driver need not JIT the PTX.
//!
//! `ptxas` comes from the PyPI wheel `nvidia-cuda-nvcc-cu12`;
//! `scripts/install-ptxas.sh` installs it into `.tools/ptxas-venv`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use thiserror::Error;

/// Environment variable naming the `ptxas` to use.
pub const ENV: &str = "DENSENETC_PTXAS";
/// Where `scripts/install-ptxas.sh` puts its venv, relative to the workspace.
pub const VENV: &str = ".tools/ptxas-venv";

/// Why `ptxas` could not be run or failed.
#[derive(Debug, Error)]
pub enum PtxasError {
    #[error("ptxas not found (run scripts/install-ptxas.sh or set {ENV}); tried: {tried}")]
    NotFound { tried: String },
    #[error("I/O error while {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("ptxas -arch={arch} failed ({status}):\n{log}")]
    Failed {
        arch: String,
        status: String,
        log: String,
    },
    #[error("unexpected ptxas report: {0}")]
    Parse(String),
}

/// What `ptxas -v` reports for one kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelReport {
    pub name: String,
    pub registers: u32,
    pub spill_store_bytes: u32,
    pub spill_load_bytes: u32,
    pub stack_frame_bytes: u32,
    pub shared_bytes: u32,
}

impl KernelReport {
    pub fn spills(&self) -> bool {
        self.spill_store_bytes > 0 || self.spill_load_bytes > 0
    }
}

/// The result of assembling a PTX module.
#[derive(Debug, Clone)]
pub struct PtxasReport {
    pub arch: String,
    /// Per kernel, in the order ptxas reports them.
    pub kernels: Vec<KernelReport>,
    /// The assembled cubin (ELF).
    pub cubin: Vec<u8>,
    /// ptxas's own output.
    pub log: String,
}

impl PtxasReport {
    pub fn kernel(&self, name: &str) -> Option<&KernelReport> {
        self.kernels.iter().find(|k| k.name == name)
    }
}

fn venv_candidates(root: &Path) -> Vec<PathBuf> {
    let lib = root.join(VENV).join("lib");
    let Ok(entries) = std::fs::read_dir(&lib) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path().join("site-packages/nvidia/cuda_nvcc/bin/ptxas"))
        .collect();
    found.sort();
    found
}

/// Locate `ptxas`: `$DENSENETC_PTXAS`, then the venv of
/// `scripts/install-ptxas.sh` (under the current directory or the source
/// workspace), then `PATH` and `/usr/local/cuda/bin`.
pub fn find() -> Result<PathBuf, PtxasError> {
    let mut tried = Vec::new();
    if let Some(p) = std::env::var_os(ENV) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        tried.push(format!("${ENV}={}", p.display()));
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut cands = Vec::new();
    for root in [Path::new("."), workspace.as_path()] {
        cands.extend(venv_candidates(root));
        tried.push(root.join(VENV).display().to_string());
    }
    if let Some(path) = std::env::var_os("PATH") {
        cands.extend(std::env::split_paths(&path).map(|d| d.join("ptxas")));
        tried.push("PATH".into());
    }
    cands.push(PathBuf::from("/usr/local/cuda/bin/ptxas"));
    tried.push("/usr/local/cuda/bin".into());
    cands
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| PtxasError::NotFound {
            tried: tried.join(", "),
        })
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Assemble `ptx` for `arch` (e.g. `sm_80`) with `ptxas -v`.
pub fn assemble(ptxas: &Path, ptx: &str, arch: &str) -> Result<PtxasReport, PtxasError> {
    let io = |context: &str| {
        let context = context.to_string();
        move |source| PtxasError::Io { context, source }
    };
    let dir = std::env::temp_dir().join(format!(
        "densenetc-ptxas-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).map_err(io("creating a temporary directory"))?;
    let result = (|| {
        let (src, out) = (dir.join("module.ptx"), dir.join("module.cubin"));
        std::fs::write(&src, ptx).map_err(io("writing the PTX"))?;
        let output = Command::new(ptxas)
            .arg(format!("-arch={arch}"))
            .arg("-v")
            .arg("-o")
            .arg(&out)
            .arg(&src)
            .output()
            .map_err(io(&format!("running {}", ptxas.display())))?;
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        if !output.status.success() {
            return Err(PtxasError::Failed {
                arch: arch.into(),
                status: output.status.to_string(),
                log,
            });
        }
        let cubin = std::fs::read(&out).map_err(io("reading the cubin"))?;
        Ok(PtxasReport {
            arch: arch.into(),
            kernels: parse(&log)?,
            cubin,
            log,
        })
    })();
    // Best effort: a leftover temporary directory is harmless.
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// The number just before `word` in `line` (`"40 registers"` → 40).
fn number_before(line: &str, word: &str) -> Option<u32> {
    let at = line.find(word)?;
    line[..at].split_whitespace().last()?.parse().ok()
}

/// Parse the per-kernel lines of `ptxas -v`.
pub fn parse(log: &str) -> Result<Vec<KernelReport>, PtxasError> {
    let mut kernels: Vec<KernelReport> = Vec::new();
    let mut props_for: Option<String> = None;
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or_default().to_string();
            kernels.push(KernelReport {
                name,
                ..KernelReport::default()
            });
        } else if let Some(rest) = line.split("Function properties for ").nth(1) {
            props_for = Some(rest.trim().to_string());
        } else if line.contains("stack frame") {
            let name = props_for.take();
            let k = kernels
                .iter_mut()
                .rev()
                .find(|k| Some(&k.name) == name.as_ref());
            if let Some(k) = k {
                k.stack_frame_bytes = number_before(line, "bytes stack frame").unwrap_or(0);
                k.spill_store_bytes = number_before(line, "bytes spill stores").unwrap_or(0);
                k.spill_load_bytes = number_before(line, "bytes spill loads").unwrap_or(0);
            }
        } else if line.contains("Used ") && line.contains("registers") {
            let k = kernels
                .last_mut()
                .ok_or_else(|| PtxasError::Parse(format!("`{line}` before any entry")))?;
            k.registers = number_before(line, "registers")
                .ok_or_else(|| PtxasError::Parse(line.to_string()))?;
            k.shared_bytes = number_before(line, "bytes smem").unwrap_or(0);
        }
    }
    Ok(kernels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_verbose_report() {
        let log = "ptxas info    : 0 bytes gmem\n\
ptxas info    : Compiling entry function 'dnc_k000_a' for 'sm_80'\n\
ptxas info    : Function properties for dnc_k000_a\n\
    0 bytes stack frame, 8 bytes spill stores, 12 bytes spill loads\n\
ptxas info    : Used 40 registers, 8704 bytes smem, 368 bytes cmem[0]\n\
ptxas info    : Compiling entry function 'dnc_k001_b' for 'sm_80'\n\
ptxas info    : Function properties for dnc_k001_b\n\
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n\
ptxas info    : Used 12 registers, 368 bytes cmem[0]\n";
        let ks = parse(log).expect("parse");
        assert_eq!(ks.len(), 2);
        assert_eq!(
            ks[0],
            KernelReport {
                name: "dnc_k000_a".into(),
                registers: 40,
                spill_store_bytes: 8,
                spill_load_bytes: 12,
                stack_frame_bytes: 0,
                shared_bytes: 8704,
            }
        );
        assert!(ks[0].spills() && !ks[1].spills());
        assert_eq!((ks[1].registers, ks[1].shared_bytes), (12, 0));
    }
}
