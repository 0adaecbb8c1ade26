//! `densenetc`: the command line of the DenseNet compiler (DESIGN §4).

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use compiler::builder::{self, ConfigOverrides, DenseNetConfig, Stem};
use compiler::{passes, weights};
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
    Run(RunArgs),
    /// Time a compiled artefact.
    Bench(BenchArgs),
}

#[derive(Args, Debug)]
struct CompileArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Code generation target: cpu (cuda is not wired into compile yet).
    #[arg(long, default_value = "cpu")]
    target: String,
    /// LLVM CPU: native (the host), x86-64-v3, znver3, skylake, …
    #[arg(long, default_value = "native")]
    cpu: String,
    /// Stop the pass pipeline after this pass.
    #[arg(long, value_name = "PASS")]
    stop_after: Option<String>,
    /// Class names, one per line, stored in the artefact.
    #[arg(long, value_name = "FILE")]
    labels: Option<PathBuf>,
    /// The artefact to write.
    #[arg(short = 'o', long = "output", value_name = "OUT.dnc")]
    output: PathBuf,
    #[command(flatten)]
    dumps: DumpArgs,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// The artefact.
    artefact: PathBuf,
    /// Input tensor, .npy float32 NCHW.
    #[arg(long, required_unless_present = "random_input")]
    input: Option<PathBuf>,
    /// Use a deterministic uniform [-1, 1) random input instead of --input.
    #[arg(long, value_name = "SEED", conflicts_with = "input")]
    random_input: Option<u64>,
    /// Write the logits here (.npy).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Only cpu is supported by this runtime.
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Print the K highest-scoring classes of every image.
    #[arg(long, default_value_t = 5)]
    top: usize,
}

#[derive(Args, Debug)]
struct BenchArgs {
    /// The artefact.
    artefact: PathBuf,
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long, default_value_t = 50)]
    iters: usize,
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// Print a per-kernel time table.
    #[arg(long)]
    profile: bool,
}

/// Which DenseNet: a preset or a TOML file, plus overrides.
#[derive(Args, Debug)]
struct ModelArgs {
    /// A preset: densenet121|161|169|201, densenet-bc-100|250|190, densenet-40.
    #[arg(long, conflicts_with = "config")]
    arch: Option<String>,
    /// A TOML configuration file (an `arch` key plus overrides, see README).
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    growth_rate: Option<usize>,
    /// Layers per dense block, e.g. 6,12,24,16.
    #[arg(long, value_delimiter = ',')]
    block_config: Option<Vec<usize>>,
    #[arg(long)]
    init_features: Option<usize>,
    /// Bottleneck factor; 0 = plain BN-ReLU-3x3 layers.
    #[arg(long)]
    bn_size: Option<usize>,
    /// θ in (0, 1]: a transition outputs floor(C·θ) channels.
    #[arg(long)]
    compression: Option<f64>,
    #[arg(long)]
    num_classes: Option<usize>,
    #[arg(long)]
    in_channels: Option<usize>,
    #[arg(long)]
    stem: Option<Stem>,
    /// Every conv carries a bias.
    #[arg(long)]
    conv_bias: bool,
    /// Input height and width.
    #[arg(long)]
    image_size: Option<usize>,
    /// Batch size the model is compiled for.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Trained weights: a .safetensors file or a PyTorch .pth/.pt state dict.
    #[arg(long, conflicts_with = "random_weights")]
    weights: Option<PathBuf>,
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
                let o: ConfigOverrides = toml::from_str(&text)
                    .with_context(|| format!("parsing config file {}", path.display()))?;
                o
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

    fn graph(&self) -> Result<(DenseNetConfig, ir::Graph)> {
        let cfg = self.config()?;
        let mut g =
            builder::build(&cfg, self.batch).with_context(|| format!("building {}", cfg.name))?;
        if let Some(path) = &self.weights {
            let tensors = weights::read_tensors(path)?;
            weights::bind(&mut g, tensors)
                .with_context(|| format!("binding {} to {}", path.display(), cfg.name))?;
        } else if let Some(seed) = self.random_weights {
            weights::randomize(&mut g, seed);
        }
        Ok((cfg, g))
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
    /// Print the IR after this pass instead of the unoptimised IR.
    #[arg(long, value_name = "PASS")]
    after: Option<String>,
    /// Report the memory plan: arena, naive and lower-bound bytes, concat copies.
    #[arg(long)]
    memory: bool,
    /// Draw the memory plan (time × offset) as SVG.
    #[arg(long, value_name = "FILE")]
    memory_svg: Option<PathBuf>,
    /// Write the graph (after `--after`, else unoptimised) for Graphviz.
    #[arg(long, value_name = "FILE")]
    dot: Option<PathBuf>,
    #[command(flatten)]
    dumps: DumpArgs,
}

/// Where to write the IR after every pass.
#[derive(Args, Debug)]
struct DumpArgs {
    /// Write `NN-after-<pass>.ir` for every pass into DIR.
    #[arg(long, value_name = "DIR")]
    dump_dir: Option<PathBuf>,
}

/// Run the pass pipeline up to `stop_after` (all passes when `None`),
/// writing the IR after every pass into the dump directory if one is set.
fn optimise(
    g: &mut ir::Graph,
    stop_after: Option<&str>,
    dumps: &DumpArgs,
) -> Result<passes::PipelineReport> {
    if let Some(name) = stop_after {
        passes::check_pass_name(name)?;
    }
    let mut dump_error: Option<anyhow::Error> = None;
    let mut write_dump = |i: usize, pass: &str, g: &ir::Graph| {
        if let Some(dir) = &dumps.dump_dir {
            let path = dir.join(format!("{i:02}-after-{pass}.ir"));
            if let Err(e) = std::fs::write(&path, ir::text::print(g)) {
                dump_error.get_or_insert(
                    anyhow::Error::new(e).context(format!("writing {}", path.display())),
                );
            }
        }
    };
    if let Some(dir) = &dumps.dump_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join("00-input.ir");
        std::fs::write(&path, ir::text::print(g))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let report = passes::run_pipeline(
        g,
        &mut passes::PipelineOptions {
            stop_after: stop_after.map(str::to_owned),
            dump: Some(&mut write_dump),
            ..Default::default()
        },
    )?;
    match dump_error {
        Some(e) => Err(e),
        None => Ok(report),
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Inspect(a) => match &a.artefact {
            Some(path) => inspect_artefact(path, a.json),
            None => inspect(&a),
        },
        Command::Compile(a) => compile(&a),
        Command::Run(a) => run(&a),
        Command::Bench(a) => bench(&a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn inspect(a: &InspectArgs) -> Result<()> {
    let (cfg, g) = a.model.graph()?;
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
    if a.memory {
        let _ = writeln!(text, "arena bytes:   {}", memory.arena_bytes);
        let _ = writeln!(text, "lower bound:   {}", memory.lower_bound_bytes);
        let _ = writeln!(text, "naive bytes:   {}", memory.naive_bytes);
        let _ = writeln!(text, "concat copies: {}", memory.concat_copies);
    }
    emit(&text)
}

/// Write to stdout; a closed pipe (`densenetc inspect … | head`) is not an error.
fn emit(text: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

fn compile(a: &CompileArgs) -> Result<()> {
    let start = std::time::Instant::now();
    match a.target.as_str() {
        "cpu" => {}
        "cuda" | "cpu,cuda" | "cuda,cpu" => {
            bail!("the CUDA target is not wired into compile yet; use --target cpu")
        }
        t => bail!("unknown target '{t}': expected cpu, cuda or cpu,cuda"),
    }
    if a.model.weights.is_none() && a.model.random_weights.is_none() {
        bail!("compile needs weights: pass --weights FILE or --random-weights SEED");
    }
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
    let (cfg, mut g) = a.model.graph()?;
    eprintln!(
        "densenetc: optimising {} (batch {})…",
        cfg.name, a.model.batch
    );
    let report = optimise(&mut g, a.stop_after.as_deref(), &a.dumps)?;
    let gk = compiler::backend::graph::kernels_of(&g)
        .context("mapping the optimised graph to kernels (did --stop-after skip plan-memory?)")?;
    eprintln!(
        "densenetc: generating code for {} kernels (cpu {})…",
        gk.kernels.len(),
        a.cpu
    );
    let compiled = compiler::backend::cpu::compile(
        &gk.kernels,
        &compiler::backend::cpu::CpuOptions {
            cpu: a.cpu.clone(),
            live_out: gk.outputs.clone(),
            // An experiment knob, not part of the command-line contract.
            batch_tile_bytes: match std::env::var("DNC_BATCH_TILE_BYTES") {
                Ok(v) => v.parse().context("DNC_BATCH_TILE_BYTES")?,
                Err(_) => compiler::backend::cpu::schedule::DEFAULT_TILE_BYTES,
            },
            ..Default::default()
        },
    )?;
    if let Some(dir) = &a.dumps.dump_dir {
        compiled.dump(dir)?;
    }
    let writer = compiler::artefact::build_artefact(compiler::artefact::ArtefactParts {
        config: serde_json::to_value(&cfg)?,
        graph: &g,
        kernels: &gk,
        memory: report.memory.as_ref(),
        compiled: &compiled,
        labels,
    })?;
    let bytes = writer.to_bytes()?;
    std::fs::write(&a.output, &bytes).with_context(|| format!("writing {}", a.output.display()))?;
    emit(&format!(
        "compiled {} (batch {}, cpu {}) to {}: {} kernels, {} bytes, arena {} bytes, {:.2} s\n",
        cfg.name,
        a.model.batch,
        compiled.target.cpu,
        a.output.display(),
        compiled.kernels.len(),
        bytes.len(),
        compiled.arena_bytes.max(gk.arena_bytes),
        start.elapsed().as_secs_f64()
    ))
}

fn load_model(path: &std::path::Path) -> Result<runtime::Model> {
    // The runtime's errors already name the file; keep the message one line.
    runtime::Model::load(path).map_err(|e| anyhow::anyhow!("{e}"))
}

fn cpu_device(device: &str, threads: usize) -> Result<runtime::Device> {
    match device {
        "cpu" => Ok(runtime::Device::Cpu { threads }),
        "cuda" => bail!("the CUDA device is not supported by this runtime yet; use --device cpu"),
        d => bail!("unknown device '{d}': expected cpu or cuda"),
    }
}

fn run(a: &RunArgs) -> Result<()> {
    let device = cpu_device(&a.device, a.threads)?;
    if let Some(path) = &a.input {
        if path.extension().and_then(|e| e.to_str()) != Some("npy") {
            bail!(
                "{}: image input not supported yet; pass a .npy",
                path.display()
            );
        }
    }
    let model = load_model(&a.artefact)?;
    let input = match (&a.input, a.random_input) {
        (_, Some(seed)) => {
            ir::reference::Tensor::random_uniform(model.input_shape().to_vec(), seed, -1.0, 1.0)
        }
        (Some(path), None) => {
            ir::reference::npy::read(path).with_context(|| format!("reading {}", path.display()))?
        }
        (None, None) => bail!("no input: pass --input X.npy or --random-input SEED"),
    };
    let mut session = model.session(device)?;
    let logits = session.run(&input.data, &input.shape)?;
    let out_shape = model.output_shape().to_vec();
    if let Some(path) = &a.output {
        let t = ir::reference::Tensor::from_vec(out_shape.clone(), logits.clone())?;
        ir::reference::npy::write(path, &t)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let classes = out_shape.last().copied().unwrap_or(1).max(1);
    let labels = model.labels();
    let mut text = String::new();
    for (n, row) in logits.chunks(classes).enumerate() {
        let mut idx: Vec<usize> = (0..row.len()).collect();
        idx.sort_by(|&x, &y| row[y].total_cmp(&row[x]));
        let _ = writeln!(text, "image {n}:");
        for &c in idx.iter().take(a.top) {
            match labels.and_then(|l| l.get(c)) {
                Some(name) => {
                    let _ = writeln!(text, "  {c:6} {:12.6}  {name}", row[c]);
                }
                None => {
                    let _ = writeln!(text, "  {c:6} {:12.6}", row[c]);
                }
            }
        }
    }
    emit(&text)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn bench(a: &BenchArgs) -> Result<()> {
    let device = cpu_device(&a.device, a.threads)?;
    if a.iters == 0 {
        bail!("--iters must be at least 1");
    }
    let model = load_model(&a.artefact)?;
    let input = ir::reference::Tensor::random_uniform(model.input_shape().to_vec(), 0, -1.0, 1.0);
    let mut out = vec![0.0f32; model.output_shape().iter().product()];
    let mut session = model.session(device)?;
    for _ in 0..a.warmup {
        session.run_into(&input.data, &mut out)?;
    }
    let mut samples = Vec::with_capacity(a.iters);
    for _ in 0..a.iters {
        let t = std::time::Instant::now();
        session.run_into(&input.data, &mut out)?;
        samples.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let mut sorted = samples.clone();
    sorted.sort_by(f64::total_cmp);
    let median = percentile(&sorted, 0.5);
    let p90 = percentile(&sorted, 0.9);
    let min = sorted[0];
    let batch = model.manifest().batch;
    let mut profile = Vec::new();
    if a.profile {
        let times = session.run_profiled(&input.data, &mut out)?;
        let schedule = &model.manifest().schedule;
        for t in times {
            let k = schedule.get(t.index);
            profile.push((
                t.index,
                k.map_or("?".to_owned(), |k| k.name.clone()),
                k.map_or("?".to_owned(), |k| k.op.clone()),
                k.map_or(0, |k| k.macs),
                t.tasks,
                t.seconds * 1e3,
            ));
        }
    }
    if a.json {
        let mut v = serde_json::json!({
            "median_ms": median,
            "p90_ms": p90,
            "min_ms": min,
            "iters": a.iters,
            "warmup": a.warmup,
            "threads": a.threads,
            "batch": batch,
            "device": "cpu",
            "images_per_s": if median > 0.0 { batch as f64 * 1e3 / median } else { 0.0 },
            "samples_ms": samples,
        });
        if a.profile {
            v["profile"] = profile
                .iter()
                .map(|(i, name, op, macs, tasks, ms)| {
                    serde_json::json!({"index": i, "name": name, "op": op, "macs": macs, "tasks": tasks, "ms": ms})
                })
                .collect();
        }
        return emit(&format!("{}\n", serde_json::to_string(&v)?));
    }
    let mut text = format!(
        "{}: batch {batch}, {} threads, {} iters: median {median:.3} ms, p90 {p90:.3} ms, min {min:.3} ms ({:.1} images/s)\n",
        a.artefact.display(),
        a.threads,
        a.iters,
        if median > 0.0 { batch as f64 * 1e3 / median } else { 0.0 }
    );
    if a.profile {
        let total: f64 = profile.iter().map(|p| p.5).sum();
        let _ = writeln!(
            text,
            "{:>5} {:>10} {:>6} {:>7} {:>9} {:>8}  name",
            "#", "op", "tasks", "ms", "GMAC/s", "%"
        );
        for (i, name, op, macs, tasks, ms) in &profile {
            let gmacs = if *ms > 0.0 {
                *macs as f64 / (*ms * 1e6)
            } else {
                0.0
            };
            let pct = if total > 0.0 { 100.0 * ms / total } else { 0.0 };
            let _ = writeln!(
                text,
                "{i:>5} {op:>10} {tasks:>6} {ms:>7.3} {gmacs:>9.2} {pct:>7.1}%  {name}"
            );
        }
        let _ = writeln!(text, "total {total:.3} ms");
    }
    emit(&text)
}

fn inspect_artefact(path: &std::path::Path, json: bool) -> Result<()> {
    let a = runtime::Artefact::open(path).with_context(|| format!("reading {}", path.display()))?;
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
    let _ = writeln!(text, "arena bytes:   {}", m.memory.arena_bytes);
    let _ = writeln!(text, "naive bytes:   {}", m.memory.naive_bytes);
    let _ = writeln!(text, "lower bound:   {}", m.memory.lower_bound_bytes);
    if let Some(cpu) = &m.cpu {
        let _ = writeln!(
            text,
            "cpu:           {} (abi {}) features {}",
            cpu.cpu, cpu.abi_version, cpu.features
        );
    }
    if let Some(cuda) = &m.cuda {
        let _ = writeln!(text, "cuda:          {}", cuda.arch);
    }
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
