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
use crate::error::CompileError;
use std::path::Path;

type Result<T> = std::result::Result<T, CompileError>;

/// Which targets to compile for, and how.
#[derive(Debug, Clone, Default)]
pub struct TargetOptions {
    /// One entry per CPU code variant (`--cpu x86-64-v3,x86-64-v4`); empty: no CPU target.
    pub cpu: Vec<CpuOptions>,
    pub cuda: Option<CudaOptions>,
    /// Assemble the PTX with `ptxas` when one is found ([`ptxas::find`]).
    pub assemble: bool,
}

impl TargetOptions {
    /// `cpu x86-64-v3`, `cuda sm_80`, `cpu native + cuda sm_90`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.cpu.is_empty() {
            let names: Vec<&str> = self.cpu.iter().map(|c| c.cpu.as_str()).collect();
            let mut cpu = format!("cpu {}", names.join(","));
            if let Some(p) = self
                .cpu
                .iter()
                .map(|c| c.precision)
                .find(|p| *p != cuda::Precision::Fp32)
            {
                cpu.push_str(&format!(" {p}"));
                if self.cpu.len() > 1 {
                    cpu.push_str(" (where the CPU has it, else fp32)");
                }
            }
            parts.push(cpu);
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
    /// The CPU code variants, most demanding vector ISA first (the order the runtime tries
    /// them in); empty without a CPU target.
    pub cpu: Vec<CompiledCpu>,
    pub cuda: Option<CompiledCuda>,
    /// `ptxas`'s report when it assembled the PTX, else why it did not.
    pub ptxas: Option<std::result::Result<ptxas::PtxasReport, String>>,
}

/// Compiles a graph's kernels for every target of `opts`: each CPU variant in turn (each on
/// its own parallel LLVM threads), CUDA beside them. The graph's outputs are kept live for the
/// CPU's batch tiling whatever `opts.cpu[..].live_out` says.
pub fn compile(graph: &GraphKernels, opts: &TargetOptions) -> Result<CompiledTargets> {
    if opts.cpu.is_empty() && opts.cuda.is_none() {
        return Err(CompileError::Options("no target to compile for".into()));
    }
    for (i, c) in opts.cpu.iter().enumerate() {
        if opts.cpu[..i].iter().any(|d| d.cpu == c.cpu) {
            return Err(CompileError::Options(format!(
                "--cpu names `{}` twice",
                c.cpu
            )));
        }
    }
    let kernels = graph.kernels.as_slice();
    let mut cpu_opts: Vec<CpuOptions> = opts
        .cpu
        .iter()
        .map(|o| CpuOptions {
            live_out: graph.outputs.clone(),
            ..o.clone()
        })
        .collect();
    reduced_precision_fallback(&mut cpu_opts)?;
    let (cpu, cuda) = std::thread::scope(|s| {
        let cuda = opts
            .cuda
            .as_ref()
            .map(|o| s.spawn(move || cuda::lower(kernels, o)));
        let cpu: Vec<_> = cpu_opts.iter().map(|o| cpu::compile(kernels, o)).collect();
        let cuda = cuda.map(|h| h.join());
        (cpu, cuda)
    });
    let mut cpu = cpu
        .into_iter()
        .collect::<std::result::Result<Vec<_>, _>>()?;
    // Widest vectors first, bf16 before f32 of the same width, the AMX tiles before
    // `vdpbf16ps`; equal ISAs keep the command line's order.
    cpu.sort_by_key(|c| {
        let isa = c.target.isa;
        std::cmp::Reverse((isa.lanes, isa.bf16, isa.amx))
    });
    for (i, c) in cpu.iter().enumerate() {
        if cpu[..i].iter().any(|d| d.target.cpu == c.target.cpu) {
            return Err(CompileError::Options(format!(
                "two --cpu entries resolve to the same CPU `{}`",
                c.target.cpu
            )));
        }
    }
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

/// A multi-CPU artefact (`--cpu x86-64-v3,znver4 --precision bf16`) computes in the reduced
/// precision on the variants whose CPU has it and in fp32 on the others (the runtime runs
/// the first variant the host supports, bf16 ones first), so one artefact still serves every
/// server. With one variant, or when no variant has it, the precision is an error instead.
fn reduced_precision_fallback(cpu: &mut [CpuOptions]) -> Result<()> {
    if cpu.len() < 2 {
        return Ok(());
    }
    let mut checks: Vec<_> = cpu
        .iter()
        .map(|c| cpu::check_precision(&c.cpu, c.precision))
        .collect();
    if checks.iter().all(|r| r.is_err()) {
        if let Err(e) = checks.swap_remove(0) {
            return Err(e.into());
        }
    }
    for (c, check) in cpu.iter_mut().zip(&checks) {
        if check.is_err() {
            c.precision = cuda::Precision::Fp32;
        }
    }
    Ok(())
}

impl CompiledTargets {
    /// Writes each target's inspectable outputs into `dir` (`--dump-dir`):
    /// the CPU backend's files, `cuda.ll` (the NVPTX module before
    /// optimisation), `cuda.ptx` and `cuda-launches.txt` (one line per
    /// launch: entry, grid, block, shared memory, arguments, plan).
    pub fn dump(&self, dir: &Path) -> Result<()> {
        for (i, c) in self.cpu.iter().enumerate() {
            if i == 0 {
                c.dump(dir)?;
            } else {
                // Further variants in a directory of their own, named for the CPU.
                let sub = dir.join(format!("cpu-{}", c.target.cpu));
                std::fs::create_dir_all(&sub).map_err(|source| CompileError::Write {
                    path: sub.clone(),
                    source,
                })?;
                c.dump(&sub)?;
            }
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
        match self.cpu.as_slice() {
            [] => {}
            [c] => parts.push(format!("{} kernels", c.kernels.len())),
            [c, ..] => parts.push(format!(
                "{} kernels in {} CPU variants ({})",
                c.kernels.len(),
                self.cpu.len(),
                self.cpu
                    .iter()
                    .map(|c| format!("{} {}", c.target.cpu, c.target.isa))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
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
