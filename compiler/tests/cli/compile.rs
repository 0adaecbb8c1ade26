//! `densenetc compile | run | bench | inspect OUT.dnc`, run as a user runs them,
//! checked against the reference executor and the PyTorch golden fixture.

use super::{fails_with, ok};
use compiler::builder::{self, ConfigOverrides, DenseNetConfig};
use ir::reference::{npy, Tensor};
use std::path::{Path, PathBuf};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("densenetc-cli-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

const SMALL: [&str; 10] = [
    "--arch",
    "densenet-bc-100",
    "--block-config",
    "2,2",
    "--image-size",
    "16",
    "--batch",
    "2",
    "--random-weights",
    "3",
];

/// Compiles the small model once per test into `dir`.
fn compile_small(dir: &Path) -> PathBuf {
    let out = dir.join("small.dnc");
    let mut args = vec!["compile"];
    args.extend(SMALL);
    args.extend(["--cpu", "x86-64-v3", "-o", s(&out)]);
    let line = ok(&args);
    assert!(line.starts_with("compiled "), "{line}");
    out
}

fn small_reference(input: &Tensor) -> Tensor {
    let o = ConfigOverrides {
        block_config: Some(vec![2, 2]),
        image_size: Some(16),
        ..Default::default()
    };
    let cfg = DenseNetConfig::resolve(Some("densenet-bc-100"), &o).expect("config");
    let mut g = builder::build(&cfg, 2).expect("build");
    compiler::weights::randomize(&mut g, 3);
    ir::reference::run(&g, std::slice::from_ref(input))
        .expect("reference")
        .remove(0)
}

#[test]
fn compiled_small_model_matches_the_reference() {
    let dir = temp_dir("small");
    let dnc = compile_small(&dir);
    let input = Tensor::random_uniform(vec![2, 3, 16, 16], 11, -1.0, 1.0);
    let x = dir.join("x.npy");
    let y = dir.join("y.npy");
    npy::write(&x, &input).expect("write input");
    let text = ok(&[
        "run",
        s(&dnc),
        "--input",
        s(&x),
        "--output",
        s(&y),
        "--top",
        "3",
    ]);
    assert!(text.contains("image 1:"), "{text}");
    let got = npy::read(&y).expect("read output");
    let want = small_reference(&input);
    assert_eq!(got.shape, want.shape);
    let rel = got.rel_error(&want).expect("same shape");
    assert!(rel <= 1e-4, "relative error {rel}");

    // inspect OUT.dnc: manifest and section table.
    let text = ok(&["inspect", s(&dnc)]);
    for needle in [
        "compiler:",
        "densenet",
        "arena bytes:",
        "manifest",
        "weights",
        "cpu_so",
    ] {
        assert!(text.contains(needle), "inspect lacks {needle}: {text}");
    }

    // bench --json keys.
    let v: serde_json::Value = serde_json::from_str(&ok(&[
        "bench",
        s(&dnc),
        "--iters",
        "3",
        "--warmup",
        "1",
        "--json",
    ]))
    .expect("bench JSON");
    for key in [
        "median_ms",
        "p90_ms",
        "iters",
        "threads",
        "batch",
        "device",
        "samples_ms",
    ] {
        assert!(v.get(key).is_some(), "bench --json lacks {key}: {v}");
    }
    assert_eq!(v["device"], "cpu");
    assert_eq!(v["batch"], 2);
    assert_eq!(v["iters"], 3);
    let text = ok(&["bench", s(&dnc), "--iters", "2", "--profile"]);
    assert!(text.contains("total"), "{text}");
    assert!(text.contains("per kernel class"), "{text}");
    // The profile: every kernel once, classes that add up to it.
    let v: serde_json::Value = serde_json::from_str(&ok(&[
        "bench",
        s(&dnc),
        "--iters",
        "2",
        "--profile",
        "--json",
    ]))
    .expect("bench JSON");
    let kernels = v["profile"].as_array().expect("profile");
    let classes = v["profile_classes"].as_array().expect("profile_classes");
    let count = |vs: &[serde_json::Value], key: &str| -> u64 {
        vs.iter().map(|x| x[key].as_u64().expect(key)).sum()
    };
    assert_eq!(count(classes, "kernels"), kernels.len() as u64);
    assert_eq!(count(classes, "macs"), count(kernels, "macs"));
    for class in ["conv1x1", "conv3x3", "gavgpool", "linear"] {
        assert!(
            classes.iter().any(|c| c["op"] == class),
            "no {class} class in {classes:?}"
        );
    }

    // A wrong input shape is an error, not a crash.
    let bad = dir.join("bad.npy");
    npy::write(&bad, &Tensor::zeros(vec![2, 3, 8, 8])).expect("write");
    fails_with(&["run", s(&dnc), "--input", s(&bad)], "shape");

    // A truncated artefact is an error, not a crash.
    let bytes = std::fs::read(&dnc).expect("read artefact");
    let cut = dir.join("cut.dnc");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).expect("write");
    fails_with(&["run", s(&cut), "--input", s(&x)], "truncated");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn compile_errors_are_clear() {
    let dir = temp_dir("errors");
    let out = dir.join("x.dnc");
    fails_with(
        &["compile", "--arch", "densenet-bc-100", "-o", s(&out)],
        "compile needs weights",
    );
    fails_with(
        &[
            "compile",
            "--arch",
            "densenet-bc-100",
            "--random-weights",
            "1",
            "--target",
            "gpu",
            "-o",
            s(&out),
        ],
        "unknown target 'gpu': expected cpu, cuda or cpu,cuda",
    );
    let tf32 = [
        "compile",
        "--arch",
        "densenet-bc-100",
        "--random-weights",
        "1",
    ];
    for p in ["tf32", "fp16"] {
        fails_with(
            &[&tf32[..], &["--precision", p, "-o", s(&out)]].concat(),
            &format!("--precision {p} has no CPU kernels"),
        );
    }
    // A named CPU below x86-64-v3 (32-bit ones included, which LLVM would abort on) is an
    // error that names the levels to use instead.
    for c in ["pentium4", "sandybridge"] {
        fails_with(
            &[&tf32[..], &["--cpu", c, "-o", s(&out)]].concat(),
            &format!("CPU `{c}` lacks AVX2 and FMA (x86-64-v3)"),
        );
    }
    // bf16 needs AVX512_BF16: a CPU without it is an error naming it.
    fails_with(
        &[
            &tf32[..],
            &["--precision", "bf16", "--cpu", "x86-64-v3", "-o", s(&out)],
        ]
        .concat(),
        "--precision bf16 needs AVX512_BF16 (vdpbf16ps), which CPU `x86-64-v3` lacks: compile for \
         a CPU that has it (--cpu znver4, znver5, sapphirerapids, x86-64-v4, …) or use \
         --precision fp32",
    );
    fails_with(
        &[
            &tf32[..],
            &[
                "--precision",
                "bf16",
                "--cpu",
                "skylake-avx512",
                "-o",
                s(&out),
            ],
        ]
        .concat(),
        "which CPU `skylake-avx512` lacks",
    );
    fails_with(
        &[&tf32[..], &["--precision", "fp8", "-o", s(&out)]].concat(),
        "unknown precision `fp8`: expected fp32, tf32, fp16 or bf16",
    );

    let _ = std::fs::remove_dir_all(&dir);
}

/// `--precision tf32|fp16|bf16` reaches the CUDA code and the manifest. tf32 and fp16 are
/// CUDA-only; bf16 applies to both targets (the CPU code of a cpu,cuda artefact is bf16 too,
/// compiled for a CPU with AVX512_BF16 and run where the host has it).
#[test]
fn tensor_core_precisions_are_compiled_recorded_and_shown() {
    let help = ok(&["compile", "--help"]);
    assert!(
        help.contains("fp32|tf32|fp16|bf16") && help.contains("AVX512_BF16"),
        "{help}"
    );
    let dir = temp_dir("precision");
    for p in ["tf32", "fp16", "bf16"] {
        let dnc = dir.join(format!("{p}.dnc"));
        let mut args = vec!["compile"];
        args.extend(SMALL);
        let (target, cpu) = if p == "bf16" {
            ("cpu,cuda", "znver4")
        } else {
            ("cuda", "native")
        };
        args.extend([
            "--target",
            target,
            "--cpu",
            cpu,
            "--precision",
            p,
            "-o",
            s(&dnc),
        ]);
        let text = ok(&args);
        let want = if p == "bf16" {
            "cpu znver4 bf16 + cuda sm_80 bf16".to_string()
        } else {
            format!("cuda sm_80 {p}")
        };
        assert!(text.contains(&want), "{text}");
        if p == "bf16" {
            let text = ok(&["inspect", s(&dnc)]);
            assert!(text.contains("cpu:           znver4 bf16"), "{text}");
        }
        let text = ok(&["inspect", s(&dnc)]);
        assert!(
            text.contains(&format!("cuda:          sm_80 {p}")),
            "{text}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&ok(&["inspect", s(&dnc), "--json"])).expect("json");
        assert_eq!(json["cuda"]["precision"], p, "{json}");
        if p == "bf16" {
            assert_eq!(json["cpu"]["precision"], "bf16", "{json}");
            assert!(
                json["cpu"]["features"]
                    .as_str()
                    .is_some_and(|f| f.contains("+avx512bf16")),
                "{json}"
            );
            if std::arch::is_x86_feature_detected!("avx512bf16") {
                ok(&["run", s(&dnc), "--random-input", "1", "--device", "cpu"]);
            } else {
                eprintln!("note: the host has no AVX512_BF16: the bf16 CPU code is not run");
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn golden_bc40_matches_pytorch() {
    let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/golden/bc40_cifar");
    let dir = temp_dir("golden");
    let dnc = dir.join("bc40.dnc");
    let y = dir.join("y.npy");
    ok(&[
        "compile",
        "--arch",
        "densenet-bc-100",
        "--block-config",
        "6,6,6",
        "--num-classes",
        "10",
        "--image-size",
        "32",
        "--batch",
        "2",
        "--weights",
        s(&fx.join("weights.pth")),
        "-o",
        s(&dnc),
    ]);
    ok(&[
        "run",
        s(&dnc),
        "--input",
        s(&fx.join("input.npy")),
        "--output",
        s(&y),
    ]);
    let got = npy::read(&y).expect("output");
    let want = npy::read(fx.join("output.npy")).expect("golden");
    let rel = got.rel_error(&want).expect("same shape");
    println!("bc40 golden through compile + run: relative error {rel:.2e}");
    assert!(rel <= 1e-4, "relative error {rel}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn labels_are_stored_and_printed_by_run() {
    let dir = temp_dir("labels");
    let labels = dir.join("labels.txt");
    let names: Vec<String> = (0..10).map(|i| format!("class-{i}")).collect();
    std::fs::write(&labels, names.join("\n")).expect("labels");
    let dnc = dir.join("l.dnc");
    let mut args = vec!["compile"];
    args.extend(SMALL);
    args.extend(["--labels", s(&labels), "-o", s(&dnc)]);
    ok(&args);
    let text = ok(&[
        "run",
        s(&dnc),
        "--random-input",
        "4",
        "--top",
        "2",
        "--threads",
        "2",
    ]);
    assert!(text.contains("class-"), "{text}");
    let text = ok(&["inspect", s(&dnc)]);
    assert!(text.contains("10 names"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn run_takes_an_image_preprocessed_like_torchvision() {
    let dir = temp_dir("image");
    let dnc = compile_small(&dir);
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/images");
    let y = dir.join("y.npy");
    for image in ["rgb_landscape.png", "palette.png", "rgb_landscape.jpg"] {
        let path = fixtures.join(image);
        let text = ok(&[
            "run",
            s(&dnc),
            "--input",
            s(&path),
            "--output",
            s(&y),
            "--top",
            "3",
        ]);
        assert_eq!(text.lines().filter(|l| l.starts_with("  ")).count(), 6);
        // The image, at the artefact's 16x16 (Resize(18), CenterCrop(16)), fills the batch.
        let img = runtime::preprocess::open(&path).expect("decode");
        let one = runtime::preprocess::imagenet(&img, 16);
        let x = Tensor::from_vec(vec![2, 3, 16, 16], [one.clone(), one].concat()).expect("x");
        let want = small_reference(&x);
        let got = npy::read(&y).expect("output");
        let rel = got.rel_error(&want).expect("same shape");
        assert!(rel <= 1e-4, "{image}: relative error {rel}");
        // The top-1 class printed is the reference's.
        let top1: usize = text
            .lines()
            .nth(1)
            .and_then(|l| l.split_whitespace().next())
            .and_then(|c| c.parse().ok())
            .expect("a class index");
        let row = &want.data[..10];
        let best = (0..10)
            .max_by(|&a, &b| row[a].total_cmp(&row[b]))
            .expect("classes");
        assert!(
            top1 == best || (row[top1] - row[best]).abs() <= 1e-4 * want.max_abs() as f32,
            "{text}"
        );
    }

    // Unreadable, truncated and missing images are clear errors naming the file.
    let bad = dir.join("bad.png");
    std::fs::write(&bad, b"\x89PNG\r\n\x1a\nnot really").expect("write");
    fails_with(&["run", s(&dnc), "--input", s(&bad)], "bad.png");
    fails_with(&["run", s(&dnc), "--input", s(&bad)], "cannot decode");
    let txt = dir.join("notes.txt");
    std::fs::write(&txt, "hello").expect("write");
    fails_with(
        &["run", s(&dnc), "--input", s(&txt)],
        "not a .npy file nor an image format",
    );
    fails_with(
        &["run", s(&dnc), "--input", s(&dir.join("cat.jpg"))],
        "cat.jpg",
    );

    // A model that does not take 3 channels takes no image.
    let grey = dir.join("grey.dnc");
    let mut args = vec!["compile"];
    args.extend(SMALL);
    args.extend(["--in-channels", "1", "-o", s(&grey)]);
    ok(&args);
    fails_with(
        &["run", s(&grey), "--input", s(&fixtures.join("grey.png"))],
        "the model takes 1 input channels; an image gives 3",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn cuda_target_compiles_and_the_cuda_device_needs_a_driver() {
    let dir = temp_dir("cuda");
    let dnc = dir.join("c.dnc");
    let mut args = vec!["compile"];
    args.extend(SMALL);
    args.extend([
        "--target",
        "cpu,cuda",
        "--cuda-arch",
        "sm_90",
        "-o",
        s(&dnc),
    ]);
    let text = ok(&args);
    assert!(text.contains("cpu native + cuda sm_90"), "{text}");
    assert!(text.contains("CUDA launches"), "{text}");
    let text = ok(&["inspect", s(&dnc)]);
    assert!(text.contains("cuda:          sm_90"), "{text}");
    assert!(text.contains("ptx"), "{text}");
    // The CPU still runs it.
    ok(&["run", s(&dnc), "--random-input", "1"]);
    let no_driver = runtime::cuda::driver::probe().is_err();
    if no_driver {
        for cmd in [
            vec!["run", s(&dnc), "--random-input", "1", "--device", "cuda"],
            vec!["bench", s(&dnc), "--device", "cuda:0", "--iters", "1"],
        ] {
            fails_with(&cmd, "CUDA: no CUDA driver (libcuda.so.1");
        }
    }
    fails_with(
        &["run", s(&dnc), "--random-input", "1", "--device", "tpu"],
        "unknown device 'tpu'",
    );
    let _ = std::fs::remove_dir_all(&dir);
}
