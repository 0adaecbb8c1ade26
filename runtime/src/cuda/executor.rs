//! The CUDA executor proper (the `cuda` cargo feature): [`DeviceModel`] and [`CudaSession`]
//! through cudarc's driver API. The module's overview is in `cuda/mod.rs`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use cudarc::driver::{
    sys, CudaContext, CudaFunction, CudaGraph, CudaModule, CudaSlice, CudaStream, DevicePtr,
    LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;

use super::driver::{cuda_err, guarded};
use crate::artefact::{Artefact, CudaArg, CudaTarget, SectionKind, TensorSpec};
use crate::binding;
use crate::error::{Error, Result};
use crate::profile::KernelTime;

/// `(major, minor)` of an `sm_NN` architecture name (validated by the manifest check).
fn arch_version(arch: &str) -> Option<(i32, i32)> {
    let digits = arch.strip_prefix("sm_")?;
    let n: i32 = digits
        .trim_end_matches(|c: char| c.is_ascii_alphabetic())
        .parse()
        .ok()?;
    Some((n / 10, n % 10))
}

/// A model's code and weights on one device, shared by its sessions there.
pub(crate) struct DeviceModel {
    pub(crate) ordinal: usize,
    name: String,
    ctx: Arc<CudaContext>,
    _module: Arc<CudaModule>,
    /// One per launch of the table.
    functions: Vec<CudaFunction>,
    weights: CudaSlice<u8>,
    /// `cubin` or `ptx`: what the module was loaded from.
    image: &'static str,
}

impl std::fmt::Debug for DeviceModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceModel")
            .field("ordinal", &self.ordinal)
            .field("name", &self.name)
            .field("image", &self.image)
            .field("functions", &self.functions.len())
            .field("weight_bytes", &self.weights.len())
            .finish()
    }
}

impl DeviceModel {
    /// Loads `artefact`'s CUDA code and weights onto device `ordinal`.
    pub(crate) fn load(artefact: &Artefact, target: &CudaTarget, ordinal: usize) -> Result<Self> {
        guarded("loading the model", || {
            Self::load_inner(artefact, target, ordinal)
        })
    }

    fn load_inner(artefact: &Artefact, target: &CudaTarget, ordinal: usize) -> Result<Self> {
        let count = CudaContext::device_count().map_err(cuda_err("counting devices"))?;
        if usize::try_from(count).map_or(true, |c| ordinal >= c) {
            return Err(Error::DeviceUnavailable(format!(
                "CUDA: device {ordinal} requested, {count} present"
            )));
        }
        let ctx = CudaContext::new(ordinal).map_err(cuda_err("creating the context"))?;
        let name = ctx.name().map_err(cuda_err("reading the device name"))?;
        let have = ctx
            .compute_capability()
            .map_err(cuda_err("reading the compute capability"))?;
        let want = arch_version(&target.arch).ok_or_else(|| Error::Cuda {
            what: "reading the target",
            message: format!("bad architecture `{}`", target.arch),
        })?;
        if have < want {
            return Err(Error::DeviceUnavailable(format!(
                "CUDA: the code targets {} but device {ordinal} ({name}) is sm_{}{}; recompile \
                 with --cuda-arch sm_{}{}",
                target.arch, have.0, have.1, have.0, have.1
            )));
        }
        let ptx = artefact.require(SectionKind::Ptx)?;
        let ptx = std::str::from_utf8(ptx).map_err(|e| Error::Cuda {
            what: "reading the PTX",
            message: e.to_string(),
        })?;
        // A cubin runs only on the architecture it was assembled for; the PTX is JIT-compiled
        // by the driver for any newer one.
        let cubin = artefact
            .section(SectionKind::Cubin)
            .filter(|_| have == want);
        let (module, image) = match cubin {
            Some(bin) => match ctx.load_module(Ptx::from_binary(bin.to_vec())) {
                Ok(m) => (m, "cubin"),
                Err(_) => (load_ptx(&ctx, ptx)?, "ptx"),
            },
            None => (load_ptx(&ctx, ptx)?, "ptx"),
        };
        let mut by_name: HashMap<&str, CudaFunction> = HashMap::new();
        let mut functions = Vec::with_capacity(target.launches.len());
        for l in &target.launches {
            let f = match by_name.get(l.entry.as_str()) {
                Some(f) => f.clone(),
                None => {
                    let f = module
                        .load_function(&l.entry)
                        .map_err(cuda_err("looking up a kernel"))?;
                    by_name.insert(&l.entry, f.clone());
                    f
                }
            };
            functions.push(f);
        }
        let section = artefact.require(SectionKind::Weights)?;
        // Validated by the manifest check: the range lies inside the section.
        let range =
            target.weights.offset as usize..(target.weights.offset + target.weights.bytes) as usize;
        let bytes = &section[range];
        let stream = ctx.new_stream().map_err(cuda_err("creating a stream"))?;
        let mut weights = stream
            .alloc_zeros::<u8>(bytes.len().max(256))
            .map_err(cuda_err("allocating the weights"))?;
        if !bytes.is_empty() {
            stream
                .memcpy_htod(bytes, &mut weights.slice_mut(..bytes.len()))
                .map_err(cuda_err("uploading the weights"))?;
        }
        // Sessions read the weights through raw pointers on their own streams.
        stream
            .synchronize()
            .map_err(cuda_err("uploading the weights"))?;
        Ok(DeviceModel {
            ordinal,
            name,
            ctx,
            _module: module,
            functions,
            weights,
            image,
        })
    }
}

fn load_ptx(ctx: &Arc<CudaContext>, ptx: &str) -> Result<Arc<CudaModule>> {
    ctx.load_module(Ptx::from_src(ptx))
        .map_err(cuda_err("loading the PTX (JIT compilation by the driver)"))
}

/// A captured launch sequence.
struct Graph(CudaGraph);

// SAFETY: a graph is only used through `&mut CudaSession` (never from two threads at once),
// which is what the driver requires of graph objects; the handles are not thread-bound.
unsafe impl Send for Graph {}

enum GraphState {
    /// Graphs turned off.
    Off,
    /// Capture at the next run (after one plain run).
    Pending {
        plain_runs: u32,
    },
    Ready(Graph),
    /// Capture failed: plain launches from now on; the reason is kept for `Debug`.
    Failed(String),
}

/// A kernel argument as passed to the driver: the parameter's `.u64` or `.u32` value.
#[derive(Debug, Clone, Copy)]
enum KernelArg {
    Pointer(u64),
    U32(u32),
}

/// One session's device state.
pub(crate) struct CudaSession {
    dev: Arc<DeviceModel>,
    stream: Arc<CudaStream>,
    arena: CudaSlice<f32>,
    /// The kernel arguments of every launch.
    args: Vec<Vec<KernelArg>>,
    configs: Vec<LaunchConfig>,
    /// The launch table's `kernel` of each launch (for profiles).
    kernels: Vec<usize>,
    input: TensorSpec,
    output: TensorSpec,
    staging: Vec<f32>,
    graph: GraphState,
}

impl std::fmt::Debug for CudaSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let graph = match &self.graph {
            GraphState::Off => "off".to_owned(),
            GraphState::Pending { .. } => "pending".to_owned(),
            GraphState::Ready(_) => "captured".to_owned(),
            GraphState::Failed(why) => format!("failed: {why}"),
        };
        f.debug_struct("CudaSession")
            .field("device", &self.dev)
            .field("arena_floats", &self.arena.len())
            .field("launches", &self.configs.len())
            .field("graph", &graph)
            .finish()
    }
}

/// The span `[first, end)` (in f32 elements) of a tensor's arena view, and the view relative
/// to it.
fn span(spec: &TensorSpec) -> (usize, usize, TensorSpec) {
    let first = (spec.view.offset / 4) as usize;
    // Validated by the manifest check: the view fits the arena.
    let end = spec.view.end_bytes().map_or(0, |e| (e / 4) as usize);
    let mut rel = spec.clone();
    rel.view.offset = 0;
    (first, end, rel)
}

fn dense(spec: &TensorSpec) -> bool {
    spec.view.channel_offset == 0 && spec.view.pixel_stride == spec.view.channels
}

fn graphs_enabled_by_env() -> bool {
    std::env::var("DNC_CUDA_GRAPHS").map_or(true, |v| v != "0")
}

impl CudaSession {
    pub(crate) fn new(
        dev: Arc<DeviceModel>,
        target: &CudaTarget,
        arena_bytes: u64,
        input: &TensorSpec,
        output: &TensorSpec,
    ) -> Result<Self> {
        guarded("creating a session", || {
            Self::new_inner(dev, target, arena_bytes, input, output)
        })
    }

    fn new_inner(
        dev: Arc<DeviceModel>,
        target: &CudaTarget,
        arena_bytes: u64,
        input: &TensorSpec,
        output: &TensorSpec,
    ) -> Result<Self> {
        let stream = dev
            .ctx
            .new_stream()
            .map_err(cuda_err("creating a stream"))?;
        let floats = usize::try_from(arena_bytes.div_ceil(4))
            .map_err(|_| Error::OutOfMemory {
                what: "device arena",
                bytes: usize::MAX,
            })?
            .max(1);
        let arena = stream
            .alloc_zeros::<f32>(floats)
            .map_err(cuda_err("allocating the device arena"))?;
        let (w, a) = {
            let (w, _sync_w) = dev.weights.device_ptr(&stream);
            let (a, _sync_a) = arena.device_ptr(&stream);
            (w, a)
        };
        let args = target
            .launches
            .iter()
            .map(|l| {
                l.args
                    .iter()
                    .map(|arg| match *arg {
                        CudaArg::Weights { offset } => KernelArg::Pointer(w + offset),
                        CudaArg::Arena { offset } => KernelArg::Pointer(a + offset),
                        CudaArg::Scalar { value } => KernelArg::U32(value),
                    })
                    .collect()
            })
            .collect();
        let configs = target
            .launches
            .iter()
            .map(|l| LaunchConfig {
                grid_dim: (l.grid[0], l.grid[1], l.grid[2]),
                block_dim: (l.block[0], l.block[1], l.block[2]),
                shared_mem_bytes: l.dynamic_shared_bytes,
            })
            .collect();
        let (i0, i1, _) = span(input);
        let (o0, o1, _) = span(output);
        stream
            .synchronize()
            .map_err(cuda_err("allocating the device arena"))?;
        Ok(CudaSession {
            dev,
            stream,
            arena,
            args,
            configs,
            kernels: target.launches.iter().map(|l| l.kernel).collect(),
            input: input.clone(),
            output: output.clone(),
            // Sized by the manifest: an error, not an abort, when the host cannot hold it.
            staging: crate::system::try_zeroed((i1 - i0).max(o1 - o0), "CUDA staging buffer")?,
            graph: if graphs_enabled_by_env() {
                GraphState::Pending { plain_runs: 0 }
            } else {
                GraphState::Off
            },
        })
    }

    pub(crate) fn ordinal(&self) -> usize {
        self.dev.ordinal
    }

    pub(crate) fn set_graphs(&mut self, on: bool) {
        self.graph = if on {
            match std::mem::replace(&mut self.graph, GraphState::Off) {
                GraphState::Off => GraphState::Pending { plain_runs: 0 },
                other => other,
            }
        } else {
            GraphState::Off
        };
    }

    /// Whether the next runs replay a captured graph.
    pub(crate) fn graph_captured(&self) -> bool {
        matches!(self.graph, GraphState::Ready(_))
    }

    fn launch_all(&self) -> Result<()> {
        for i in 0..self.configs.len() {
            self.launch(i)?;
        }
        Ok(())
    }

    fn launch(&self, i: usize) -> Result<()> {
        let mut b = self.stream.launch_builder(&self.dev.functions[i]);
        for arg in &self.args[i] {
            match arg {
                KernelArg::Pointer(p) => b.arg(p),
                KernelArg::U32(v) => b.arg(v),
            };
        }
        // SAFETY: the entry's parameters are `args.len()` `.u64` device pointers and `.u32`
        // scalars, in the arguments' order and types (checked against the PTX by the manifest
        // check); each pointer points into the weights or this session's arena at an offset the
        // check bounded, and both buffers outlive the launch (the session holds them and
        // synchronises before returning). The kernels themselves are trusted code.
        unsafe { b.launch(self.configs[i]) }
            .map(|_| ())
            .map_err(cuda_err("launching a kernel"))
    }

    fn upload_input(&mut self, input: &[f32]) -> Result<()> {
        let (first, end, rel) = span(&self.input);
        let staging = &mut self.staging[..end - first];
        if !dense(&self.input) {
            // Other channels share the pixels: keep them.
            self.stream
                .memcpy_dtoh(&self.arena.slice(first..end), staging)
                .map_err(cuda_err("reading the input buffer"))?;
            self.stream
                .synchronize()
                .map_err(cuda_err("reading the input buffer"))?;
        }
        binding::copy_in(&rel, input, staging);
        self.stream
            .memcpy_htod(&*staging, &mut self.arena.slice_mut(first..end))
            .map_err(cuda_err("copying the input"))
    }

    fn download_output(&mut self, output: &mut [f32]) -> Result<()> {
        let (first, end, rel) = span(&self.output);
        let staging = &mut self.staging[..end - first];
        self.stream
            .memcpy_dtoh(&self.arena.slice(first..end), staging)
            .map_err(cuda_err("copying the output"))?;
        self.stream
            .synchronize()
            .map_err(cuda_err("running the kernels"))?;
        binding::copy_out(&rel, staging, output);
        Ok(())
    }

    /// One inference; lengths checked by the caller.
    pub(crate) fn run(&mut self, input: &[f32], output: &mut [f32]) -> Result<()> {
        guarded("running", || {
            self.upload_input(input)?;
            self.replay_or_launch()?;
            self.download_output(output)
        })
    }

    fn replay_or_launch(&mut self) -> Result<()> {
        if let GraphState::Pending { plain_runs } = self.graph {
            if plain_runs == 0 {
                self.graph = GraphState::Pending { plain_runs: 1 };
                return self.launch_all();
            }
            self.graph = match self.capture() {
                Ok(g) => GraphState::Ready(g),
                Err(e) => GraphState::Failed(e.to_string()),
            };
        }
        match &self.graph {
            GraphState::Ready(g) => g.0.launch().map_err(cuda_err("replaying the CUDA graph")),
            _ => self.launch_all(),
        }
    }

    fn capture(&self) -> Result<Graph> {
        self.stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(cuda_err("starting the graph capture"))?;
        let launched = self.launch_all();
        // End the capture in every case, so the stream leaves capture mode.
        let graph = self
            .stream
            .end_capture(sys::CUgraphInstantiate_flags(0))
            .map_err(cuda_err("ending the graph capture"));
        launched?;
        graph?.map(Graph).ok_or_else(|| Error::Cuda {
            what: "capturing a CUDA graph",
            message: "the capture is empty".into(),
        })
    }

    /// One inference, kernel by kernel, synchronising after each; `KernelTime::index` is the
    /// launch's schedule index and `tasks` its thread blocks.
    pub(crate) fn run_profiled(
        &mut self,
        input: &[f32],
        output: &mut [f32],
        launches: &[crate::artefact::CudaLaunch],
    ) -> Result<Vec<KernelTime>> {
        guarded("profiling", || {
            self.upload_input(input)?;
            self.stream
                .synchronize()
                .map_err(cuda_err("copying the input"))?;
            let mut times = Vec::with_capacity(self.configs.len());
            for (i, l) in launches.iter().enumerate().take(self.configs.len()) {
                let start = Instant::now();
                self.launch(i)?;
                self.stream
                    .synchronize()
                    .map_err(cuda_err("running a kernel"))?;
                times.push(KernelTime {
                    index: self.kernels[i],
                    tasks: i64::try_from(l.blocks()).unwrap_or(i64::MAX),
                    seconds: start.elapsed().as_secs_f64(),
                });
            }
            self.download_output(output)?;
            Ok(times)
        })
    }
}

impl Drop for CudaSession {
    fn drop(&mut self) {
        // Let queued work finish before the arena is freed; errors have no one to go to.
        let _ = guarded("closing a session", || {
            self.stream.synchronize().map_err(cuda_err("synchronising"))
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn architecture_versions() {
        assert_eq!(arch_version("sm_80"), Some((8, 0)));
        assert_eq!(arch_version("sm_90a"), Some((9, 0)));
        assert_eq!(arch_version("sm_86"), Some((8, 6)));
        assert_eq!(arch_version("compute_80"), None);
    }
}
