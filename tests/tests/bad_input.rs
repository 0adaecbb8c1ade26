//! Bad input, tried as a new user would: the built `densenetc` over missing, truncated and
//! tampered artefacts, bad `.npy` files, bad weights (unreadable, NaN, a negative variance),
//! absurd configurations, batches too large for the machine, a missing CUDA driver or compiler
//! binary, unwritable paths and flags that do not apply. Every one must exit non-zero (exit
//! status, not a signal: no panic, no abort on a failed allocation) with one `error:` line that
//! says nothing twice. Also: NaN inputs warn once, every flag has help.

use runtime::artefact::SectionKind;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

fn densenetc() -> &'static Path {
    &tests::cli_binaries().0
}

fn scratch() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bad_input");
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn cli(args: &[&str]) -> Output {
    Command::new(densenetc())
        .args(args)
        .output()
        .expect("densenetc runs")
}

/// The `error:` line of a failed run, checked: an exit status (not a signal), non-zero; no
/// panic or abort; exactly one `error:` line, nothing else on stderr but progress and warnings
/// (unless `usage`: clap prints the usage after it); no part of it said twice.
fn fails(args: &[&str], needle: &str) -> String {
    fails_with(args, needle, false)
}

fn fails_with(args: &[&str], needle: &str, usage: bool) -> String {
    let out = cli(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let code = out.status.code();
    assert!(
        code.is_some_and(|c| c != 0),
        "densenetc {args:?} should fail with an exit status, got {:?}: {err}",
        out.status
    );
    for bad in [
        "panicked",
        "memory allocation of",
        "RUST_BACKTRACE",
        "SIGABRT",
    ] {
        assert!(!err.contains(bad), "densenetc {args:?}: {err}");
    }
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "densenetc {args:?}: {err}");
    let line = errors[0];
    if !usage {
        let other: Vec<&str> = err
            .lines()
            .filter(|l| !l.starts_with("error:"))
            .filter(|l| !l.starts_with("densenetc: ") && !l.starts_with("warning: "))
            .collect();
        assert!(
            other.is_empty(),
            "densenetc {args:?}: more than one line: {err}"
        );
    }
    no_repetition(line);
    assert!(
        line.contains(needle),
        "densenetc {args:?}: `{needle}` not in `{line}`"
    );
    line.to_owned()
}

/// No part of an error line (between `: `) of some length occurs twice, nor an OS error.
fn no_repetition(line: &str) {
    assert!(line.matches("(os error").count() <= 1, "repeated: {line}");
    let parts: Vec<&str> = line.split(": ").map(str::trim).collect();
    for (i, p) in parts.iter().enumerate() {
        if p.len() >= 12 {
            assert!(
                !parts[i + 1..].contains(p),
                "`{p}` is said twice in: {line}"
            );
        }
    }
}

/// A small artefact (DenseNet-BC-100 with two layers per block, random weights).
fn small() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let path = scratch().join("small.dnc");
        let out = cli(&[
            "compile",
            "--arch",
            "densenet-bc-100",
            "--block-config",
            "2,2,2",
            "--random-weights",
            "0",
            "-o",
            s(&path),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        path
    })
}

fn write(name: &str, bytes: &[u8]) -> PathBuf {
    let path = scratch().join(name);
    std::fs::write(&path, bytes).expect("write scratch file");
    path
}

#[test]
fn missing_truncated_and_tampered_artefacts() {
    let missing = scratch().join("missing.dnc");
    let line = fails(&["run", s(&missing), "--random-input", "0"], "missing.dnc");
    assert!(line.contains("No such file"), "{line}");
    fails(&["inspect", s(&missing)], "No such file");
    fails(&["bench", s(&missing)], "No such file");

    let bytes = std::fs::read(small()).expect("artefact");
    let truncated = write("truncated.dnc", &bytes[..bytes.len() / 2]);
    fails(
        &["run", s(&truncated), "--random-input", "0"],
        "truncated.dnc",
    );
    fails(&["inspect", s(&truncated)], "truncated.dnc");
    let mut tampered = bytes;
    let mid = tampered.len() / 2;
    tampered[mid] ^= 0x5a;
    let tampered = write("tampered.dnc", &tampered);
    fails(
        &["run", s(&tampered), "--random-input", "0"],
        "tampered.dnc",
    );
    let empty = write("empty.dnc", b"");
    fails(&["run", s(&empty), "--random-input", "0"], "empty.dnc");
    let text = write("text.dnc", b"hello, world\n");
    fails(&["inspect", s(&text)], "text.dnc");
}

#[test]
fn bad_npy_inputs() {
    let a = small();
    let garbage = write("garbage.npy", b"\x93NUMPY\x01\x00\xff\xffnot a header");
    fails(&["run", s(a), "--input", s(&garbage)], "garbage.npy");
    let wrong = write(
        "wrong_shape.npy",
        &runtime::npy::to_bytes(&[1, 3, 8, 8], &[0.0; 192]),
    );
    fails(&["run", s(a), "--input", s(&wrong)], "wrong_shape.npy");
    let short = runtime::npy::to_bytes(&[1, 3, 32, 32], &[0.0; 3072]);
    let short = write("short.npy", &short[..short.len() - 100]);
    fails(&["run", s(a), "--input", s(&short)], "short.npy");
    let text = write("text.npy", b"1.0 2.0 3.0\n");
    fails(&["run", s(a), "--input", s(&text)], "text.npy");
    fails(
        &["run", s(a), "--input", s(&scratch().join("none.npy"))],
        "No such file",
    );
}

#[test]
fn non_finite_inputs_warn_once_and_nan_is_not_ranked() {
    let a = small();
    for (name, v) in [("nan.npy", f32::NAN), ("inf.npy", f32::INFINITY)] {
        let mut data = vec![0.5f32; 3 * 32 * 32];
        data[7] = v;
        let x = write(name, &runtime::npy::to_bytes(&[1, 3, 32, 32], &data));
        let out = cli(&["run", s(a), "--input", s(&x), "--top", "3"]);
        let err = String::from_utf8_lossy(&out.stderr);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{err}");
        assert_eq!(err.matches("warning: the input has").count(), 1, "{err}");
        assert!(err.contains("index 7"), "{err}");
        assert_eq!(
            err.matches("logits are NaN or infinite").count(),
            1,
            "{err}"
        );
        assert!(
            !text.contains("NaN    ") && !text.contains(" NaN\n"),
            "{text}"
        );
        if v.is_nan() {
            assert!(text.contains("NaN scores not ranked"), "{text}");
        }
    }
    // A finite input warns about nothing.
    let out = cli(&["run", s(a), "--random-input", "0"]);
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("warning"));
}

#[test]
fn unwritable_outputs() {
    let a = small();
    // Under a regular file: unwritable even for root.
    let under_file = a.join("y.npy");
    let line = fails(
        &[
            "run",
            s(a),
            "--random-input",
            "0",
            "--output",
            s(&under_file),
        ],
        "writing the logits to",
    );
    assert!(
        !line.contains("execution:") && !line.contains("npy: /"),
        "{line}"
    );
    fails(
        &[
            "compile",
            "--arch",
            "densenet-bc-100",
            "--block-config",
            "1,1",
            "--random-weights",
            "0",
            "-o",
            s(&a.join("x.dnc")),
        ],
        "writing",
    );
    fails(
        &[
            "inspect",
            "--arch",
            "densenet-40",
            "--block-config",
            "1,1",
            "--memory-svg",
            s(&a.join("m.svg")),
        ],
        "m.svg",
    );
}

#[test]
fn graph_only_flags_with_an_artefact_are_errors() {
    let svg = scratch().join("never.svg");
    let _ = std::fs::remove_file(&svg);
    fails(
        &["inspect", s(small()), "--memory-svg", s(&svg)],
        "--memory-svg",
    );
    assert!(!svg.exists(), "nothing may be written");
    fails(&["inspect", s(small()), "--dot", s(&svg)], "--dot");
    fails(&["inspect", s(small()), "--after", "fold_bn"], "--after");
    // Without them it works, and says what its arena counts.
    let out = cli(&["inspect", s(small())]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("input and activations"));
}

/// The builder's tensors of a tiny DenseNet as a safetensors file, `poison` applied.
fn tiny_weights(name: &str, poison: impl Fn(&str, &mut Vec<f32>)) -> PathBuf {
    use compiler::builder::{ConfigOverrides, DenseNetConfig};
    let cfg = DenseNetConfig::resolve(
        None,
        &ConfigOverrides {
            arch: Some("densenet-bc-100".into()),
            block_config: Some(vec![1, 1]),
            ..Default::default()
        },
    )
    .expect("config");
    let mut g = compiler::builder::build(&cfg, 1).expect("build");
    compiler::weights::randomize(&mut g, 3);
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (tensor, c) in &g.constants {
        let mut values = c.data.as_ref().expect("bound").as_ref().clone();
        poison(tensor, &mut values);
        let start = data.len();
        data.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        header.insert(
            tensor.clone(),
            serde_json::json!({"dtype": "F32", "shape": c.shape, "data_offsets": [start, data.len()]}),
        );
    }
    let header = serde_json::to_vec(&header).expect("json");
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header);
    bytes.extend(data);
    write(name, &bytes)
}

fn compile_tiny(weights: &Path, extra: &[&str]) -> Output {
    let out = scratch().join("tiny.dnc");
    let mut args = vec![
        "compile",
        "--arch",
        "densenet-bc-100",
        "--block-config",
        "1,1",
        "--weights",
        s(weights),
        "-o",
        s(&out),
    ];
    args.extend_from_slice(extra);
    Command::new(densenetc())
        .args(&args)
        .output()
        .expect("densenetc runs")
}

#[test]
fn bad_weights() {
    let good = tiny_weights("good.safetensors", |_, _| {});
    let out = compile_tiny(&good, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let nan = tiny_weights("nan.safetensors", |t, v| {
        if t == "features.conv0.weight" {
            v[3] = f32::NAN;
        }
    });
    let args = |w: &Path| {
        vec![
            "compile".to_owned(),
            "--arch".into(),
            "densenet-bc-100".into(),
            "--block-config".into(),
            "1,1".into(),
            "--weights".into(),
            s(w).to_owned(),
            "-o".into(),
            s(&scratch().join("bad.dnc")).to_owned(),
        ]
    };
    let a = args(&nan);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let line = fails(&a, "features.conv0.weight");
    assert!(
        line.contains("index 3") && line.contains("--allow-nonfinite"),
        "{line}"
    );
    let out = compile_tiny(&nan, &["--allow-nonfinite"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let inf = tiny_weights("inf.safetensors", |t, v| {
        if t.ends_with("norm5.bias") {
            v[0] = f32::NEG_INFINITY;
        }
    });
    let a = args(&inf);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    fails(&a, "norm5.bias");

    let negative = tiny_weights("negvar.safetensors", |t, v| {
        if t.ends_with("denselayer1.norm1.running_var") {
            v[1] = -5.0;
        }
    });
    let a = args(&negative);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    fails(&a, "running_var");

    for (name, bytes) in [
        (
            "garbage.pth",
            &b"\x00\x01\x02garbage bytes of no format"[..],
        ),
        ("text.pth", &b"just some text\n"[..]),
        ("empty.pth", &b""[..]),
    ] {
        let w = write(name, bytes);
        let a = args(&w);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        fails(&a, name);
    }
    let good_bytes = std::fs::read(&good).expect("weights");
    let truncated = write("truncated.safetensors", &good_bytes[..good_bytes.len() / 2]);
    let a = args(&truncated);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    fails_with(&a, "truncated.safetensors", true);
    let a = args(&scratch().join("none.pth"));
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    fails(&a, "No such file");
}

#[test]
fn absurd_configurations() {
    let out = s(&scratch().join("absurd.dnc")).to_owned();
    let compile = |extra: &[&str], needle: &str| {
        let mut a = vec!["compile", "--random-weights", "0", "-o", &out];
        a.extend_from_slice(extra);
        fails(&a, needle)
    };
    compile(
        &["--arch", "densenet121", "--growth-rate", "0"],
        "growth rate",
    );
    compile(
        &["--arch", "densenet121", "--compression", "2"],
        "compression",
    );
    compile(
        &["--arch", "densenet121", "--block-config", "6,0"],
        "no layers",
    );
    compile(&["--arch", "densenet121", "--image-size", "8"], "too small");
    compile(&["--arch", "densenet-12345"], "densenet-12345");
    // Beyond the documented limits: the estimate and the limit, before anything is built.
    let line = compile(&["--arch", "densenet121", "--batch", "100000000"], "limit");
    assert!(
        line.contains("140737488355328") && line.contains("arena"),
        "{line}"
    );
    let line = compile(
        &["--arch", "densenet121", "--growth-rate", "100000"],
        "limit",
    );
    assert!(line.contains("weights"), "{line}");
    // inspect binds weights too: the same limits.
    fails(
        &[
            "inspect",
            "--arch",
            "densenet121",
            "--growth-rate",
            "100000",
            "--random-weights",
            "0",
        ],
        "limit",
    );
    let toml = write("unknown_key.toml", b"arch = \"densenet121\"\ngrowth = 3\n");
    compile(&["--config", s(&toml)], "growth");
    compile(
        &["--config", s(&scratch().join("none.toml"))],
        "No such file",
    );
    fails(
        &["inspect", "--arch", "densenet121", "--batch", "0"],
        "batch",
    );
}

#[test]
fn init_features_is_a_toml_alias() {
    let toml = write(
        "alias.toml",
        b"arch = \"densenet-bc-100\"\ninit_features = 20\nblock_config = [1, 1]\n",
    );
    let out = cli(&["inspect", "--config", s(&toml), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["config"]["num_init_features"], 20);
    let toml = write(
        "old_key.toml",
        b"arch = \"densenet-bc-100\"\nnum_init_features = 22\nblock_config = [1, 1]\n",
    );
    let out = cli(&["inspect", "--config", s(&toml), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["config"]["num_init_features"], 22);
}

/// `small` with its batch (and arena) blown up to `batch`: what `--batch` too large for any
/// machine gives, without compiling it.
fn huge(batch: usize) -> PathBuf {
    let a = runtime::Artefact::open(small()).expect("open");
    let mut m = a.manifest().clone();
    m.batch = batch;
    m.input.shape[0] = batch;
    m.input.view.n = batch;
    m.output.shape[0] = batch;
    m.output.view.n = batch;
    m.memory.arena_bytes = 1 << 46;
    let mut w = runtime::ArtefactWriter::new(m);
    for kind in [SectionKind::Weights, SectionKind::CpuSharedObject] {
        let bytes = a.section(kind).expect("section").to_vec();
        w.add_section(kind, bytes).expect("add section");
    }
    let path = scratch().join(format!("huge{batch}.dnc"));
    w.write(&path).expect("write");
    path
}

#[test]
fn a_batch_larger_than_memory_is_a_clean_error() {
    // The input alone (batch 2^32 of 3x32x32 f32: 48 TiB) cannot be allocated.
    let h = huge(1 << 32);
    let line = fails(&["run", s(&h), "--random-input", "0"], "bytes of memory");
    assert!(line.contains("--batch"), "{line}");
    fails(&["bench", s(&h)], "bytes of memory");
    let img = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/images/grey.png");
    fails(&["run", s(&h), "--input", s(&img)], "bytes of memory");
    // The runtime's API: errors, not aborts.
    let model = runtime::Model::load(&h).expect("a valid artefact");
    let e = model
        .session(runtime::Device::Cpu { threads: 1 })
        .expect_err("a 64 TiB arena");
    assert!(e.to_string().contains("arena"), "{e}");
    let e = runtime::preprocess::load_input(&img, &model).expect_err("a 48 TiB input");
    assert!(e.to_string().contains("allocate"), "{e}");
}

#[test]
fn a_compiled_batch_too_large_for_this_machine_warns_then_run_refuses() {
    let Some(mem) = runtime::system::physical_memory_bytes() else {
        return;
    };
    // DenseNet-BC-100 (2 layers per block) needs 430,848 arena bytes per image.
    let batch = (mem / 430_848 + 1000).to_string();
    let path = scratch().join("too_large.dnc");
    let out = cli(&[
        "compile",
        "--arch",
        "densenet-bc-100",
        "--block-config",
        "2,2,2",
        "--random-weights",
        "0",
        "--batch",
        &batch,
        "-o",
        s(&path),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(err.matches("warning: the arena of").count(), 1, "{err}");
    fails(&["run", s(&path), "--random-input", "0"], "bytes of memory");
}

#[test]
fn the_library_finds_the_first_non_finite_weight() {
    let cfg = compiler::builder::DenseNetConfig::preset("densenet-40").expect("preset");
    let mut g = compiler::builder::build(&cfg, 1).expect("build");
    compiler::weights::randomize(&mut g, 0);
    compiler::driver::check_finite(&g).expect("random weights are finite");
    assert!(compiler::CompileOptions::default().check_finite_weights);
    let c = g
        .constants
        .get_mut("classifier.weight")
        .expect("classifier");
    let mut data = c.data.as_ref().expect("bound").as_ref().clone();
    data[5] = f32::INFINITY;
    c.data = Some(std::sync::Arc::new(data));
    let e = compiler::driver::check_finite(&g).expect_err("inf");
    let text = e.to_string();
    assert!(
        text.contains("classifier.weight") && text.contains("index 5"),
        "{text}"
    );
}

#[test]
fn devices_threads_and_a_missing_compiler() {
    let a = small();
    fails(
        &["run", s(a), "--random-input", "0", "--device", "cuda"],
        "CUDA",
    );
    fails(
        &["run", s(a), "--random-input", "0", "--device", "tpu"],
        "tpu",
    );
    fails(
        &["run", s(a), "--random-input", "0", "--threads", "100000"],
        "threads",
    );
    // `--threads 0` is one per core, and bench says how many that was.
    let out = cli(&[
        "bench",
        s(a),
        "--threads",
        "0",
        "--iters",
        "1",
        "--warmup",
        "0",
    ]);
    assert!(out.status.success());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("{cores} threads")), "{text}");
    // The front alone: run works, compile says what is missing.
    let dir = scratch().join("front_alone");
    std::fs::create_dir_all(&dir).expect("dir");
    let front = dir.join("densenetc");
    std::fs::copy(densenetc(), &front).expect("copy densenetc");
    let out = Command::new(&front)
        .args([
            "compile",
            "--arch",
            "densenet121",
            "--random-weights",
            "0",
            "-o",
            "x.dnc",
        ])
        .output()
        .expect("runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("densenetc-compiler") && err.lines().count() == 1,
        "{err}"
    );
    let out = Command::new(&front)
        .args(["run", s(a), "--random-input", "0"])
        .output()
        .expect("runs");
    assert!(out.status.success());
}

#[test]
fn run_without_an_input_names_both_ways_to_give_one() {
    let out = cli(&["run", s(small())]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--input") && err.contains("--random-input"),
        "{err}"
    );
}

/// Every flag and argument of every subcommand of both binaries has help text.
#[test]
fn every_flag_has_help() {
    let (front, back) = tests::cli_binaries();
    let mut checked = 0;
    for (exe, sub) in [
        (back, None),
        (back, Some("compile")),
        (back, Some("inspect")),
        (back, Some("run")),
        (back, Some("bench")),
        (front, Some("run")),
        (front, Some("bench")),
    ] {
        let mut cmd = Command::new(exe);
        cmd.args(sub).arg("--help");
        let out = cmd.output().expect("runs");
        assert!(out.status.success());
        let help = String::from_utf8_lossy(&out.stdout).into_owned();
        let lines: Vec<&str> = help.lines().collect();
        let mut section = "";
        for (i, l) in lines.iter().enumerate() {
            if !l.starts_with(' ') && l.ends_with(':') {
                section = l;
                continue;
            }
            let t = l.trim_start();
            let is_item = l.starts_with("  ")
                && (t.starts_with('-')
                    || (section == "Arguments:" && (t.starts_with('<') || t.starts_with('['))));
            if !is_item {
                continue;
            }
            // Short help: `  --flag <V>  text`; long help: the text on the next lines.
            let inline = t.split("  ").filter(|p| !p.trim().is_empty()).count() >= 2;
            let next = lines.get(i + 1).map_or("", |n| n.trim());
            let below = !next.is_empty() && !next.starts_with('-') && !next.starts_with('<');
            assert!(
                inline || below,
                "`{t}` has no help in `{} {}`",
                exe.display(),
                sub.unwrap_or("")
            );
            checked += 1;
        }
    }
    assert!(
        checked > 60,
        "only {checked} flags found: is the help format parsed?"
    );
}

#[test]
fn the_memory_svg_has_a_legend_and_ticks() {
    let svg = scratch().join("plan.svg");
    let out = cli(&[
        "inspect",
        "--arch",
        "densenet-bc-100",
        "--summary",
        "--memory-svg",
        s(&svg),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&svg).expect("svg written");
    assert_eq!(text.matches(r#"class="legend""#).count(), 3, "{text}");
    for label in ["dense block", "zero border", "lower bound", "KiB", ">0<"] {
        assert!(text.contains(label), "`{label}` missing from the SVG");
    }
}
