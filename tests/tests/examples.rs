//! The examples on a real DenseNet: `examples/rust/classify.rs` (built by cargo) and
//! `examples/c/classify.c` (built with `cc … -ldensenetc`, the runtime's C library) classify
//! inputs with a DenseNet-BC-100 artefact compiled here with random weights and labels, and
//! their top-k lines must agree with `ir::reference` on the unoptimised graph — for an image
//! (preprocessed by `runtime::preprocess`), a `.npy` tensor, and the same tensor as raw `.f32`
//! for the C program, which must print exactly what the Rust one prints.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use compiler::builder::{build, ConfigOverrides, DenseNetConfig};
use ir::reference::{npy, Tensor};

const IMAGE: usize = 32;
const BATCH: usize = 2;
const TOP: usize = 4;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn scratch() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("examples-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn have_cc() -> bool {
    let ok = Command::new("cc")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("skipping the C example: no C compiler (`cc`) found on PATH");
    }
    ok
}

/// The DenseNet-BC-100 preset (k=12, three blocks of 16 bottleneck layers, θ=0.5, 10 classes)
/// at 32×32, batch 2, random weights; the unoptimised graph is the oracle.
struct Fixture {
    graph: ir::Graph,
    artefact: PathBuf,
    labels: Vec<String>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let o = ConfigOverrides {
            image_size: Some(IMAGE),
            ..Default::default()
        };
        let cfg = DenseNetConfig::resolve(Some("densenet-bc-100"), &o).expect("config");
        let mut graph = build(&cfg, BATCH).expect("build");
        compiler::weights::randomize(&mut graph, 100);
        let labels: Vec<String> = (0..cfg.num_classes).map(|c| format!("label-{c}")).collect();
        // Both targets, so `--device cuda` reaches the driver (and runs where there is one).
        let opts = compiler::CompileOptions {
            cpus: vec![compiler::backend::cpu::CpuOptions {
                cpu: "x86-64-v3".into(),
                ..Default::default()
            }],
            cuda: Some(Default::default()),
            labels: Some(labels.clone()),
            ..Default::default()
        };
        let bytes = compiler::compile_graph(&cfg, graph.clone(), &opts)
            .and_then(|c| c.to_bytes())
            .expect("compile");
        let artefact = scratch().join("bc100.dnc");
        std::fs::write(&artefact, bytes).expect("write artefact");
        Fixture {
            graph,
            artefact,
            labels,
        }
    })
}

/// The runtime's C library (`libdensenetc.so`, package `densenetc-capi`) and the Rust example,
/// built by cargo (paths from its JSON messages).
struct Built {
    cdylib: PathBuf,
    rust_example: PathBuf,
}

fn built() -> &'static Built {
    static B: OnceLock<Built> = OnceLock::new();
    B.get_or_init(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = Command::new(cargo)
            .args([
                "build",
                "-p",
                "runtime",
                "-p",
                "densenetc-capi",
                "--lib",
                "--example",
                "classify",
                "--message-format=json-render-diagnostics",
            ])
            .current_dir(repo())
            .output()
            .expect("run cargo build");
        assert!(
            out.status.success(),
            "cargo build failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut files: Vec<PathBuf> = Vec::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if msg["reason"] == "compiler-artifact" {
                files.extend(
                    msg["filenames"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|f| f.as_str())
                        .map(PathBuf::from),
                );
                if let Some(exe) = msg["executable"].as_str() {
                    files.push(exe.into());
                }
            }
        }
        let find = |pred: &dyn Fn(&Path) -> bool| files.iter().find(|f| pred(f)).cloned();
        Built {
            cdylib: find(&|f| f.file_name().is_some_and(|n| n == "libdensenetc.so"))
                .unwrap_or_else(|| panic!("no cdylib in {files:?}")),
            rust_example: find(&|f| {
                f.parent().is_some_and(|d| d.ends_with("examples"))
                    && f.file_name().is_some_and(|n| n == "classify")
            })
            .unwrap_or_else(|| panic!("no example in {files:?}")),
        }
    })
}

fn c_example() -> PathBuf {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| {
        let dir = built().cdylib.parent().expect("cdylib dir").to_owned();
        let out = scratch().join("classify_c");
        let status = Command::new("cc")
            .args(["-std=c11", "-O1", "-Wall", "-Wextra", "-Werror", "-I"])
            .arg(repo().join("runtime/include"))
            .arg(repo().join("examples/c/classify.c"))
            .arg("-o")
            .arg(&out)
            .arg(format!("-L{}", dir.display()))
            .arg("-ldensenetc")
            .arg(format!("-Wl,-rpath,{}", dir.display()))
            .status()
            .expect("run cc");
        assert!(status.success(), "cc failed on examples/c/classify.c");
        out
    })
    .clone()
}

fn stdout_of(exe: &Path, args: &[&Path]) -> String {
    let out = Command::new(exe)
        .args(args)
        .args(["--top", &TOP.to_string(), "--threads", "2"])
        .output()
        .expect("run example");
    assert!(
        out.status.success(),
        "{} failed: {}",
        exe.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// Parses `item I: #R class C score S (LABEL)` lines into (item, class, score, label).
fn parse(text: &str) -> Vec<(usize, usize, f64, String)> {
    text.lines()
        .map(|l| {
            let (head, label) = l.split_once(" (").expect("a label");
            let w: Vec<&str> = head.split_whitespace().collect();
            assert_eq!(w.len(), 7, "{l}");
            (
                w[1].trim_end_matches(':').parse().expect("item"),
                w[4].parse().expect("class"),
                w[6].parse().expect("score"),
                label.trim_end_matches(')').to_owned(),
            )
        })
        .collect()
}

/// The printed top-k must be the reference's: same classes in the same order (where the
/// reference's own scores are apart by more than the 1e-4 bound), scores within the bound,
/// the artefact's labels.
fn check_against_reference(text: &str, input: &Tensor) {
    let f = fixture();
    let want = ir::reference::run(&f.graph, std::slice::from_ref(input))
        .expect("reference")
        .remove(0);
    let classes = f.labels.len();
    let scale = want.max_abs();
    let tol = 1e-4 * scale + 5e-7;
    let got = parse(text);
    assert_eq!(got.len(), BATCH * TOP, "{text}");
    for (item, row) in want.data.chunks(classes).enumerate() {
        let mut order: Vec<usize> = (0..classes).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        let lines = &got[item * TOP..(item + 1) * TOP];
        for (rank, (it, class, score, label)) in lines.iter().enumerate() {
            assert_eq!(*it, item, "{text}");
            let expected = order[rank];
            let close = |c: usize| (f64::from(row[c]) - f64::from(row[expected])).abs() <= tol;
            assert!(
                *class == expected || close(*class),
                "item {item} rank {rank}: class {class}, the reference says {expected}:\n{text}\nreference row {row:?}"
            );
            assert!(
                (score - f64::from(row[*class])).abs() <= tol,
                "item {item} class {class}: score {score}, reference {}",
                row[*class]
            );
            assert_eq!(label, &f.labels[*class]);
        }
    }
}

fn write_f32(path: &Path, t: &Tensor) {
    let bytes: Vec<u8> = t.data.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(path, bytes).expect("write .f32");
}

#[test]
fn rust_and_c_examples_classify_an_image_like_the_reference() {
    let f = fixture();
    let image = repo().join("tests/fixtures/images/rgb_portrait.png");
    let rust = stdout_of(&built().rust_example, &[&f.artefact, &image]);

    // The tensor the example fed the model: the image preprocessed, repeated over the batch.
    let img = runtime::preprocess::open(&image).expect("decode");
    let one = runtime::preprocess::imagenet(&img, IMAGE);
    let data: Vec<f32> = one.iter().chain(&one).copied().collect();
    let input = Tensor::from_vec(vec![BATCH, 3, IMAGE, IMAGE], data).expect("input");
    check_against_reference(&rust, &input);

    if have_cc() {
        let raw = scratch().join("image.f32");
        write_f32(&raw, &input);
        let c = stdout_of(&c_example(), &[&f.artefact, &raw]);
        assert_eq!(c, rust, "the C and Rust examples differ");
    }
}

#[test]
fn rust_and_c_examples_classify_a_tensor_like_the_reference() {
    let f = fixture();
    let input = Tensor::random_uniform(vec![BATCH, 3, IMAGE, IMAGE], 77, -2.0, 2.0);
    let x = scratch().join("x.npy");
    npy::write(&x, &input).expect("write .npy");
    let rust = stdout_of(&built().rust_example, &[&f.artefact, &x]);
    check_against_reference(&rust, &input);
    // The two batch items differ, so their top-k lines do too.
    let items = parse(&rust);
    assert_ne!(
        items[..TOP].iter().map(|l| l.2).collect::<Vec<_>>(),
        items[TOP..].iter().map(|l| l.2).collect::<Vec<_>>()
    );
    if have_cc() {
        let raw = scratch().join("x.f32");
        write_f32(&raw, &input);
        let c = stdout_of(&c_example(), &[&f.artefact, &raw]);
        assert_eq!(c, rust, "the C and Rust examples differ");
    }
}

#[test]
fn rust_example_rejects_bad_inputs_with_a_message() {
    let f = fixture();
    let dir = scratch();
    let bad = dir.join("notes.txt");
    std::fs::write(&bad, "hello").expect("write");
    let wrong = dir.join("wrong.npy");
    npy::write(&wrong, &Tensor::zeros(vec![1, 3, 8, 8])).expect("write");
    for (input, needle) in [
        (bad.as_path(), "not a .npy file nor an image format"),
        (wrong.as_path(), "shape mismatch"),
        (Path::new("/nonexistent/cat.png"), "cat.png"),
    ] {
        let out = Command::new(&built().rust_example)
            .arg(&f.artefact)
            .arg(input)
            .output()
            .expect("run example");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains(needle), "stderr lacks `{needle}`: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// The synthetic input both examples use without an input file.
fn synthetic_input() -> Tensor {
    let len = BATCH * 3 * IMAGE * IMAGE;
    let data = (0..len)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    Tensor::from_vec(vec![BATCH, 3, IMAGE, IMAGE], data).expect("input")
}

#[test]
fn examples_run_on_cuda_or_say_why_not() {
    let f = fixture();
    let mut examples = vec![("rust", built().rust_example.clone())];
    if have_cc() {
        examples.push(("c", c_example()));
    }
    let mut outputs = Vec::new();
    for (name, exe) in &examples {
        let out = Command::new(exe)
            .arg(&f.artefact)
            .args(["--device", "cuda", "--top", &TOP.to_string()])
            .output()
            .expect("run example");
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
        if out.status.success() {
            // A machine with a GPU: the CUDA run must agree with the reference.
            eprintln!("{name} example ran on CUDA");
            check_against_reference(&stdout, &synthetic_input());
        } else {
            // Without one: a clear runtime error, exit status 1, nothing printed.
            assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
            assert!(
                stderr.contains("device unavailable: CUDA"),
                "{name}: {stderr}"
            );
            assert!(stdout.is_empty(), "{name}: {stdout}");
            eprintln!("{name} example without a GPU: {}", stderr.trim());
        }
        outputs.push((out.status.code(), stdout.into_owned()));
    }
    if let [rust, c] = outputs.as_slice() {
        assert_eq!(rust, c, "the C and Rust examples differ on CUDA");
    }

    // A device name neither knows is a usage error, not a crash.
    for (name, exe) in &examples {
        let out = Command::new(exe)
            .arg(&f.artefact)
            .args(["--device", "tpu"])
            .output()
            .expect("run example");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name} accepted --device tpu");
        assert!(stderr.contains("unknown device 'tpu'"), "{name}: {stderr}");
    }
}
