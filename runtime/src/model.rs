//! Models and sessions: the runtime's Rust API.
//!
//! A [`Model`] is a validated artefact with its CPU code loaded; it is cheap to clone, `Send`
//! and `Sync`, and serves any number of [`Session`]s on any threads. A session owns what one
//! run mutates (its arena, allocated once, and its thread pool, started once), so sessions run
//! concurrently without locks; one session runs one inference at a time (`&mut self`).

use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::abi::{DncContext, DNC_ABI_VERSION};
use crate::aligned::AlignedBuf;
use crate::artefact::{Artefact, CpuTarget, Manifest, SectionKind};
use crate::binding;
use crate::cpu_features;
use crate::cuda::{CudaSession, DeviceModel};
use crate::error::{Error, Result};
use crate::library::CpuLibrary;
use crate::pool::{dnc_parallel_for, ThreadPool};
use crate::profile::KernelTime;

/// The CPU code a model runs: one variant of the artefact's, loaded.
#[derive(Debug)]
struct LoadedCpu {
    library: CpuLibrary,
    /// The variant's LLVM CPU name.
    cpu: String,
    /// Where its weights start in the weights section.
    weights_offset: usize,
}

/// Picks the CPU variant to run — `forced` by name, else the first (most demanding) whose
/// features this CPU has — checks it can run here, then loads it.
fn load_cpu(artefact: &Artefact, target: &CpuTarget, forced: Option<&str>) -> Result<LoadedCpu> {
    if target.abi_version != DNC_ABI_VERSION {
        return Err(Error::AbiVersion {
            found: target.abi_version,
            supported: DNC_ABI_VERSION,
        });
    }
    let code = artefact.require(SectionKind::CpuSharedObject)?;
    let weights_len = artefact
        .section(SectionKind::Weights)
        .map_or(0, <[u8]>::len);
    let variants = target.variant_list(code.len() as u64, weights_len as u64);
    let names = || {
        variants
            .iter()
            .map(|v| v.cpu.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let chosen = match forced {
        Some(name) => {
            let v = variants.iter().find(|v| v.cpu == name).ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "the artefact has no CPU code for `{name}` (it has: {})",
                    names()
                ))
            })?;
            let missing = cpu_features::missing(&v.cpu, &v.features);
            if !missing.is_empty() {
                return Err(Error::DeviceUnavailable(format!(
                    "CPU: the code for `{}` needs {}, which this CPU lacks",
                    v.cpu,
                    missing.join(", ")
                )));
            }
            v
        }
        None => match variants
            .iter()
            .find(|v| cpu_features::missing(&v.cpu, &v.features).is_empty())
        {
            Some(v) => v,
            None => {
                let v = &variants[variants.len() - 1];
                return Err(Error::DeviceUnavailable(format!(
                    "CPU: the code was compiled for {} and needs {}, which this CPU lacks \
                     (recompile with --cpu native, or for an older CPU)",
                    if variants.len() > 1 {
                        format!("`{}` at least", v.cpu)
                    } else {
                        format!("`{}`", v.cpu)
                    },
                    cpu_features::missing(&v.cpu, &v.features).join(", ")
                )));
            }
        },
    };
    // `validate_variants` checked the ranges against the sections when the artefact was read.
    let range = |r: &crate::artefact::ByteRange| r.offset as usize..(r.offset + r.bytes) as usize;
    let library = CpuLibrary::load(&code[range(&chosen.code)])?;
    let (listed, compiled) = (
        artefact.manifest().schedule.len(),
        library.kernel_tasks().len(),
    );
    if listed != 0 && listed != compiled {
        return Err(Error::Library(format!(
            "the code has {compiled} kernels but the manifest's schedule lists {listed}"
        )));
    }
    Ok(LoadedCpu {
        library,
        cpu: chosen.cpu.clone(),
        weights_offset: chosen.weights.offset as usize,
    })
}

/// Where a session runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// The CPU, on `threads` threads (the calling thread included; 0 = one per core).
    Cpu { threads: usize },
    /// The CUDA device with this ordinal.
    Cuda { ordinal: usize },
}

impl Device {
    /// The device a command line names: `cpu` (on `threads` threads), `cuda` (device 0) or
    /// `cuda:ORDINAL`.
    pub fn parse(spec: &str, threads: usize) -> Result<Device> {
        let bad = || {
            Error::InvalidArgument(format!(
                "unknown device '{spec}': expected cpu, cuda or cuda:ORDINAL"
            ))
        };
        match spec.split_once(':') {
            None if spec == "cpu" => Ok(Device::Cpu { threads }),
            None if spec == "cuda" => Ok(Device::Cuda { ordinal: 0 }),
            Some(("cuda", n)) => n
                .parse()
                .map(|ordinal| Device::Cuda { ordinal })
                .map_err(|_| bad()),
            _ => Err(bad()),
        }
    }
}

/// A loaded artefact, shareable between threads.
#[derive(Debug, Clone)]
pub struct Model {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    artefact: Artefact,
    cpu: Option<LoadedCpu>,
    /// The CUDA code and weights, loaded on a device by its first session there.
    cuda: Mutex<Vec<Arc<DeviceModel>>>,
}

impl Model {
    /// Reads and validates the artefact at `path`, then loads its CPU code (if it has any).
    pub fn load(path: impl AsRef<Path>) -> Result<Model> {
        Model::from_artefact(Artefact::open(path.as_ref())?)
    }

    /// A model from an already validated artefact, running the best of its CPU variants that
    /// this CPU supports.
    pub fn from_artefact(artefact: Artefact) -> Result<Model> {
        Model::from_artefact_for_cpu(artefact, None)
    }

    /// [`Model::load`] running the CPU variant compiled for `cpu` (an LLVM CPU name the
    /// artefact lists, see [`Model::cpu_variants`]); an error if there is none or this CPU
    /// lacks its features. `None` picks the best supported variant.
    pub fn load_for_cpu(path: impl AsRef<Path>, cpu: Option<&str>) -> Result<Model> {
        Model::from_artefact_for_cpu(Artefact::open(path.as_ref())?, cpu)
    }

    /// [`Model::from_artefact`] with the CPU variant chosen as [`Model::load_for_cpu`] does.
    pub fn from_artefact_for_cpu(artefact: Artefact, cpu: Option<&str>) -> Result<Model> {
        let cpu = match &artefact.manifest().cpu {
            Some(target) => Some(load_cpu(&artefact, target, cpu)?),
            None if cpu.is_some() => {
                return Err(Error::InvalidArgument(
                    "the artefact has no CPU code to choose from".into(),
                ))
            }
            None => None,
        };
        Ok(Model {
            inner: Arc::new(Inner {
                artefact,
                cpu,
                cuda: Mutex::new(Vec::new()),
            }),
        })
    }

    /// The artefact.
    pub fn artefact(&self) -> &Artefact {
        &self.inner.artefact
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        self.inner.artefact.manifest()
    }

    /// The LLVM CPU name of the CPU code variant this model runs (`None` without CPU code).
    pub fn cpu_variant(&self) -> Option<&str> {
        self.inner.cpu.as_ref().map(|c| c.cpu.as_str())
    }

    /// The LLVM CPU names of every CPU code variant in the artefact, most demanding first.
    pub fn cpu_variants(&self) -> Vec<String> {
        let a = self.artefact();
        a.manifest().cpu.as_ref().map_or_else(Vec::new, |t| {
            let len = |k| a.section(k).map_or(0, |s: &[u8]| s.len() as u64);
            t.variant_list(len(SectionKind::CpuSharedObject), len(SectionKind::Weights))
                .into_iter()
                .map(|v| v.cpu)
                .collect()
        })
    }

    /// The input shape the model was compiled for (NCHW).
    pub fn input_shape(&self) -> &[usize] {
        &self.manifest().input.shape
    }

    /// The output shape (`[N, classes]`).
    pub fn output_shape(&self) -> &[usize] {
        &self.manifest().output.shape
    }

    /// Class names, if the artefact carries them.
    pub fn labels(&self) -> Option<&[String]> {
        self.manifest().labels.as_deref()
    }

    /// A new session on `device`, with its own arena and threads.
    pub fn session(&self, device: Device) -> Result<Session> {
        match device {
            Device::Cpu { threads } => Session::cpu(self.clone(), threads),
            Device::Cuda { ordinal } => Session::cuda(self.clone(), ordinal),
        }
    }

    /// The model's CUDA code and weights on device `ordinal`, loaded (once) if need be.
    fn cuda_device(&self, ordinal: usize) -> Result<Arc<DeviceModel>> {
        let Some(target) = &self.manifest().cuda else {
            return Err(Error::DeviceUnavailable(
                "CUDA: the artefact has no CUDA code (compile it with --target cuda or cpu,cuda)"
                    .into(),
            ));
        };
        crate::cuda::driver::probe()?;
        // A poisoned lock only means another thread panicked while loading: the list is
        // still consistent (entries are pushed whole).
        let mut devices = self
            .inner
            .cuda
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(d) = devices.iter().find(|d| d.ordinal == ordinal) {
            return Ok(d.clone());
        }
        let d = Arc::new(DeviceModel::load(self.artefact(), target, ordinal)?);
        devices.push(d.clone());
        Ok(d)
    }
}

/// One execution context of a model: an arena and a thread pool (CPU), or a stream and a
/// device arena (CUDA).
#[derive(Debug)]
pub struct Session {
    model: Model,
    backend: Backend,
}

#[derive(Debug)]
enum Backend {
    Cpu { arena: AlignedBuf, pool: ThreadPool },
    Cuda(Box<CudaSession>),
}

impl Session {
    fn cpu(model: Model, threads: usize) -> Result<Session> {
        if model.manifest().cpu.is_none() {
            return Err(Error::DeviceUnavailable(
                "CPU: the artefact has no CPU code (compile it with --target cpu)".into(),
            ));
        }
        // Validated by the manifest check: fits in isize.
        let arena_bytes = usize::try_from(model.manifest().memory.arena_bytes).map_err(|_| {
            Error::OutOfMemory {
                what: "arena",
                bytes: usize::MAX,
            }
        })?;
        let arena = AlignedBuf::zeroed(arena_bytes, "arena")?;
        let pool = ThreadPool::new(threads)?;
        Ok(Session {
            model,
            backend: Backend::Cpu { arena, pool },
        })
    }

    fn cuda(model: Model, ordinal: usize) -> Result<Session> {
        let device = model.cuda_device(ordinal)?;
        let m = model.manifest();
        let Some(target) = &m.cuda else {
            return Err(Error::DeviceUnavailable(
                "CUDA: the artefact has no CUDA code".into(),
            ));
        };
        let cuda = CudaSession::new(device, target, m.memory.arena_bytes, &m.input, &m.output)?;
        Ok(Session {
            model,
            backend: Backend::Cuda(Box::new(cuda)),
        })
    }

    /// CUDA sessions capture their launches into a CUDA graph at the second run and replay it
    /// from then on; `false` launches kernel by kernel every time (also the default when the
    /// environment has `DNC_CUDA_GRAPHS=0`). No effect on CPU sessions.
    pub fn set_cuda_graphs(&mut self, on: bool) {
        if let Backend::Cuda(c) = &mut self.backend {
            c.set_graphs(on);
        }
    }

    /// Whether this CUDA session replays a captured CUDA graph (false on the CPU).
    pub fn cuda_graph_captured(&self) -> bool {
        matches!(&self.backend, Backend::Cuda(c) if c.graph_captured())
    }

    /// The session's model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The device the session runs on.
    pub fn device(&self) -> Device {
        match &self.backend {
            Backend::Cpu { pool, .. } => Device::Cpu {
                threads: pool.threads(),
            },
            Backend::Cuda(c) => Device::Cuda {
                ordinal: c.ordinal(),
            },
        }
    }

    /// Runs the model on `input` of shape `shape` (which must be the model's input shape) and
    /// returns the output, of the model's output shape.
    pub fn run(&mut self, input: &[f32], shape: &[usize]) -> Result<Vec<f32>> {
        let expected = self.model.input_shape();
        if shape != expected {
            return Err(Error::ShapeMismatch {
                what: "input",
                expected: expected.to_vec(),
                found: shape.to_vec(),
            });
        }
        let mut output =
            crate::system::try_zeroed(self.model.manifest().output.elements(), "output")?;
        self.run_into(input, &mut output)?;
        Ok(output)
    }

    /// Runs the model with flat buffers whose lengths must match the model's shapes.
    pub fn run_into(&mut self, input: &[f32], output: &mut [f32]) -> Result<()> {
        let m = self.model.manifest();
        check_len("input", input.len(), &m.input.shape, m.input.elements())?;
        check_len("output", output.len(), &m.output.shape, m.output.elements())?;
        self.execute(input, output)
    }

    /// Runs the model like [`Session::run_into`], one kernel at a time, and returns each
    /// kernel's wall time (for `densenetc bench --profile`).
    pub fn run_profiled(&mut self, input: &[f32], output: &mut [f32]) -> Result<Vec<KernelTime>> {
        let m = self.model.manifest();
        check_len("input", input.len(), &m.input.shape, m.input.elements())?;
        check_len("output", output.len(), &m.output.shape, m.output.elements())?;
        if let Backend::Cuda(c) = &mut self.backend {
            let launches = m.cuda.as_ref().map_or(&[][..], |t| &t.launches);
            return c.run_profiled(input, output, launches);
        }
        let mut times = Vec::new();
        self.with_context(input, output, |cpu, ctx| {
            for (i, &tasks) in cpu.kernel_tasks().iter().enumerate() {
                let start = std::time::Instant::now();
                // SAFETY: as in `execute`; i < dnc_kernel_count().
                let status = unsafe { (cpu.run_kernel())(ctx, i as i64) };
                if status != 0 {
                    return Err(Error::Execution(status));
                }
                times.push(KernelTime {
                    index: i,
                    tasks,
                    seconds: start.elapsed().as_secs_f64(),
                });
            }
            Ok(())
        })?;
        Ok(times)
    }

    fn execute(&mut self, input: &[f32], output: &mut [f32]) -> Result<()> {
        if let Backend::Cuda(c) = &mut self.backend {
            return c.run(input, output);
        }
        self.with_context(input, output, |cpu, ctx| {
            // SAFETY: the context follows the ABI (see `with_context`).
            unsafe { (cpu.run())(ctx) };
            Ok(())
        })
    }

    /// Copies `input` into the arena, calls `f` with the loaded code and a context for it, then
    /// copies the output out of the arena.
    fn with_context(
        &mut self,
        input: &[f32],
        output: &mut [f32],
        f: impl FnOnce(&CpuLibrary, &DncContext) -> Result<()>,
    ) -> Result<()> {
        let model = self.model.clone();
        let Some(cpu) = &model.inner.cpu else {
            return Err(Error::DeviceUnavailable(
                "CPU: the artefact has no CPU code".into(),
            ));
        };
        let Backend::Cpu { arena, pool } = &mut self.backend else {
            return Err(Error::DeviceUnavailable(
                "CPU: this is a CUDA session".into(),
            ));
        };
        let m = model.manifest();
        binding::copy_in(&m.input, input, arena.as_f32_mut());
        let weights = model
            .artefact()
            .section(SectionKind::Weights)
            .and_then(|w| w.get(cpu.weights_offset..))
            .map_or(std::ptr::null(), |w| w.as_ptr().cast::<f32>());
        // The context follows the ABI (crate::abi): weights is the variant's 64-byte-aligned
        // range of the weights section, kept alive by `model`; the arena has memory.arena_bytes bytes and is
        // exclusively ours (&mut self); the pool is live and only this thread dispatches on it.
        // The code itself is trusted (see the crate docs).
        let ctx = DncContext {
            weights,
            arena: arena.as_mut_ptr().cast::<f32>(),
            parallel_for: dnc_parallel_for,
            pool: pool.as_abi_ptr(),
        };
        f(&cpu.library, &ctx)?;
        binding::copy_out(&m.output, arena.as_f32(), output);
        Ok(())
    }
}

fn check_len(what: &'static str, found: usize, shape: &[usize], expected: usize) -> Result<()> {
    if found != expected {
        return Err(Error::LengthMismatch {
            what,
            expected,
            found,
            shape: shape.to_vec(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse() {
        assert_eq!(
            Device::parse("cpu", 3).ok(),
            Some(Device::Cpu { threads: 3 })
        );
        assert_eq!(
            Device::parse("cuda", 3).ok(),
            Some(Device::Cuda { ordinal: 0 })
        );
        assert_eq!(
            Device::parse("cuda:2", 3).ok(),
            Some(Device::Cuda { ordinal: 2 })
        );
        for bad in ["gpu", "cuda:", "cuda:x", "cpu:1", ""] {
            let e = Device::parse(bad, 1).expect_err(bad).to_string();
            assert!(e.contains("expected cpu, cuda or cuda:ORDINAL"), "{e}");
        }
    }
}
