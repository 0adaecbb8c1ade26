//! Models and sessions: the runtime's Rust API.
//!
//! A [`Model`] is a validated artefact with its CPU code loaded; it is cheap to clone, `Send`
//! and `Sync`, and serves any number of [`Session`]s on any threads. A session owns what one
//! run mutates (its arena, allocated once, and its thread pool, started once), so sessions run
//! concurrently without locks; one session runs one inference at a time (`&mut self`).

use std::path::Path;
use std::sync::Arc;

use crate::abi::{DncContext, DNC_ABI_VERSION};
use crate::aligned::AlignedBuf;
use crate::artefact::{Artefact, Manifest, SectionKind};
use crate::error::{Error, Result};
#[cfg(unix)]
use crate::library::CpuLibrary;
use crate::pool::{dnc_parallel_for, ThreadPool};

/// Where a session runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// The CPU, on `threads` threads (the calling thread included; 0 = one per core).
    Cpu { threads: usize },
    /// The CUDA device with this ordinal.
    Cuda { ordinal: usize },
}

/// A loaded artefact, shareable between threads.
#[derive(Debug, Clone)]
pub struct Model {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    artefact: Artefact,
    #[cfg(unix)]
    cpu: Option<CpuLibrary>,
}

impl Model {
    /// Reads and validates the artefact at `path`, then loads its CPU code (if it has any).
    pub fn load(path: impl AsRef<Path>) -> Result<Model> {
        Model::from_artefact(Artefact::open(path.as_ref())?)
    }

    /// A model from an already validated artefact.
    pub fn from_artefact(artefact: Artefact) -> Result<Model> {
        #[cfg(unix)]
        let cpu = match &artefact.manifest().cpu {
            Some(target) => {
                if target.abi_version != DNC_ABI_VERSION {
                    return Err(Error::AbiVersion {
                        found: target.abi_version,
                        supported: DNC_ABI_VERSION,
                    });
                }
                let object = artefact.require(SectionKind::CpuSharedObject)?;
                Some(CpuLibrary::load(object, &target.entry)?)
            }
            None => None,
        };
        Ok(Model {
            inner: Arc::new(Inner {
                artefact,
                #[cfg(unix)]
                cpu,
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
            Device::Cuda { .. } => Err(Error::DeviceUnavailable(
                "CUDA: this runtime was built without CUDA support (the CUDA executor is not implemented yet)".into(),
            )),
        }
    }
}

/// One execution context of a model: an arena and a thread pool.
#[derive(Debug)]
pub struct Session {
    model: Model,
    arena: AlignedBuf,
    pool: ThreadPool,
}

impl Session {
    fn cpu(model: Model, threads: usize) -> Result<Session> {
        if model.manifest().cpu.is_none() {
            return Err(Error::DeviceUnavailable(
                "CPU: the artefact has no CPU code (compile it with --target cpu)".into(),
            ));
        }
        #[cfg(not(unix))]
        return Err(Error::DeviceUnavailable(
            "CPU: loading CPU code is only implemented on Unix".into(),
        ));
        // Validated by the manifest check: fits in isize.
        let arena_bytes = usize::try_from(model.manifest().memory.arena_bytes).map_err(|_| {
            Error::OutOfMemory {
                what: "arena",
                bytes: usize::MAX,
            }
        })?;
        let arena = AlignedBuf::zeroed(arena_bytes, "arena")?;
        let pool = ThreadPool::new(threads)?;
        Ok(Session { model, arena, pool })
    }

    /// The session's model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The device the session runs on.
    pub fn device(&self) -> Device {
        Device::Cpu {
            threads: self.pool.threads(),
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
        let mut output = vec![0f32; self.model.manifest().output.elements()];
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

    #[cfg(unix)]
    fn execute(&mut self, input: &[f32], output: &mut [f32]) -> Result<()> {
        let Some(cpu) = &self.model.inner.cpu else {
            return Err(Error::DeviceUnavailable(
                "CPU: the artefact has no CPU code".into(),
            ));
        };
        let weights = self
            .model
            .artefact()
            .section(SectionKind::Weights)
            .map_or(std::ptr::null(), |w| w.as_ptr().cast::<f32>());
        let ctx = DncContext {
            weights,
            arena: self.arena.as_mut_ptr().cast::<f32>(),
            input: input.as_ptr(),
            output: output.as_mut_ptr(),
            pool: self.pool.as_abi_ptr(),
            parallel_for: dnc_parallel_for,
        };
        // SAFETY: the context follows the ABI (crate::abi): weights is the 64-byte-aligned
        // weights section, kept alive by self.model; the arena has memory.arena_bytes bytes and
        // is exclusively ours (&mut self); input and output have the manifest's element counts
        // (checked above) and outlive the call; the pool is live and only this thread
        // dispatches on it. The code itself is trusted (see the crate docs).
        let status = unsafe { (cpu.entry())(&ctx) };
        if status != 0 {
            return Err(Error::Execution(status));
        }
        Ok(())
    }

    #[cfg(not(unix))]
    fn execute(&mut self, _input: &[f32], _output: &mut [f32]) -> Result<()> {
        Err(Error::DeviceUnavailable(
            "CPU: loading CPU code is only implemented on Unix".into(),
        ))
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
