//! The one compile entry point: every front end (the `densenetc` command line, the tests, the
//! examples, any future binding) calls [`compile`] or [`compile_graph`], never the stages
//! below it one by one.
//!
//! ```text
//! DenseNetConfig + Weights ──[build]──▶ ir::Graph (weights bound)
//!   ──[optimize: pass pipeline, verifier after each pass]──▶ planned ir::Graph
//!   ──[lower: backend::graph::kernels_of]──▶ GraphKernels
//!   ──[codegen: targets::compile, each target on its own thread]──▶ CompiledTargets
//!   ──[artefact: artefact::build_artefact]──▶ Compiled (writes the .dnc bytes)
//! ```
//!
//! Each stage reports a [`Progress`] event when it starts and is timed ([`Compiled::timings`]).
//! The verifier runs after every pass unless [`CompileOptions::verify`] is off: on
//! DenseNet-201 it costs about 2 ms of a 1.1 s compile (the optimize stage takes 80 ms verified,
//! 78 ms not; medians of 8 interleaved `compile --timings` runs).

use crate::artefact::{build_artefact, ArtefactParts};
use crate::backend::cpu::CpuOptions;
use crate::backend::cuda::{CudaOptions, Precision};
use crate::backend::graph::{kernels_of, GraphKernels};
use crate::builder::{self, DenseNetConfig};
pub use crate::error::{ArtefactBuildError, CompileError};
pub use crate::head::HeadKind;
use crate::passes::{self, PipelineOptions, PipelineReport};
use crate::targets::{self, CompiledTargets, TargetOptions};
use crate::weights;
use ir::Graph;
use runtime::artefact::ArtefactWriter;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

/// A code generation target (`--target cpu`, `cuda`, `cpu,cuda`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    Cpu,
    Cuda,
}

impl FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "cpu" => Ok(Target::Cpu),
            "cuda" => Ok(Target::Cuda),
            other => Err(format!(
                "unknown target '{other}': expected cpu, cuda or cpu,cuda"
            )),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Target::Cpu => "cpu",
            Target::Cuda => "cuda",
        })
    }
}

/// Where the weights come from.
#[derive(Debug, Clone)]
pub enum Weights {
    /// A checkpoint (safetensors, a `torch.save` file in the zip or legacy format),
    /// recognised by its bytes; the network is found in it automatically ([`weights::load`]).
    File(PathBuf),
    /// A checkpoint whose network is where the [`weights::Choice`] says (`--weights-key`,
    /// `--weights-prefix`).
    FileChoice(PathBuf, weights::Choice),
    /// Deterministic random weights with non-trivial BatchNorm statistics.
    Random(u64),
    /// Tensors already in memory (e.g. handed over from a `torch.nn.Module` by the Python
    /// package), named as in a state dict; bound by [`weights::bind`].
    Tensors(weights::TensorMap),
}

/// A stage of a compile, as reported to [`CompileOptions::progress`] and timed in
/// [`Compiled::timings`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Building the graph and binding its weights.
    Build,
    /// The pass pipeline.
    Optimize,
    /// Mapping the planned graph to kernels.
    Lower,
    /// LLVM code generation for every target (and ptxas).
    Codegen,
    /// Assembling the artefact.
    Artefact,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Build => "build",
            Stage::Optimize => "optimize",
            Stage::Lower => "lower",
            Stage::Codegen => "codegen",
            Stage::Artefact => "artefact",
        })
    }
}

/// A progress event: a stage starts, with a line that says what it works on.
#[derive(Debug, Clone)]
pub struct Progress<'a> {
    pub stage: Stage,
    pub message: &'a str,
}

/// The progress callback.
pub type ProgressFn<'a> = &'a (dyn Fn(Progress<'_>) + Sync);

/// How to run the pass pipeline.
#[derive(Clone, Default)]
pub struct OptimizeOptions<'a> {
    /// Verify the IR before the first pass and after every pass (on for [`compile`]).
    pub verify: bool,
    /// Stop after this pass (a name from [`passes::PASSES`]).
    pub stop_after: Option<String>,
    /// Write `00-input.ir` and `NN-after-<pass>.ir` here.
    pub dump_dir: Option<PathBuf>,
    pub progress: Option<ProgressFn<'a>>,
}

impl fmt::Debug for OptimizeOptions<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OptimizeOptions")
            .field("verify", &self.verify)
            .field("stop_after", &self.stop_after)
            .field("dump_dir", &self.dump_dir)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

/// Everything [`compile`] needs besides the model.
#[derive(Clone)]
pub struct CompileOptions<'a> {
    /// Images per run.
    pub batch: usize,
    /// The CPU code variants to compile (`--cpu x86-64-v3,x86-64-v4`: one artefact that
    /// runs the best variant the host supports); empty if the CPU is not a target.
    pub cpus: Vec<CpuOptions>,
    /// The CUDA target and its options, if CUDA is a target.
    pub cuda: Option<CudaOptions>,
    /// Arithmetic of the convolution and linear kernels, on every target: fp32, bf16 (CUDA, and
    /// CPUs with AVX512_BF16), tf32 and fp16 (CUDA only). Overrides each `cpus` entry's own.
    pub precision: Precision,
    /// Assemble the PTX with ptxas when one is found.
    pub assemble_ptx: bool,
    /// Verify the IR after every pass (default: on).
    pub verify: bool,
    /// Write the IR after every pass and each target's code here (`--dump-dir`).
    pub dump_dir: Option<PathBuf>,
    /// Class names stored in the artefact.
    pub labels: Option<Vec<String>>,
    /// Refuse NaN and infinite weights, naming the tensor and the first bad index (default: on;
    /// `--allow-nonfinite` turns it off).
    pub check_finite_weights: bool,
    /// What the model outputs (`--head`); `None`: the checkpoint's own forward (sigmoid +
    /// operating-point normalisation when it carries torchxrayvision's `op_threshs` or
    /// [`CompileOptions::op_threshs`] is given), else the logits.
    pub head: Option<HeadKind>,
    /// Operating-point thresholds for checkpoints that do not carry them (`--op-threshs`).
    pub op_threshs: Option<Vec<f32>>,
    pub progress: Option<ProgressFn<'a>>,
}

impl Default for CompileOptions<'_> {
    fn default() -> Self {
        CompileOptions {
            batch: 1,
            cpus: vec![CpuOptions::default()],
            cuda: None,
            precision: Precision::Fp32,
            assemble_ptx: true,
            verify: true,
            dump_dir: None,
            labels: None,
            check_finite_weights: true,
            head: None,
            op_threshs: None,
            progress: None,
        }
    }
}

impl fmt::Debug for CompileOptions<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompileOptions")
            .field("batch", &self.batch)
            .field("cpus", &self.cpus)
            .field("cuda", &self.cuda)
            .field("precision", &self.precision)
            .field("assemble_ptx", &self.assemble_ptx)
            .field("verify", &self.verify)
            .field("dump_dir", &self.dump_dir)
            .field("labels", &self.labels.as_ref().map(Vec::len))
            .field("check_finite_weights", &self.check_finite_weights)
            .field("head", &self.head)
            .field("op_threshs", &self.op_threshs.as_ref().map(Vec::len))
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

impl CompileOptions<'_> {
    /// Options for a list of targets, each with its default options: the CPU for `native`, CUDA
    /// for `sm_80`.
    pub fn for_targets(targets: &[Target]) -> Self {
        CompileOptions {
            cpus: if targets.contains(&Target::Cpu) {
                vec![CpuOptions::default()]
            } else {
                Vec::new()
            },
            cuda: targets.contains(&Target::Cuda).then(CudaOptions::default),
            ..Default::default()
        }
    }

    /// `cpu x86-64-v3`, `cuda sm_80`, `cpu native + cuda sm_90 tf32`.
    pub fn describe(&self) -> String {
        self.target_options().describe()
    }

    fn target_options(&self) -> TargetOptions {
        TargetOptions {
            cpu: self
                .cpus
                .iter()
                .map(|c| CpuOptions {
                    precision: self.precision,
                    ..c.clone()
                })
                .collect(),
            cuda: self.cuda.clone().map(|c| CudaOptions {
                precision: self.precision,
                ..c
            }),
            assemble: self.assemble_ptx,
        }
    }

    fn check(&self) -> Result<(), CompileError> {
        if self.cpus.is_empty() && self.cuda.is_none() {
            return Err(CompileError::Options("no target to compile for".into()));
        }
        if !self.cpus.is_empty() && !self.precision.on_cpu() {
            return Err(CompileError::Options(format!(
                "--precision {} has no CPU kernels (the CPU computes fp32, or bf16 on CPUs with \
                 AVX512_BF16): use --target cuda",
                self.precision
            )));
        }
        Ok(())
    }
}

/// A compiled model: the planned graph, its kernels, each target's code and the artefact.
#[derive(Debug)]
pub struct Compiled {
    pub config: DenseNetConfig,
    /// The optimised, memory-planned graph.
    pub graph: Graph,
    pub report: PipelineReport,
    pub kernels: GraphKernels,
    /// Each target's code; the CPU variants' packed weights have moved into the artefact.
    pub code: CompiledTargets,
    /// Wall time of each stage, in order.
    pub timings: Vec<(Stage, Duration)>,
    artefact: ArtefactWriter,
}

impl Compiled {
    /// The artefact's bytes (what `densenetc compile -o` writes).
    pub fn to_bytes(&self) -> Result<Vec<u8>, CompileError> {
        Ok(self.artefact.to_bytes().map_err(ArtefactBuildError::from)?)
    }

    /// Writes the artefact to `path`; returns its size in bytes.
    /// Writes the artefact to `path`, streamed through a temporary file renamed into place;
    /// returns its size in bytes.
    pub fn write(&self, path: &Path) -> Result<usize, CompileError> {
        self.artefact.write(path).map_err(|e| match e {
            runtime::Error::Io { path, source } => CompileError::Write { path, source },
            runtime::Error::Artefact(e) => ArtefactBuildError::Format(e).into(),
            other => CompileError::Write {
                path: path.to_owned(),
                source: std::io::Error::other(other.to_string()),
            },
        })?;
        let len = std::fs::metadata(path).map_err(|source| CompileError::Write {
            path: path.to_owned(),
            source,
        })?;
        Ok(len.len() as usize)
    }

    /// The artefact's manifest.
    pub fn manifest(&self) -> &runtime::artefact::Manifest {
        self.artefact.manifest()
    }

    /// `127 kernels` / `…, 127 CUDA launches of 19 entries (PTX + cubin sm_80)`.
    pub fn summary(&self) -> String {
        self.code.summary()
    }
}

/// Builds `cfg` for `opts.batch` images with `weights` bound and compiles it ([`compile_graph`]).
pub fn compile(
    cfg: &DenseNetConfig,
    weights: &Weights,
    opts: &CompileOptions<'_>,
) -> Result<Compiled, CompileError> {
    opts.check()?;
    let start = Instant::now();
    notify(
        opts.progress,
        Stage::Build,
        &format!("building {}", cfg.name),
    );
    let (mut graph, carried) = build_carrying(cfg, opts.batch, weights)?;
    apply_head(&mut graph, opts.head, opts.op_threshs.clone(), carried)?;
    let built = start.elapsed();
    let mut compiled = compile_graph(cfg, graph, opts)?;
    compiled.timings.insert(0, (Stage::Build, built));
    Ok(compiled)
}

/// Builds the graph of `cfg` for `batch` images and binds `weights` to it. What exceeds a
/// limit of [`crate::limits`] is refused first, before anything is allocated.
pub fn build(cfg: &DenseNetConfig, batch: usize, weights: &Weights) -> Result<Graph, CompileError> {
    Ok(build_carrying(cfg, batch, weights)?.0)
}

/// [`build`], also returning the operating-point thresholds (torchxrayvision's `op_threshs`
/// buffer) the checkpoint carries beside the network, if any.
pub fn build_carrying(
    cfg: &DenseNetConfig,
    batch: usize,
    weights: &Weights,
) -> Result<(Graph, Option<Vec<f32>>), CompileError> {
    check_limits(cfg, batch)?;
    let mut g = builder::build(cfg, batch)?;
    let (path, choice) = match weights {
        Weights::File(path) => (path, weights::Choice::default()),
        Weights::FileChoice(path, choice) => (path, choice.clone()),
        Weights::Random(seed) => {
            weights::randomize(&mut g, *seed);
            return Ok((g, None));
        }
        Weights::Tensors(tensors) => {
            weights::bind(&mut g, tensors.clone())?;
            return Ok((g, None));
        }
    };
    let loaded = weights::load(&mut g, path, &choice)?;
    let carries = loaded
        .found
        .ignored
        .iter()
        .any(|i| i.path == crate::head::THRESHOLDS || i.path.ends_with(".op_threshs"));
    let thresholds = if carries {
        // Read again without a graph: the extras are then kept as tensors.
        let (tensors, _) = weights::read_checkpoint(path, None, &choice)?;
        tensors
            .iter()
            .find(|(k, _)| *k == crate::head::THRESHOLDS || k.ends_with(".op_threshs"))
            .and_then(|(_, t)| match &t.data {
                weights::TensorData::F32(v) => Some(v.clone()),
                weights::TensorData::Other { .. } => None,
            })
    } else {
        None
    };
    Ok((g, thresholds))
}

/// Puts the output head on a graph [`build_carrying`] made: `head` if given, else sigmoid +
/// operating-point normalisation when thresholds are `given` (`--op-threshs`) or `carried` by
/// the checkpoint, else the logits. Given thresholds win over carried ones.
pub fn apply_head(
    g: &mut Graph,
    head: Option<HeadKind>,
    given: Option<Vec<f32>>,
    carried: Option<Vec<f32>>,
) -> Result<(), CompileError> {
    let kind = head.unwrap_or(if given.is_some() || carried.is_some() {
        HeadKind::OpNorm
    } else {
        HeadKind::Logits
    });
    let thresholds = match kind {
        HeadKind::OpNorm => given.or(carried),
        _ => given,
    };
    crate::head::apply(g, kind, thresholds)
}

/// Compiles a graph whose weights are bound (as [`builder::build`] makes it, bound by
/// [`weights::bind`] or [`weights::randomize`]): the pass pipeline, kernels, each target's code
/// and the artefact.
pub fn compile_graph(
    cfg: &DenseNetConfig,
    mut graph: Graph,
    opts: &CompileOptions<'_>,
) -> Result<Compiled, CompileError> {
    opts.check()?;
    if opts.check_finite_weights {
        check_finite(&graph)?;
    }
    let mut timings = Vec::new();
    let mut clock = Instant::now();
    let mut lap = |stage: Stage, timings: &mut Vec<(Stage, Duration)>| {
        timings.push((stage, clock.elapsed()));
        clock = Instant::now();
    };
    let report = optimize(
        &mut graph,
        &OptimizeOptions {
            verify: opts.verify,
            stop_after: None,
            dump_dir: opts.dump_dir.clone(),
            progress: opts.progress,
        },
    )?;
    lap(Stage::Optimize, &mut timings);

    notify(
        opts.progress,
        Stage::Lower,
        "mapping the planned graph to kernels",
    );
    let kernels = kernels_of(&graph)?;
    lap(Stage::Lower, &mut timings);

    let mut targets = opts.target_options();
    for cpu in &mut targets.cpu {
        cpu.keep_ir |= opts.dump_dir.is_some();
    }
    notify(
        opts.progress,
        Stage::Codegen,
        &format!(
            "generating code for {} kernels ({})",
            kernels.kernels.len(),
            targets.describe()
        ),
    );
    let mut code = targets::compile(&kernels, &targets)?;
    if let Some(dir) = &opts.dump_dir {
        code.dump(dir)?;
    }
    lap(Stage::Codegen, &mut timings);

    notify(opts.progress, Stage::Artefact, "writing the artefact");
    let artefact = build_artefact(ArtefactParts {
        config: serde_json::to_value(cfg).map_err(ArtefactBuildError::from)?,
        graph: &graph,
        kernels: &kernels,
        memory: report.memory.as_ref(),
        code: &mut code,
        labels: opts.labels.clone(),
    })?;
    lap(Stage::Artefact, &mut timings);
    Ok(Compiled {
        config: cfg.clone(),
        graph,
        report,
        kernels,
        code,
        timings,
        artefact,
    })
}

/// Runs the pass pipeline on `g` (up to `stop_after`), writing the IR before the first pass
/// and after each pass into the dump directory if one is set.
pub fn optimize(g: &mut Graph, opts: &OptimizeOptions<'_>) -> Result<PipelineReport, CompileError> {
    if let Some(name) = &opts.stop_after {
        passes::check_pass_name(name)?;
    }
    notify(opts.progress, Stage::Optimize, "running the pass pipeline");
    let write = |path: PathBuf, g: &Graph| {
        std::fs::write(&path, ir::text::print(g))
            .map_err(|source| CompileError::Write { path, source })
    };
    if let Some(dir) = &opts.dump_dir {
        std::fs::create_dir_all(dir).map_err(|source| CompileError::Write {
            path: dir.clone(),
            source,
        })?;
        write(dir.join("00-input.ir"), g)?;
    }
    let mut dump_error = None;
    let mut dump = |i: usize, pass: &str, g: &Graph| {
        if let Some(dir) = &opts.dump_dir {
            if let Err(e) = write(dir.join(format!("{i:02}-after-{pass}.ir")), g) {
                dump_error.get_or_insert(e);
            }
        }
    };
    let pipeline_report = passes::run_pipeline(
        g,
        &mut PipelineOptions {
            stop_after: opts.stop_after.clone(),
            dump: Some(&mut dump),
            verify: opts.verify,
        },
    )?;
    match dump_error {
        Some(e) => Err(e),
        None => Ok(pipeline_report),
    }
}

/// Refuses `cfg` at `batch` if its estimate exceeds a limit of [`crate::limits`] (this
/// machine's memory included); what [`build`] checks first.
pub fn check_limits(cfg: &DenseNetConfig, batch: usize) -> Result<(), CompileError> {
    crate::limits::estimate(cfg, batch)?.check(runtime::system::physical_memory_bytes())
}

/// The first NaN or infinite value of a bound weight, as [`CompileError::NonFinite`].
pub fn check_finite(g: &Graph) -> Result<(), CompileError> {
    let nan_allowed = crate::head::nan_allowed(g);
    for (name, c) in &g.constants {
        if nan_allowed.contains(name) {
            continue;
        }
        let Some(data) = &c.data else { continue };
        if let Some(index) = data.iter().position(|v| !v.is_finite()) {
            return Err(CompileError::NonFinite {
                tensor: name.clone(),
                index,
                len: data.len(),
                value: data[index],
            });
        }
    }
    Ok(())
}

fn notify(progress: Option<ProgressFn<'_>>, stage: Stage, message: &str) {
    if let Some(f) = progress {
        f(Progress { stage, message });
    }
}
