//! `densenetc run` and `densenetc bench`: what executes an artefact, on the
//! runtime alone. Shared by both binaries (`#[path]`): the `densenetc` front
//! runs these without loading LLVM, `densenetc-compiler` offers them too.

use anyhow::{bail, Context, Result};
use clap::Args;
use std::fmt::Write as _;
use std::path::PathBuf;

#[derive(Args, Debug)]
#[command(group(
    clap::ArgGroup::new("source")
        .required(true)
        .args(["input", "random_input"])
))]
pub struct RunArgs {
    /// The artefact.
    artefact: PathBuf,
    /// Input: a .npy float32 NCHW tensor, or a PNG/JPEG image (recognised by its bytes),
    /// preprocessed as torchvision's ImageNet eval transform: RGB, Resize(256) (bilinear,
    /// antialiased, as Pillow), CenterCrop(224), /255, Normalize(ImageNet mean, std). For an
    /// artefact compiled at image size S: Resize(round(S·256/224)), CenterCrop(S). The image fills
    /// every item of the batch; models with in_channels ≠ 3 take only .npy.
    #[arg(long, value_name = "X.npy|IMAGE")]
    input: Option<PathBuf>,
    /// Use a deterministic uniform [-1, 1) random input instead of --input (one of the two is
    /// required).
    #[arg(long, value_name = "SEED")]
    random_input: Option<u64>,
    /// Write the logits here (.npy, float32 [N, classes]).
    #[arg(long, value_name = "Y.npy")]
    output: Option<PathBuf>,
    /// Where to run: cpu, cuda or cuda:ORDINAL (CUDA needs an artefact compiled with --target
    /// cuda or cpu,cuda and the NVIDIA driver).
    #[arg(long, default_value = "cpu", value_name = "cpu|cuda[:N]")]
    device: String,
    /// Run the artefact's CPU code variant for this CPU (one of the names its `compile --cpu`
    /// listed; `inspect` shows them) instead of the best one this CPU supports.
    #[arg(long, value_name = "NAME")]
    cpu: Option<String>,
    /// CPU worker threads, the calling thread included; 0 means one per core of this machine.
    #[arg(long, default_value_t = 1, value_name = "N")]
    threads: usize,
    /// Print the K highest-scoring classes of every image (NaN scores are not ranked). Artefacts
    /// compiled with a softmax/sigmoid head print probabilities; a sigmoid (multi-label) head
    /// also prints every class above 0.5.
    #[arg(long, default_value_t = 5, value_name = "K")]
    top: usize,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// The artefact.
    artefact: PathBuf,
    /// Where to run: cpu, cuda or cuda:ORDINAL (CUDA needs an artefact compiled with --target
    /// cuda or cpu,cuda and the NVIDIA driver).
    #[arg(long, default_value = "cpu", value_name = "cpu|cuda[:N]")]
    device: String,
    /// Run the artefact's CPU code variant for this CPU (one of the names its `compile --cpu`
    /// listed; `inspect` shows them) instead of the best one this CPU supports.
    #[arg(long, value_name = "NAME")]
    cpu: Option<String>,
    /// Timed runs (at least 1); the median, p90 and min are reported.
    #[arg(long, default_value_t = 50, value_name = "N")]
    iters: usize,
    /// Untimed runs before the timed ones (caches, page faults, thread start-up).
    #[arg(long, default_value_t = 5, value_name = "N")]
    warmup: usize,
    /// CPU worker threads, the calling thread included; 0 means one per core of this machine.
    #[arg(long, default_value_t = 1, value_name = "N")]
    threads: usize,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// Print a per-kernel time table.
    #[arg(long)]
    profile: bool,
}

/// Write to stdout; a closed pipe (`densenetc inspect … | head`) is not an error.
pub fn emit(text: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

fn load_model(path: &std::path::Path, cpu: Option<&str>) -> Result<runtime::Model> {
    runtime::Model::load_for_cpu(path, cpu).map_err(|e| naming(path, &e))
}

/// A runtime error about `path` as one line that names the file once (some of the runtime's
/// errors name it, a malformed artefact's do not).
pub fn naming(path: &std::path::Path, e: &runtime::Error) -> anyhow::Error {
    let text = e.to_string();
    let shown = path.display().to_string();
    if text.contains(&shown) {
        anyhow::anyhow!("{text}")
    } else {
        anyhow::anyhow!("{shown}: {text}")
    }
}

fn cpu_device(device: &str, threads: usize) -> Result<runtime::Device> {
    runtime::Device::parse(device, threads).map_err(|e| anyhow::anyhow!("{e}"))
}

pub fn run(a: &RunArgs) -> Result<()> {
    let device = cpu_device(&a.device, a.threads)?;
    let model = load_model(&a.artefact, a.cpu.as_deref())?;
    // The arena first: a batch too large for this machine is refused before any input is built.
    check_memory(&model, device)?;
    let mut session = model.session(device).map_err(flat)?;
    let shape = model.input_shape().to_vec();
    let input = match (&a.input, a.random_input) {
        (_, Some(seed)) => random_input(&shape, seed)?,
        (Some(path), None) => {
            let x = runtime::preprocess::load_input(path, &model).map_err(flat)?;
            if x.shape != shape {
                bail!(
                    "{}: the input has shape {:?}, the artefact takes {shape:?}",
                    path.display(),
                    x.shape
                );
            }
            x.data
        }
        (None, None) => bail!("no input: pass --input X.npy or --random-input SEED"),
    };
    if let Some((count, first)) = non_finite(&input) {
        eprintln!(
            "warning: the input has {count} NaN or infinite values (the first at index {first}); \
             the logits will not mean anything"
        );
    }
    let logits = session.run(&input, &shape).map_err(flat)?;
    drop(input);
    if let Some((count, first)) = non_finite(&logits) {
        eprintln!(
            "warning: {count} of the {} logits are NaN or infinite (the first at index {first}); \
             NaN scores are not ranked",
            logits.len()
        );
    }
    let out_shape = model.output_shape().to_vec();
    if let Some(path) = &a.output {
        std::fs::write(path, runtime::npy::to_bytes(&out_shape, &logits))
            .with_context(|| format!("writing the logits to {}", path.display()))?;
    }
    let classes = out_shape.last().copied().unwrap_or(1).max(1);
    let labels = model.labels();
    let head = model.manifest().head.clone();
    let mut text = String::new();
    let line = |text: &mut String, c: usize, v: f32| match labels.and_then(|l| l.get(c)) {
        Some(name) => {
            let _ = writeln!(text, "  {c:6} {v:12.6}  {name}");
        }
        None => {
            let _ = writeln!(text, "  {c:6} {v:12.6}");
        }
    };
    for (n, row) in logits.chunks(classes).enumerate() {
        // NaN is not a score: it is left out of the ranking (and said so).
        let mut idx: Vec<usize> = (0..row.len()).filter(|&c| !row[c].is_nan()).collect();
        idx.sort_by(|&x, &y| row[y].total_cmp(&row[x]));
        match &head {
            Some(h) if h.is_probability() => {
                let _ = writeln!(text, "image {n} ({} probabilities):", h.kind);
            }
            _ => {
                let _ = writeln!(text, "image {n}:");
            }
        }
        for &c in idx.iter().take(a.top) {
            line(&mut text, c, row[c]);
        }
        // Multi-label outputs: each class has its own threshold (0.5), so every class above
        // it is a finding, whatever its rank.
        if head.as_ref().is_some_and(|h| h.is_multi_label()) {
            let above: Vec<usize> = idx.iter().copied().filter(|&c| row[c] > 0.5).collect();
            let _ = writeln!(
                text,
                "  above 0.5: {} of {} classes{}",
                above.len(),
                row.len(),
                if above.is_empty() { "" } else { ":" }
            );
            for &c in &above {
                line(&mut text, c, row[c]);
            }
        }
        let nans = row.len() - idx.len();
        if nans > 0 && a.top > 0 {
            let _ = writeln!(text, "  ({nans} NaN scores not ranked)");
        }
    }
    emit(&text)
}

/// A runtime error as one line (the runtime's errors already name the file).
fn flat(e: runtime::Error) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

/// How many of `values` are NaN or infinite and the index of the first, if any are.
pub fn non_finite(values: &[f32]) -> Option<(usize, usize)> {
    let first = values.iter().position(|v| !v.is_finite())?;
    let count = values[first..].iter().filter(|v| !v.is_finite()).count();
    Some((count, first))
}

/// `densenetc run --random-input SEED`: uniform in [-1, 1), the values of
/// `ir::reference::Tensor::random_uniform(shape, seed, -1.0, 1.0)`, allocated fallibly.
fn random_input(shape: &[usize], seed: u64) -> Result<Vec<f32>> {
    let n = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .context("the input shape overflows")?;
    let mut data: Vec<f32> = Vec::new();
    data.try_reserve_exact(n).map_err(|_| {
        anyhow::anyhow!(
            "cannot allocate {} bytes for the input {shape:?}",
            n.saturating_mul(4)
        )
    })?;
    let (lo, hi) = (-1.0f64, 1.0f64);
    data.extend((0..n).map(|i| {
        let u = splitmix64(seed ^ splitmix64(i as u64)) >> 11;
        let unit = u as f64 / (1u64 << 53) as f64;
        (lo + (hi - lo) * unit) as f32
    }));
    Ok(data)
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Refuses, before allocating anything, an artefact whose CPU arena, input and output together
/// exceed this machine's physical memory (the arena is sized by the compiled `--batch`).
fn check_memory(model: &runtime::Model, device: runtime::Device) -> Result<()> {
    let m = model.manifest();
    let Some(physical) = runtime::system::physical_memory_bytes() else {
        return Ok(());
    };
    let arena = match device {
        runtime::Device::Cpu { .. } => m.memory.arena_bytes,
        runtime::Device::Cuda { .. } => 0,
    };
    let io = (m.input.elements() as u64)
        .saturating_add(m.output.elements() as u64)
        .saturating_mul(4);
    let need = arena.saturating_add(io);
    if need > physical {
        bail!(
            "the artefact needs {need} bytes ({arena} of arena and {io} of input and output, \
             batch {}) but this machine has {physical} bytes of memory: compile it with a smaller --batch",
            m.batch
        );
    }
    Ok(())
}

/// An error and its causes as one line, each cause once: a cause already contained in the text
/// so far is left out, and a context that the next message restates is dropped.
pub fn one_line(e: &anyhow::Error) -> String {
    let parts: Vec<String> = e.chain().map(|c| c.to_string()).collect();
    let mut kept: Vec<&str> = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        let p = p.trim();
        if p.is_empty() || kept.iter().any(|k| k.contains(p)) {
            continue;
        }
        // `writing X` followed by `writing X: why`: the second says it all.
        if parts
            .get(i + 1)
            .is_some_and(|next| next.trim().starts_with(p))
        {
            continue;
        }
        kept.push(p);
    }
    kept.join(": ")
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

pub fn bench(a: &BenchArgs) -> Result<()> {
    let device = cpu_device(&a.device, a.threads)?;
    if a.iters == 0 {
        bail!("--iters must be at least 1");
    }
    let model = load_model(&a.artefact, a.cpu.as_deref())?;
    check_memory(&model, device)?;
    let mut session = model.session(device).map_err(flat)?;
    // `--threads 0` is one per core: report the count the pool started.
    let threads = match session.device() {
        runtime::Device::Cpu { threads } => threads,
        runtime::Device::Cuda { .. } => a.threads,
    };
    let input = random_input(model.input_shape(), 0)?;
    let mut out = runtime::system::try_zeroed::<f32>(model.manifest().output.elements(), "output")
        .map_err(flat)?;
    for _ in 0..a.warmup {
        session.run_into(&input, &mut out)?;
    }
    let mut samples = Vec::with_capacity(a.iters);
    for _ in 0..a.iters {
        let t = std::time::Instant::now();
        session.run_into(&input, &mut out)?;
        samples.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let mut sorted = samples.clone();
    sorted.sort_by(f64::total_cmp);
    let median = percentile(&sorted, 0.5);
    let p90 = percentile(&sorted, 0.9);
    let min = sorted[0];
    let batch = model.manifest().batch;
    let profile = if a.profile {
        profile_kernels(&mut session, &model, &input, &mut out, a.iters)?
    } else {
        Vec::new()
    };
    let classes = by_class(&profile);
    if a.json {
        let mut v = serde_json::json!({
            "median_ms": median,
            "p90_ms": p90,
            "min_ms": min,
            "iters": a.iters,
            "warmup": a.warmup,
            "threads": threads,
            "batch": batch,
            "device": a.device,
            "cpu_variant": model.cpu_variant(),
            "images_per_s": if median > 0.0 { batch as f64 * 1e3 / median } else { 0.0 },
            "samples_ms": samples,
        });
        if a.profile {
            v["profile"] = profile
                .iter()
                .map(|k| {
                    serde_json::json!({"index": k.index, "name": k.name, "op": k.op, "macs": k.macs, "tasks": k.tasks, "ms": k.ms})
                })
                .collect();
            v["profile_classes"] = classes
                .iter()
                .map(|c| {
                    serde_json::json!({"op": c.op, "kernels": c.kernels, "macs": c.macs, "ms": c.ms, "gmacs_per_s": c.gmacs_per_s()})
                })
                .collect();
        }
        return emit(&format!("{}\n", serde_json::to_string(&v)?));
    }
    let mut text = format!(
        "{}: batch {batch}, {} threads, {} iters: median {median:.3} ms, p90 {p90:.3} ms, min {min:.3} ms ({:.1} images/s)\n",
        a.artefact.display(),
        threads,
        a.iters,
        if median > 0.0 { batch as f64 * 1e3 / median } else { 0.0 }
    );
    if a.profile {
        let total: f64 = profile.iter().map(|k| k.ms).sum();
        let share = |ms: f64| if total > 0.0 { 100.0 * ms / total } else { 0.0 };
        let _ = writeln!(
            text,
            "per kernel, median of {} profiled runs (each kernel timed alone, so the total exceeds a run):",
            a.iters.clamp(1, PROFILE_RUNS)
        );
        let _ = writeln!(
            text,
            "{:>5} {:>14} {:>6} {:>8} {:>9} {:>7}  name",
            "#", "op", "tasks", "ms", "GMAC/s", "%"
        );
        for k in &profile {
            let _ = writeln!(
                text,
                "{:>5} {:>14} {:>6} {:>8.3} {:>9.2} {:>6.1}%  {}",
                k.index,
                k.op,
                k.tasks,
                k.ms,
                gmacs_per_s(k.macs, k.ms),
                share(k.ms),
                k.name
            );
        }
        let _ = writeln!(text, "total {total:.3} ms");
        let _ = writeln!(text, "per kernel class:");
        let _ = writeln!(
            text,
            "{:>14} {:>7} {:>14} {:>8} {:>9} {:>7}",
            "op", "kernels", "MACs", "ms", "GMAC/s", "%"
        );
        for c in &classes {
            let _ = writeln!(
                text,
                "{:>14} {:>7} {:>14} {:>8.3} {:>9.2} {:>6.1}%",
                c.op,
                c.kernels,
                c.macs,
                c.ms,
                c.gmacs_per_s(),
                share(c.ms)
            );
        }
    }
    emit(&text)
}

/// At most this many runs are profiled (each kernel's median is reported).
const PROFILE_RUNS: usize = 20;

/// One kernel's profile.
struct KernelProfile {
    index: usize,
    name: String,
    op: String,
    macs: u64,
    tasks: i64,
    /// Median over the profiled runs.
    ms: f64,
}

/// The kernels of one class (`op`) together.
struct ClassProfile {
    op: String,
    kernels: usize,
    macs: u64,
    ms: f64,
}

impl ClassProfile {
    fn gmacs_per_s(&self) -> f64 {
        gmacs_per_s(self.macs, self.ms)
    }
}

fn gmacs_per_s(macs: u64, ms: f64) -> f64 {
    if ms > 0.0 {
        macs as f64 / (ms * 1e6)
    } else {
        0.0
    }
}

/// Time every kernel alone over `min(iters, PROFILE_RUNS)` runs; the median per kernel.
fn profile_kernels(
    session: &mut runtime::Session,
    model: &runtime::Model,
    input: &[f32],
    out: &mut [f32],
    iters: usize,
) -> Result<Vec<KernelProfile>> {
    let runs = iters.clamp(1, PROFILE_RUNS);
    let mut samples: Vec<Vec<f64>> = Vec::new();
    let mut first = Vec::new();
    for run in 0..runs {
        let times = session.run_profiled(input, out)?;
        if run == 0 {
            samples = vec![Vec::with_capacity(runs); times.len()];
            first = times.iter().map(|t| (t.index, t.tasks)).collect();
        }
        for (s, t) in samples.iter_mut().zip(&times) {
            s.push(t.seconds * 1e3);
        }
    }
    let schedule = &model.manifest().schedule;
    Ok(first
        .into_iter()
        .zip(samples)
        .map(|((index, tasks), mut ms)| {
            ms.sort_by(f64::total_cmp);
            let k = schedule.get(index);
            KernelProfile {
                index,
                name: k.map_or("?".to_owned(), |k| k.name.clone()),
                op: k.map_or("?".to_owned(), |k| k.op.clone()),
                macs: k.map_or(0, |k| k.macs),
                tasks,
                ms: percentile(&ms, 0.5),
            }
        })
        .collect())
}

/// Kernel classes in order of first appearance.
fn by_class(profile: &[KernelProfile]) -> Vec<ClassProfile> {
    let mut classes: Vec<ClassProfile> = Vec::new();
    for k in profile {
        match classes.iter_mut().find(|c| c.op == k.op) {
            Some(c) => {
                c.kernels += 1;
                c.macs += k.macs;
                c.ms += k.ms;
            }
            None => classes.push(ClassProfile {
                op: k.op.clone(),
                kernels: 1,
                macs: k.macs,
                ms: k.ms,
            }),
        }
    }
    classes
}
