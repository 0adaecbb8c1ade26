//! `densenetc-compiler`: every `densenetc` command (ARCHITECTURE.md, Command-line contract).
//! It links LLVM; the `densenetc` front binary hands it every command but `run` and `bench`,
//! which need only the runtime. Installed beside `densenetc`.

#[path = "shared/exec.rs"]
mod exec;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use compiler::builder::{ConfigOverrides, DenseNetConfig, Stem};
use compiler::driver::{self, CompileOptions, OptimizeOptions, Progress, Target, Weights};
use compiler::passes;
use exec::emit;
use std::fmt::Write as _;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "densenetc",
    version,
    about = "Ahead-of-time compiler for DenseNet"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print a model's IR and a summary (parameters, MACs, layers).
    Inspect(InspectArgs),
    /// Compile a DenseNet to a `.dnc` artefact.
    Compile(CompileArgs),
    /// Run a compiled artefact on an input.
    Run(exec::RunArgs),
    /// Time a compiled artefact.
    Bench(exec::BenchArgs),
}

#[derive(Args, Debug)]
struct CompileArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Code generation targets: cpu, cuda or cpu,cuda.
    #[arg(
        long,
        default_value = "cpu",
        value_delimiter = ',',
        value_name = "cpu|cuda|cpu,cuda"
    )]
    target: Vec<Target>,
    /// LLVM CPU(s) of the CPU code: native (the host), x86-64-v3, x86-64-v4, znver5,
    /// sapphirerapids, … A comma-separated list writes one code variant per CPU into the
    /// artefact (e.g. x86-64-v3,x86-64-v4: AVX2 and AVX-512 kernels); the runtime runs the best
    /// one the host supports (`run --cpu NAME` forces one).
    #[arg(
        long,
        default_value = "native",
        value_delimiter = ',',
        value_name = "CPU[,CPU...]"
    )]
    cpu: Vec<String>,
    /// CUDA architecture of the PTX (and cubin): sm_80, sm_86, sm_89, sm_90, …
    #[arg(long, default_value = "sm_80")]
    cuda_arch: String,
    /// Arithmetic of the conv and linear kernels, on every target: fp32 (f32 FMA, within 1e-4
    /// of the f32 reference) or bf16 (operands rounded to bf16, f32 sums and activations;
    /// logits within 3e-2 relative): on CUDA the tensor cores (mma.sync m16n8k8), on the CPU
    /// vdpbf16ps, which needs a CPU with AVX512_BF16 (Zen 4/5, Sapphire Rapids, …). CUDA also
    /// has tf32 (5e-3) and fp16 (5e-3; weights beyond ±65504 are refused, activations beyond
    /// it overflow), which need --target cuda.
    #[arg(long, default_value = "fp32", value_name = "fp32|tf32|fp16|bf16")]
    precision: compiler::backend::cuda::Precision,
    /// Stop the pass pipeline after this pass: the IR dumps are written (with --dump-dir), no
    /// artefact unless PASS is the last pass.
    #[arg(long, value_name = "PASS")]
    stop_after: Option<String>,
    /// Do not verify the IR after every pass (it is verified by default; the check costs well
    /// under 1% of a compile).
    #[arg(long)]
    no_verify: bool,
    /// Print the wall time of each compile stage (build, optimize, lower, codegen, artefact).
    #[arg(long)]
    timings: bool,
    /// Compile weights that hold NaN or infinite values (refused by default, naming the tensor
    /// and the first bad index).
    #[arg(long)]
    allow_nonfinite: bool,
    /// Class names, one per line, stored in the artefact.
    #[arg(long, value_name = "FILE")]
    labels: Option<PathBuf>,
    /// What the model outputs: logits (the classifier's output, the default), softmax, sigmoid
    /// (probabilities, fused after the classifier) or features (the pooled feature vector
    /// [N, C] before the classifier, for a backbone or embeddings). A checkpoint carrying
    /// torchxrayvision's `op_threshs` gets that model's own forward unless --head says
    /// otherwise: sigmoid, then each class rescaled so its threshold maps to 0.5 (`op-norm`).
    /// Every head works for both targets.
    #[arg(long, value_name = "logits|softmax|sigmoid|features")]
    head: Option<compiler::head::HeadKind>,
    /// Operating-point thresholds, one per class, for checkpoints that do not carry
    /// torchxrayvision's `op_threshs`: a .npy file or v1,v2,… (nan: that class outputs 0.5).
    /// Selects the op-norm head (sigmoid + operating-point normalisation).
    #[arg(long, value_name = "FILE.npy|v1,v2,...")]
    op_threshs: Option<String>,
    /// The artefact to write.
    #[arg(short = 'o', long = "output", value_name = "OUT.dnc")]
    output: PathBuf,
    #[command(flatten)]
    dumps: DumpArgs,
}

/// Which DenseNet: a preset or a TOML file, plus overrides.
#[derive(Args, Debug)]
struct ModelArgs {
    /// A preset: densenet121|161|169|201, densenet-bc-100|250|190, densenet-40.
    #[arg(long, conflicts_with = "config", value_name = "NAME")]
    arch: Option<String>,
    /// A TOML configuration file (an `arch` key plus overrides, see README).
    #[arg(long, value_name = "FILE.toml")]
    config: Option<PathBuf>,
    /// k: the channels each dense layer adds (32 for densenet121).
    #[arg(long, value_name = "K")]
    growth_rate: Option<usize>,
    /// Layers per dense block, e.g. 6,12,24,16.
    #[arg(long, value_delimiter = ',')]
    block_config: Option<Vec<usize>>,
    /// Channels out of the stem, into the first dense block (`num_init_features` in TOML;
    /// `init_features` is accepted there too).
    #[arg(long, value_name = "N")]
    init_features: Option<usize>,
    /// Bottleneck factor; 0 = plain BN-ReLU-3x3 layers.
    #[arg(long)]
    bn_size: Option<usize>,
    /// θ in (0, 1]: a transition outputs floor(C·θ) channels.
    #[arg(long)]
    compression: Option<f64>,
    /// Outputs of the classifier (1000 for the ImageNet presets, 10 for CIFAR).
    #[arg(long, value_name = "N")]
    num_classes: Option<usize>,
    /// Channels of the input image (3 for RGB; anything else takes only .npy inputs).
    #[arg(long, value_name = "N")]
    in_channels: Option<usize>,
    /// The layers before the first dense block: imagenet (7x7/2 conv, BN, ReLU, 3x3/2 max
    /// pool, as torchvision) or cifar (one 3x3/1 conv, as the paper's CIFAR models).
    #[arg(long, value_name = "imagenet|cifar")]
    stem: Option<Stem>,
    /// Every conv carries a bias.
    #[arg(long)]
    conv_bias: bool,
    /// Input height and width.
    #[arg(long)]
    image_size: Option<usize>,
    /// Batch size the model is compiled for (the arena grows with it; a batch whose arena
    /// exceeds this machine's memory is a warning at compile time and an error at run time).
    #[arg(long, default_value_t = 1, value_name = "N")]
    batch: usize,
    /// Trained weights: a PyTorch checkpoint (torch.save, zip or legacy format: a state dict, a
    /// training checkpoint holding one, or a whole pickled model) or a safetensors file,
    /// recognised by its bytes whatever its extension. The network is found in it (inspect
    /// --weights shows where).
    #[arg(long, conflicts_with = "random_weights")]
    weights: Option<PathBuf>,
    /// Where the network is in the checkpoint, when several fit: the path of its state dict or
    /// module, keys joined by `.` (`state_dict`, `ema_state_dict`, `model.ema`; `.` for the top
    /// level), as `inspect --weights` prints it.
    #[arg(long, value_name = "PATH", requires = "weights")]
    weights_key: Option<String>,
    /// The prefix to strip from the checkpoint's tensor names (`module.`, `model.`), when
    /// several fit; tensors outside it are ignored.
    #[arg(long, value_name = "P", requires = "weights")]
    weights_prefix: Option<String>,
    /// Deterministic random weights (with non-trivial BatchNorm statistics).
    #[arg(long, value_name = "SEED")]
    random_weights: Option<u64>,
}

impl ModelArgs {
    fn config(&self) -> Result<DenseNetConfig> {
        let mut o = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config file {}", path.display()))?;
                // One line: the TOML crate's own message draws the source over several.
                toml::from_str::<ConfigOverrides>(&text).map_err(|e| {
                    let line = e.span().map_or(0, |r| {
                        text[..r.start.min(text.len())].lines().count().max(1)
                    });
                    anyhow::anyhow!(
                        "config file {}, line {line}: {}",
                        path.display(),
                        e.message().trim()
                    )
                })?
            }
            None => ConfigOverrides::default(),
        };
        if self.arch.is_none() && self.config.is_none() {
            bail!("no model given: use --arch NAME or --config FILE");
        }
        if let Some(a) = &self.arch {
            o.arch = Some(a.clone());
        }
        let set = |dst: &mut Option<usize>, v: Option<usize>| {
            if v.is_some() {
                *dst = v;
            }
        };
        set(&mut o.growth_rate, self.growth_rate);
        set(&mut o.num_init_features, self.init_features);
        set(&mut o.bn_size, self.bn_size);
        set(&mut o.num_classes, self.num_classes);
        set(&mut o.in_channels, self.in_channels);
        set(&mut o.image_size, self.image_size);
        if let Some(b) = &self.block_config {
            o.block_config = Some(b.clone());
        }
        if let Some(c) = self.compression {
            o.compression = Some(c);
        }
        if let Some(s) = self.stem {
            o.stem = Some(s);
        }
        if self.conv_bias {
            o.conv_bias = Some(true);
        }
        // A config file without `arch` describes a custom model in full;
        // unspecified keys default to densenet121's.
        Ok(DenseNetConfig::resolve(Some("densenet121"), &o)?)
    }

    /// The weights named on the command line, if any.
    fn weights(&self) -> Option<Weights> {
        match (&self.weights, self.random_weights) {
            (Some(path), _) => Some(match self.weights_choice() {
                c if c == compiler::weights::Choice::default() => Weights::File(path.clone()),
                c => Weights::FileChoice(path.clone(), c),
            }),
            (None, Some(seed)) => Some(Weights::Random(seed)),
            (None, None) => None,
        }
    }

    /// `--weights-key` and `--weights-prefix`.
    fn weights_choice(&self) -> compiler::weights::Choice {
        compiler::weights::Choice {
            key: self.weights_key.clone(),
            prefix: self.weights_prefix.clone(),
        }
    }

    /// The graph, with the weights bound if any were given (`inspect` works on shapes alone),
    /// and for `--weights FILE` what was found where in the file.
    fn graph(&self) -> Result<(DenseNetConfig, ir::Graph, Option<compiler::weights::Loaded>)> {
        let cfg = self.config()?;
        let building = || format!("building {}", cfg.name);
        if let Some(path) = &self.weights {
            driver::check_limits(&cfg, self.batch).with_context(building)?;
            let mut g = compiler::builder::build(&cfg, self.batch).with_context(building)?;
            let loaded = compiler::weights::load(&mut g, path, &self.weights_choice())
                .with_context(building)?;
            return Ok((cfg, g, Some(loaded)));
        }
        let g = match self.weights() {
            Some(w) => driver::build(&cfg, self.batch, &w),
            None => compiler::builder::build(&cfg, self.batch).map_err(Into::into),
        }
        .with_context(building)?;
        Ok((cfg, g, None))
    }
}

#[derive(Args, Debug)]
struct InspectArgs {
    /// A compiled artefact (`OUT.dnc`) instead of a model description.
    #[arg(value_name = "OUT.dnc", conflicts_with_all = ["arch", "config"])]
    artefact: Option<PathBuf>,
    #[command(flatten)]
    model: ModelArgs,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Print only the summary, not the IR.
    #[arg(long)]
    summary: bool,
    /// Print the IR after this pass instead of the unoptimised IR. Needs a model.
    #[arg(long, value_name = "PASS")]
    after: Option<String>,
    /// Report the memory plan: arena (activations only: the input is the caller's, so an
    /// artefact's arena, which holds it too, is larger), naive and lower-bound bytes, concat
    /// copies.
    #[arg(long)]
    memory: bool,
    /// Draw the memory plan as SVG: one rectangle per tensor, schedule steps across, arena
    /// offset up, with a legend and ticks on both axes. Needs a model (--arch or --config).
    #[arg(long, value_name = "FILE")]
    memory_svg: Option<PathBuf>,
    /// Write the graph (after `--after`, else unoptimised) for Graphviz. Needs a model.
    #[arg(long, value_name = "FILE")]
    dot: Option<PathBuf>,
    #[command(flatten)]
    dumps: DumpArgs,
}

/// Where to write the IR after every pass.
#[derive(Args, Debug)]
struct DumpArgs {
    /// Write into DIR (created if need be) `00-input.ir` and `NN-after-<pass>.ir` after every
    /// pass; `compile` also writes `cpu-before-opt.ll`, `cpu-after-opt.ll` and
    /// `cpu-kernels.txt`, and with a CUDA target `cuda.ll`, `cuda.ptx` and `cuda-launches.txt`.
    #[arg(long, value_name = "DIR")]
    dump_dir: Option<PathBuf>,
}

/// The pipeline with the dump directory of `dumps`, verified.
fn optimise(
    g: &mut ir::Graph,
    stop_after: Option<&str>,
    dumps: &DumpArgs,
) -> Result<passes::PipelineReport> {
    Ok(driver::optimize(
        g,
        &OptimizeOptions {
            verify: true,
            stop_after: stop_after.map(str::to_owned),
            dump_dir: dumps.dump_dir.clone(),
            progress: None,
        },
    )?)
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Inspect(a) => match &a.artefact {
            Some(path) => graph_only_flags(&a).and_then(|()| inspect_artefact(path, a.json)),
            None => inspect(&a),
        },
        Command::Compile(a) => compile(&a),
        Command::Run(a) => exec::run(&a),
        Command::Bench(a) => exec::bench(&a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", exec::one_line(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// `inspect OUT.dnc` with a flag that needs the model's graph, which an artefact does not keep:
/// an error naming the flags, rather than a silent success.
fn graph_only_flags(a: &InspectArgs) -> Result<()> {
    let m = &a.model;
    let given: Vec<&str> = [
        ("--memory-svg", a.memory_svg.is_some()),
        ("--dot", a.dot.is_some()),
        ("--after", a.after.is_some()),
        ("--summary", a.summary),
        ("--dump-dir", a.dumps.dump_dir.is_some()),
        ("--weights", m.weights.is_some()),
        ("--random-weights", m.random_weights.is_some()),
        ("--growth-rate", m.growth_rate.is_some()),
        ("--block-config", m.block_config.is_some()),
        ("--init-features", m.init_features.is_some()),
        ("--bn-size", m.bn_size.is_some()),
        ("--compression", m.compression.is_some()),
        ("--num-classes", m.num_classes.is_some()),
        ("--in-channels", m.in_channels.is_some()),
        ("--stem", m.stem.is_some()),
        ("--conv-bias", m.conv_bias),
        ("--image-size", m.image_size.is_some()),
        ("--batch", m.batch != 1),
    ]
    .into_iter()
    .filter_map(|(flag, on)| on.then_some(flag))
    .collect();
    if !given.is_empty() {
        bail!(
            "{} need{} a model (--arch NAME or --config FILE), not an artefact: an artefact keeps \
             no graph (`inspect OUT.dnc` prints its manifest, memory plan included)",
            given.join(", "),
            if given.len() == 1 { "s" } else { "" }
        );
    }
    Ok(())
}

fn inspect(a: &InspectArgs) -> Result<()> {
    let (cfg, g, loaded) = a.model.graph()?;
    let s = ir::stats::stats(&g);
    // The full pipeline gives the optimised MACs and the memory plan; the
    // graph shown is the unoptimised one unless `--after` names a pass.
    let mut optimised = g.clone();
    let report = optimise(&mut optimised, None, &a.dumps)?;
    let shown = match &a.after {
        Some(pass) => {
            let mut h = g.clone();
            optimise(&mut h, Some(pass), &DumpArgs { dump_dir: None })?;
            h
        }
        None => g.clone(),
    };
    let memory = report
        .memory
        .as_ref()
        .context("the pipeline did not produce a memory plan")?;
    if let Some(path) = &a.dot {
        std::fs::write(path, compiler::dot::to_dot(&shown))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &a.memory_svg {
        std::fs::write(path, compiler::memory::svg_of(&optimised)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if a.json {
        let mut out = serde_json::json!({
            "name": cfg.name,
            "config": cfg,
            "batch": a.model.batch,
            "params": s.params,
            "macs": s.macs,
            "conv_layers": s.conv_layers,
            "linear_layers": s.linear_layers,
            "nodes": g.node_count(),
            "weights_bound": g.is_bound(),
            "macs_optimized": report.macs_optimized(),
            "passes": passes::PASSES,
        });
        if let (Some(l), Some(o)) = (&loaded, out.as_object_mut()) {
            o.insert("weights".into(), found_json(l));
        }
        if a.memory {
            let m = serde_json::to_value(memory)?;
            if let (Some(o), Some(m)) = (out.as_object_mut(), m.as_object()) {
                o.extend(m.clone());
            }
        }
        return emit(&format!("{}\n", serde_json::to_string_pretty(&out)?));
    }
    let mut text = String::new();
    if !a.summary {
        text.push_str(&ir::text::print(&shown));
    }
    let _ = writeln!(text, "model:         {}", cfg.name);
    let _ = writeln!(
        text,
        "config:        k={} blocks={:?} init={} bn_size={} θ={} classes={} stem={} image={} in_channels={} conv_bias={}",
        cfg.growth_rate,
        cfg.block_config,
        cfg.num_init_features,
        cfg.bn_size,
        cfg.compression,
        cfg.num_classes,
        cfg.stem,
        cfg.image_size,
        cfg.in_channels,
        cfg.conv_bias
    );
    let _ = writeln!(text, "batch:         {}", a.model.batch);
    let _ = writeln!(text, "params:        {}", s.params);
    let _ = writeln!(text, "macs:          {}", s.macs);
    let _ = writeln!(text, "macs (opt):    {}", report.macs_optimized());
    let _ = writeln!(text, "conv layers:   {}", s.conv_layers);
    let _ = writeln!(text, "linear layers: {}", s.linear_layers);
    let _ = writeln!(text, "nodes:         {}", g.node_count());
    let _ = writeln!(
        text,
        "weights:       {}",
        if g.is_bound() {
            "bound"
        } else {
            "none (shapes only)"
        }
    );
    if let Some(l) = &loaded {
        // What was found where in the weights file (`--weights`).
        for line in l.found.to_string().lines() {
            let _ = writeln!(text, "  {line}");
        }
        if !l.bind.ignored.is_empty() {
            let _ = writeln!(
                text,
                "  ignored:  {} num_batches_tracked counters",
                l.bind.ignored.len()
            );
        }
        if !l.bind.renamed.is_empty() {
            let _ = writeln!(
                text,
                "  renamed:  {} tensors (e.g. `{}` as `{}`)",
                l.bind.renamed.len(),
                l.bind.renamed[0].0,
                l.bind.renamed[0].1
            );
        }
    }
    if a.memory {
        let _ = writeln!(
            text,
            "arena bytes:   {} (activations only; an artefact's arena also holds the input)",
            memory.arena_bytes
        );
        let _ = writeln!(text, "lower bound:   {}", memory.lower_bound_bytes);
        let _ = writeln!(text, "naive bytes:   {}", memory.naive_bytes);
        let _ = writeln!(text, "concat copies: {}", memory.concat_copies);
    }
    emit(&text)
}

/// `inspect --weights --json`: what was found where in the weights file.
fn found_json(l: &compiler::weights::Loaded) -> serde_json::Value {
    use compiler::weights::SourceKind;
    let f = &l.found;
    let (kind, class) = match &f.kind {
        SourceKind::StateDict => ("state_dict", None),
        SourceKind::Module { class } => ("module", Some(class.clone())),
        SourceKind::Flat => ("flat", None),
    };
    serde_json::json!({
        "format": f.format.to_string(),
        "path": f.path,
        "kind": kind,
        "class": class,
        "prefix": f.prefix,
        "tensors": f.tensors,
        "bound": l.bind.bound,
        "matched": f.matched,
        "ignored": f.ignored.iter().map(|i| serde_json::json!({
            "path": i.path, "tensors": i.tensors, "reason": i.reason,
        })).collect::<Vec<_>>(),
        "num_batches_tracked_ignored": l.bind.ignored.len(),
        "renamed": l.bind.renamed.len(),
    })
}

fn compile(a: &CompileArgs) -> Result<()> {
    let start = std::time::Instant::now();
    let weights = a
        .model
        .weights()
        .context("compile needs weights: pass --weights FILE or --random-weights SEED")?;
    let labels = match &a.labels {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading labels {}", path.display()))?;
            Some(
                text.lines()
                    .map(|l| l.trim().to_owned())
                    .filter(|l| !l.is_empty())
                    .collect::<Vec<_>>(),
            )
        }
        None => None,
    };
    let cfg = a.model.config()?;
    let mut opts = CompileOptions::for_targets(&a.target);
    opts.batch = a.model.batch;
    opts.precision = a.precision;
    opts.verify = !a.no_verify;
    opts.check_finite_weights = !a.allow_nonfinite;
    opts.dump_dir = a.dumps.dump_dir.clone();
    if labels.is_some() && a.head == Some(compiler::head::HeadKind::Features) {
        bail!("--labels names classes, but --head features outputs feature channels");
    }
    opts.labels = labels;
    opts.head = a.head;
    opts.op_threshs = match &a.op_threshs {
        Some(spec) => Some(compiler::head::parse_thresholds(spec).map_err(anyhow::Error::msg)?),
        None => None,
    };
    if !opts.cpus.is_empty() {
        let base = opts.cpus.remove(0);
        opts.cpus = a
            .cpu
            .iter()
            .map(|name| compiler::backend::cpu::CpuOptions {
                cpu: name.trim().to_owned(),
                ..base.clone()
            })
            .collect();
    }
    for cpu in &mut opts.cpus {
        // Experiment knobs, not part of the command-line contract.
        if let Ok(v) = std::env::var("DNC_CODEGEN_THREADS") {
            cpu.codegen_threads = v.parse().context("DNC_CODEGEN_THREADS")?;
        }
        if let Ok(v) = std::env::var("DNC_BATCH_TILE_BYTES") {
            cpu.batch_tile_bytes = v.parse().context("DNC_BATCH_TILE_BYTES")?;
        }
        if let Ok(v) = std::env::var("DNC_VECTOR_BITS") {
            cpu.vector_bits = Some(v.parse().context("DNC_VECTOR_BITS")?);
        }
        if std::env::var("DNC_TILE_HANDOFF").as_deref() == Ok("0") {
            cpu.tile_handoff = false;
        }
        if std::env::var("DNC_BF16_STORAGE").as_deref() == Ok("0") {
            cpu.bf16_storage = false;
        }
    }
    if let Some(cuda) = opts.cuda.as_mut() {
        cuda.arch = a.cuda_arch.clone();
    }
    let progress = |p: Progress<'_>| eprintln!("densenetc: {}…", p.message);
    opts.progress = Some(&progress);

    if let Some(pass) = a.stop_after.as_deref() {
        if passes::check_pass_name(pass)? + 1 < passes::PASSES.len() {
            let mut g = driver::build(&cfg, opts.batch, &weights)
                .with_context(|| format!("building {}", cfg.name))?;
            optimise(&mut g, Some(pass), &a.dumps)?;
            return emit(&format!(
                "stopped after pass {pass}{}; no artefact written\n",
                a.dumps
                    .dump_dir
                    .as_ref()
                    .map_or(String::new(), |d| format!(" (IR in {})", d.display()))
            ));
        }
    }
    let compiled = driver::compile(&cfg, &weights, &opts)
        .with_context(|| format!("compiling {}", cfg.name))?;
    if let Some(Err(why)) = &compiled.code.ptxas {
        eprintln!("densenetc: {why}");
    }
    if a.timings {
        for (stage, t) in &compiled.timings {
            eprintln!("densenetc: {stage:<9} {:8.3} s", t.as_secs_f64());
        }
    }
    // The compiler's error names the file already.
    let bytes = compiled.write(&a.output)?;
    let arena = compiled.manifest().memory.arena_bytes;
    if let Some(mem) = runtime::system::physical_memory_bytes().filter(|&m| arena > m) {
        eprintln!(
            "warning: the arena of {arena} bytes (batch {}) exceeds this machine's {mem} bytes of \
             memory: `densenetc run` will refuse it here; use a smaller --batch to run it on this machine",
            a.model.batch
        );
    }
    emit(&format!(
        "compiled {} (batch {}, {}) to {}: {}, {} bytes, arena {} bytes, {:.2} s\n",
        cfg.name,
        a.model.batch,
        opts.describe(),
        a.output.display(),
        compiled.summary(),
        bytes,
        arena,
        start.elapsed().as_secs_f64()
    ))
}

fn inspect_artefact(path: &std::path::Path, json: bool) -> Result<()> {
    let a = runtime::Artefact::open(path).map_err(|e| exec::naming(path, &e))?;
    let m = a.manifest();
    if json {
        let mut v = serde_json::to_value(m)?;
        v["format_version"] = a.format_version().into();
        v["file_bytes"] = a.file_len().into();
        v["sections"] = a
            .sections()
            .iter()
            .map(|s| {
                serde_json::json!({"kind": s.kind.to_string(), "offset": s.offset, "len": s.len, "checksum": format!("{:016x}", s.checksum)})
            })
            .collect();
        return emit(&format!("{}\n", serde_json::to_string_pretty(&v)?));
    }
    let mut text = String::new();
    let _ = writeln!(text, "artefact:      {}", path.display());
    let _ = writeln!(
        text,
        "format:        version {}, {} bytes",
        a.format_version(),
        a.file_len()
    );
    let _ = writeln!(text, "compiler:      {}", m.compiler_version);
    let _ = writeln!(text, "config:        {}", m.config);
    let _ = writeln!(text, "batch:         {}", m.batch);
    let _ = writeln!(
        text,
        "input:         {} {:?} {}",
        m.input.name, m.input.shape, m.input.dtype
    );
    let _ = writeln!(
        text,
        "output:        {} {:?} {}",
        m.output.name, m.output.shape, m.output.dtype
    );
    let _ = writeln!(
        text,
        "arena bytes:   {} (input and activations; `inspect --memory` counts activations only)",
        m.memory.arena_bytes
    );
    let _ = writeln!(text, "naive bytes:   {}", m.memory.naive_bytes);
    let _ = writeln!(text, "lower bound:   {}", m.memory.lower_bound_bytes);
    if let Some(cpu) = &m.cpu {
        if cpu.variants.is_empty() {
            let _ = writeln!(
                text,
                "cpu:           {} {} (abi {}) features {}",
                cpu.cpu, cpu.precision, cpu.abi_version, cpu.features
            );
        } else {
            let _ = writeln!(
                text,
                "cpu:           {} variants, {} (abi {}), the first this CPU supports runs:",
                cpu.variants.len(),
                cpu.precision,
                cpu.abi_version
            );
            for v in &cpu.variants {
                let _ = writeln!(
                    text,
                    "  {:<16} {:<7} code {:>9} bytes at {:>9}, weights {:>10} bytes at {:>10}{}",
                    v.cpu,
                    v.isa,
                    v.code.bytes,
                    v.code.offset,
                    v.weights.bytes,
                    v.weights.offset,
                    if v.features.is_empty() {
                        String::new()
                    } else {
                        format!(", features {}", v.features)
                    }
                );
            }
        }
    }
    if let Some(cuda) = &m.cuda {
        let _ = writeln!(
            text,
            "cuda:          {} {} ({} launches, launch table v{})",
            cuda.arch,
            cuda.precision,
            cuda.launches.len(),
            cuda.launch_version
        );
    }
    let _ = writeln!(
        text,
        "head:          {}",
        m.head.as_ref().map_or("logits".to_owned(), |h| format!(
            "{} ({} {})",
            h.kind,
            h.classes,
            if h.kind == "features" {
                "features"
            } else {
                "classes"
            }
        ))
    );
    let _ = writeln!(
        text,
        "labels:        {}",
        m.labels
            .as_ref()
            .map_or("none".to_owned(), |l| format!("{} names", l.len()))
    );
    let macs: u64 = m.schedule.iter().map(|k| k.macs).sum();
    let _ = writeln!(text, "kernels:       {} ({macs} MACs)", m.schedule.len());
    let _ = writeln!(text, "sections:");
    let _ = writeln!(
        text,
        "  {:<12} {:>12} {:>12}  xxh64",
        "kind", "offset", "bytes"
    );
    for s in a.sections() {
        let _ = writeln!(
            text,
            "  {:<12} {:>12} {:>12}  {:016x}",
            s.kind.to_string(),
            s.offset,
            s.len,
            s.checksum
        );
    }
    emit(&text)
}
