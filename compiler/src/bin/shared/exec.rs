//! `densenetc run` and `densenetc bench`: what executes an artefact, on the
//! runtime alone. Shared by both binaries (`#[path]`): the `densenetc` front
//! runs these without loading LLVM, `densenetc-compiler` offers them too.

use anyhow::{bail, Context, Result};
use clap::Args;
use std::fmt::Write as _;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The artefact.
    artefact: PathBuf,
    /// Input: a .npy float32 NCHW tensor, or a PNG/JPEG image (recognised by its bytes),
    /// preprocessed as torchvision's ImageNet eval transform: RGB, Resize(256) (bilinear,
    /// antialiased, as Pillow), CenterCrop(224), /255, Normalize(ImageNet mean, std). For an
    /// artefact compiled at image size S: Resize(round(S·256/224)), CenterCrop(S). The image fills
    /// every item of the batch; models with in_channels ≠ 3 take only .npy.
    #[arg(
        long,
        required_unless_present = "random_input",
        value_name = "X.npy|IMAGE"
    )]
    input: Option<PathBuf>,
    /// Use a deterministic uniform [-1, 1) random input instead of --input.
    #[arg(long, value_name = "SEED", conflicts_with = "input")]
    random_input: Option<u64>,
    /// Write the logits here (.npy).
    #[arg(long)]
    output: Option<PathBuf>,
    /// cpu, cuda or cuda:ORDINAL.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Run the artefact's CPU code variant for this CPU (one of the names its `compile --cpu`
    /// listed; `inspect` shows them) instead of the best one this CPU supports.
    #[arg(long, value_name = "NAME")]
    cpu: Option<String>,
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Print the K highest-scoring classes of every image.
    #[arg(long, default_value_t = 5)]
    top: usize,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// The artefact.
    artefact: PathBuf,
    /// cpu, cuda or cuda:ORDINAL.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Run the artefact's CPU code variant for this CPU (one of the names its `compile --cpu`
    /// listed; `inspect` shows them) instead of the best one this CPU supports.
    #[arg(long, value_name = "NAME")]
    cpu: Option<String>,
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
    // The runtime's errors already name the file; keep the message one line.
    runtime::Model::load_for_cpu(path, cpu).map_err(|e| anyhow::anyhow!("{e}"))
}

fn cpu_device(device: &str, threads: usize) -> Result<runtime::Device> {
    runtime::Device::parse(device, threads).map_err(|e| anyhow::anyhow!("{e}"))
}

pub fn run(a: &RunArgs) -> Result<()> {
    let device = cpu_device(&a.device, a.threads)?;
    let model = load_model(&a.artefact, a.cpu.as_deref())?;
    let input = match (&a.input, a.random_input) {
        (_, Some(seed)) => {
            ir::reference::Tensor::random_uniform(model.input_shape().to_vec(), seed, -1.0, 1.0)
        }
        (Some(path), None) => {
            let x = runtime::preprocess::load_input(path, &model).context("reading the input")?;
            ir::reference::Tensor::from_vec(x.shape, x.data)?
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

pub fn bench(a: &BenchArgs) -> Result<()> {
    let device = cpu_device(&a.device, a.threads)?;
    if a.iters == 0 {
        bail!("--iters must be at least 1");
    }
    let model = load_model(&a.artefact, a.cpu.as_deref())?;
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
    let profile = if a.profile {
        profile_kernels(&mut session, &model, &input.data, &mut out, a.iters)?
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
            "threads": a.threads,
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
        a.threads,
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
