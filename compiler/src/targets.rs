//! Code generation for the targets of `densenetc compile` (`--target cpu`,
//! `cuda` or `cpu,cuda`): each backend lowers the same kernel list, the two
//! on their own threads (each with its own LLVM context), and the PTX is
//! assembled by `ptxas` when one is found. A missing `ptxas` is not an
//! error: the artefact then carries the PTX alone (the driver JIT-compiles
//! it) and its manifest says why there is no cubin.

use crate::backend::cpu::{self, CompiledCpu, CpuOptions};
use crate::backend::cuda::{self, ptxas, CompiledCuda, CudaOptions};
use crate::backend::graph::GraphKernels;
use crate::backend::BackendError;
use crate::driver::CompileError;
use std::path::Path;

type Result<T> = std::result::Result<T, CompileError>;

/// Which targets to compile for, and how.
#[derive(Debug, Clone, Default)]
pub struct TargetOptions {
    pub cpu: Option<CpuOptions>,
    pub cuda: Option<CudaOptions>,
    /// Assemble the PTX with `ptxas` when one is found ([`ptxas::find`]).
    pub assemble: bool,
}

impl TargetOptions {
    /// `cpu x86-64-v3`, `cuda sm_80`, `cpu native + cuda sm_90`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(c) = &self.cpu {
            parts.push(format!("cpu {}", c.cpu));
        }
        if let Some(c) = &self.cuda {
            parts.push(match c.precision {
                cuda::Precision::Fp32 => format!("cuda {}", c.arch),
                p => format!("cuda {} {p}", c.arch),
            });
        }
        parts.join(" + ")
    }
}

/// The code of every target.
#[derive(Debug)]
pub struct CompiledTargets {
    pub cpu: Option<CompiledCpu>,
    pub cuda: Option<CompiledCuda>,
    /// `ptxas`'s report when it assembled the PTX, else why it did not.
    pub ptxas: Option<std::result::Result<ptxas::PtxasReport, String>>,
}

/// Compiles a graph's kernels for every target of `opts`. The graph's
/// outputs are kept live for the CPU's batch tiling whatever
/// `opts.cpu.live_out` says.
pub fn compile(graph: &GraphKernels, opts: &TargetOptions) -> Result<CompiledTargets> {
    if opts.cpu.is_none() && opts.cuda.is_none() {
        return Err(CompileError::Options("no target to compile for".into()));
    }
    let kernels = graph.kernels.as_slice();
    let cpu_opts = opts.cpu.as_ref().map(|o| CpuOptions {
        live_out: graph.outputs.clone(),
        ..o.clone()
    });
    let (cpu, cuda) = std::thread::scope(|s| {
        let cuda = opts
            .cuda
            .as_ref()
            .map(|o| s.spawn(move || cuda::lower(kernels, o)));
        let cpu = cpu_opts.as_ref().map(|o| cpu::compile(kernels, o));
        let cuda = cuda.map(|h| h.join());
        (cpu, cuda)
    });
    let cpu = cpu.transpose()?;
    let mut cuda = match cuda {
        Some(Ok(r)) => Some(r?),
        Some(Err(_)) => {
            return Err(BackendError::Codegen("CUDA code generation panicked".into()).into())
        }
        None => None,
    };
    let ptxas = match &mut cuda {
        Some(c) if opts.assemble => Some(match ptxas::find() {
            Ok(path) => c.assemble(&path).map_err(|e| format!("ptxas failed: {e}")),
            Err(e) => Err(format!("no cubin: {e}")),
        }),
        Some(_) => Some(Err("no cubin: assembly not requested".into())),
        None => None,
    };
    Ok(CompiledTargets { cpu, cuda, ptxas })
}

impl CompiledTargets {
    /// Writes each target's inspectable outputs into `dir` (`--dump-dir`):
    /// the CPU backend's files, `cuda.ll` (the NVPTX module before
    /// optimisation), `cuda.ptx` and `cuda-launches.txt` (one line per
    /// launch: entry, grid, block, shared memory, arguments, plan).
    pub fn dump(&self, dir: &Path) -> Result<()> {
        if let Some(c) = &self.cpu {
            c.dump(dir)?;
        }
        if let Some(c) = &self.cuda {
            let write = |name: &str, text: &str| {
                let path = dir.join(name);
                std::fs::write(&path, text).map_err(|source| CompileError::Write { path, source })
            };
            write("cuda.ll", &c.llvm_ir)?;
            write("cuda.ptx", &c.ptx)?;
            let mut table = String::new();
            for l in &c.kernels {
                let args: Vec<String> = l
                    .params
                    .iter()
                    .map(|p| match p {
                        cuda::KernelParam::Weights { offset } => format!("w+{offset}"),
                        cuda::KernelParam::Arena { offset } => format!("a+{offset}"),
                        cuda::KernelParam::Scalar { value } => value.to_string(),
                    })
                    .collect();
                table.push_str(&format!(
                    "{} grid={:?} block={:?} shared={} args=[{}] {}\n",
                    l.symbol,
                    l.grid,
                    l.block,
                    l.static_shared_bytes,
                    args.join(","),
                    l.plan
                ));
            }
            if let Some(Ok(r)) = &self.ptxas {
                table.push_str(&format!("\nptxas {}:\n{}", r.arch, r.log));
            }
            write("cuda-launches.txt", &table)?;
        }
        Ok(())
    }

    /// `N kernels` / `N kernels, M launches (cubin)` for the compile summary.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if let Some(c) = &self.cpu {
            parts.push(format!("{} kernels", c.kernels.len()));
        }
        if let Some(c) = &self.cuda {
            parts.push(format!(
                "{} CUDA launches of {} entries ({})",
                c.kernels.len(),
                c.entries.len(),
                if c.cubin.is_some() {
                    format!("PTX + cubin {}", c.arch)
                } else {
                    format!("PTX {}, no cubin", c.arch)
                }
            ));
        }
        parts.join(", ")
    }
}
