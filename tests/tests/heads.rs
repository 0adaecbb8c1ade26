//! Output heads (`compile --head logits|softmax|sigmoid|features`, `--op-threshs`, and
//! torchxrayvision's `op_threshs` carried by a checkpoint): every head compiled for the CPU
//! (x86-64-v3, and x86-64-v4 where the host has AVX-512) against the reference executor within
//! 1e-4; the torchxrayvision fixtures against their PyTorch forward (`output` of the golden
//! file); `features` shape and values; heads that do not fit are clear errors; a head compiles
//! for CUDA too (its numerics are checked by the emulator in `compiler/tests/cuda/heads.rs`).

use compiler::builder::{build, ConfigOverrides, DenseNetConfig};
use compiler::driver::{apply_head, HeadKind, Weights};
use compiler::CompileOptions;
use ir::reference::Tensor;
use runtime::{Artefact, Device, Model};
use std::path::{Path, PathBuf};

fn host_has_avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512vl")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512dq")
}

fn cpus() -> Vec<&'static str> {
    let mut cpus = vec!["x86-64-v3"];
    if host_has_avx512() {
        cpus.push("x86-64-v4");
    } else {
        eprintln!("skipping x86-64-v4 runs: this host has no AVX-512");
    }
    cpus
}

fn opts(cpu: &str) -> CompileOptions<'static> {
    CompileOptions {
        cpus: vec![compiler::backend::cpu::CpuOptions {
            cpu: cpu.into(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn model(bytes: &[u8]) -> Model {
    Model::from_artefact(Artefact::read(bytes).expect("artefact")).expect("load")
}

fn run(model: &Model, x: &Tensor) -> Tensor {
    let mut s = model.session(Device::Cpu { threads: 2 }).expect("session");
    let y = s.run(&x.data, &x.shape).expect("run");
    Tensor::from_vec(model.output_shape().to_vec(), y).expect("output")
}

/// A small DenseNet-BC with `classes` outputs and random weights; the classifier's weights
/// scaled by `scale` (large logits saturate sigmoid and make softmax peaky).
fn small(classes: usize, batch: usize, scale: f32) -> (DenseNetConfig, ir::Graph) {
    let o = ConfigOverrides {
        block_config: Some(vec![2, 2]),
        image_size: Some(16),
        num_classes: Some(classes),
        ..Default::default()
    };
    let cfg = DenseNetConfig::resolve(Some("densenet-bc-100"), &o).expect("config");
    let mut g = build(&cfg, batch).expect("build");
    compiler::weights::randomize(&mut g, 5);
    let w = g
        .constants
        .get_mut("classifier.weight")
        .expect("classifier");
    let data: Vec<f32> = w
        .data
        .as_ref()
        .expect("bound")
        .iter()
        .map(|v| v * scale)
        .collect();
    w.data = Some(std::sync::Arc::new(data));
    (cfg, g)
}

#[test]
fn every_head_matches_the_reference_on_cpu() {
    let batch = 3;
    let x = Tensor::random_uniform(vec![batch, 3, 16, 16], 17, -1.0, 1.0);
    // 37 classes: tails at both vector widths; 5 classes: under one vector.
    for (classes, scale) in [(37, 1.0), (37, 60.0), (5, 1.0)] {
        let (cfg, base) = small(classes, batch, scale);
        let mut thresholds: Vec<f32> = (0..classes)
            .map(|c| 0.1 + 0.8 * c as f32 / classes as f32)
            .collect();
        thresholds[1] = f32::NAN;
        let heads: [(HeadKind, Option<Vec<f32>>); 5] = [
            (HeadKind::Logits, None),
            (HeadKind::Softmax, None),
            (HeadKind::Sigmoid, None),
            (HeadKind::OpNorm, Some(thresholds.clone())),
            (HeadKind::Features, None),
        ];
        for (head, t) in heads {
            let mut g = base.clone();
            apply_head(&mut g, Some(head), t, None).expect("head fits");
            let want = ir::reference::run(&g, std::slice::from_ref(&x))
                .expect("reference")
                .remove(0);
            for cpu in cpus() {
                let compiled =
                    compiler::compile_graph(&cfg, g.clone(), &opts(cpu)).expect("compile");
                let info = compiled.manifest().head.clone().expect("head recorded");
                assert_eq!(info.kind, head.name());
                let m = model(&compiled.to_bytes().expect("bytes"));
                let got = run(&m, &x);
                assert_eq!(got.shape, want.shape, "{head} on {cpu}");
                let err = got.rel_error(&want).expect("same shape");
                eprintln!("{classes} classes, scale {scale}, {head} on {cpu}: rel error {err:.2e}");
                assert!(err < 1e-4, "{head} on {cpu}: rel error {err}");
                if head == HeadKind::OpNorm {
                    for row in got.data.chunks(classes) {
                        assert_eq!(row[1], 0.5, "a NaN threshold outputs 0.5");
                    }
                }
                if head == HeadKind::Softmax {
                    for row in got.data.chunks(classes) {
                        let sum: f32 = row.iter().sum();
                        assert!((sum - 1.0).abs() < 1e-5, "softmax row sums to {sum}");
                    }
                }
            }
        }
    }
}

#[test]
fn features_head_outputs_the_pooled_vector_before_the_classifier() {
    let batch = 2;
    let (cfg, base) = small(7, batch, 1.0);
    let x = Tensor::random_uniform(vec![batch, 3, 16, 16], 3, -1.0, 1.0);
    let logits = ir::reference::run(&base, std::slice::from_ref(&x))
        .expect("ref")
        .remove(0);
    let mut g = base.clone();
    apply_head(&mut g, Some(HeadKind::Features), None, None).expect("features");
    assert!(
        !g.constants.contains_key("classifier.weight"),
        "the classifier is gone"
    );
    let compiled = compiler::compile_graph(&cfg, g, &opts("x86-64-v3")).expect("compile");
    let m = model(&compiled.to_bytes().expect("bytes"));
    let channels = base.constants["classifier.weight"].shape[1];
    assert_eq!(m.output_shape(), [batch, channels]);
    assert_eq!(m.manifest().output.name, "features");
    let feats = run(&m, &x);
    // The classifier applied to the features gives the logits.
    let w = base.constant_data("classifier.weight").expect("w");
    let b = base.constant_data("classifier.bias").expect("b");
    let mut again = Vec::new();
    for row in feats.data.chunks(channels) {
        for o in 0..7 {
            let acc: f64 = row
                .iter()
                .zip(&w[o * channels..][..channels])
                .map(|(&a, &w)| f64::from(a) * f64::from(w))
                .sum::<f64>()
                + f64::from(b[o]);
            again.push(acc as f32);
        }
    }
    let again = Tensor::from_vec(vec![batch, 7], again).expect("t");
    let err = again.rel_error(&logits).expect("shape");
    assert!(err < 1e-4, "classifier(features) vs logits: {err}");
}

fn checkpoints() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../compiler/tests/data/checkpoints")
}

fn golden(file: &str) -> compiler::weights::TensorMap {
    compiler::weights::read_tensors(&checkpoints().join(format!("{file}.golden.safetensors")))
        .expect("golden")
}

fn tensor(g: &compiler::weights::TensorMap, name: &str) -> Tensor {
    let t = &g[name];
    Tensor::from_vec(t.shape.clone(), t.as_f32().expect("f32").to_vec()).expect("tensor")
}

fn fixture_config(classes: usize, in_channels: usize) -> DenseNetConfig {
    let o = ConfigOverrides {
        growth_rate: Some(4),
        block_config: Some(vec![2, 2]),
        num_init_features: Some(8),
        bn_size: Some(2),
        num_classes: Some(classes),
        in_channels: Some(in_channels),
        image_size: Some(32),
        ..Default::default()
    };
    DenseNetConfig::resolve(Some("densenet121"), &o).expect("config")
}

fn compile_fixture(
    file: &str,
    cfg: &DenseNetConfig,
    batch: usize,
    head: Option<HeadKind>,
    cpu: &str,
) -> Result<Vec<u8>, compiler::CompileError> {
    let mut o = opts(cpu);
    o.batch = batch;
    o.head = head;
    compiler::compile(cfg, &Weights::File(checkpoints().join(file)), &o)?.to_bytes()
}

#[test]
fn torchxrayvision_checkpoints_get_their_own_forward() {
    let cfg = fixture_config(6, 1);
    for file in ["xrv_densenet.pt", "xrv_densenet_legacy.pt"] {
        let gold = golden(file);
        let x = tensor(&gold, "input");
        for cpu in cpus() {
            // No --head: the checkpoint's op_threshs select sigmoid + op_norm.
            let m = model(&compile_fixture(file, &cfg, 1, None, cpu).expect("compile"));
            assert_eq!(m.manifest().head.as_ref().expect("head").kind, "op-norm");
            let err = run(&m, &x)
                .rel_error(&tensor(&gold, "output"))
                .expect("shape");
            eprintln!("{file} op-norm on {cpu}: rel error vs PyTorch {err:.2e}");
            assert!(err < 1e-4, "{file} on {cpu}: {err}");
            // --head logits says otherwise.
            let m = model(&compile_fixture(file, &cfg, 1, Some(HeadKind::Logits), cpu).expect("c"));
            let err = run(&m, &x)
                .rel_error(&tensor(&gold, "logits"))
                .expect("shape");
            assert!(err < 1e-4, "{file} logits on {cpu}: {err}");
        }
    }
}

#[test]
fn chexnet_with_a_sigmoid_head_matches_its_forward() {
    let cfg = fixture_config(5, 3);
    let file = "chexnet_model.pth.tar";
    let gold = golden(file);
    let x = tensor(&gold, "input");
    let m = model(
        &compile_fixture(file, &cfg, x.shape[0], Some(HeadKind::Sigmoid), "x86-64-v3")
            .expect("compile"),
    );
    let err = run(&m, &x)
        .rel_error(&tensor(&gold, "output"))
        .expect("shape");
    assert!(err < 1e-4, "CheXNet sigmoid: {err}");
}

#[test]
fn op_threshs_supplied_for_a_checkpoint_without_them() {
    // CheXNet carries no thresholds: --op-threshs gives them, and the output is op_norm of
    // the golden sigmoid output.
    let cfg = fixture_config(5, 3);
    let file = "chexnet_model.pth.tar";
    let gold = golden(file);
    let x = tensor(&gold, "input");
    let t = vec![0.3f32, f32::NAN, 0.5, 0.7, 0.05];
    let mut o = opts("x86-64-v3");
    o.batch = x.shape[0];
    o.op_threshs = Some(t.clone());
    let c = compiler::compile(&cfg, &Weights::File(checkpoints().join(file)), &o).expect("compile");
    let m = model(&c.to_bytes().expect("bytes"));
    let sig = tensor(&gold, "output");
    let want: Vec<f32> = sig
        .data
        .iter()
        .enumerate()
        .map(|(i, &y)| ir::ops::op_norm(f64::from(y), f64::from(t[i % 5])) as f32)
        .collect();
    let want = Tensor::from_vec(sig.shape, want).expect("t");
    let err = run(&m, &x).rel_error(&want).expect("shape");
    assert!(err < 1e-4, "op_norm with given thresholds: {err}");
}

#[test]
fn heads_that_do_not_fit_are_errors() {
    let (cfg, base) = small(4, 1, 1.0);
    let msg = |r: Result<(), compiler::CompileError>| r.expect_err("an error").to_string();
    // op-norm without thresholds
    let e = msg(apply_head(
        &mut base.clone(),
        Some(HeadKind::OpNorm),
        None,
        None,
    ));
    assert!(e.contains("--op-threshs"), "{e}");
    // wrong number of thresholds
    let e = msg(apply_head(
        &mut base.clone(),
        None,
        Some(vec![0.5; 3]),
        None,
    ));
    assert!(
        e.contains("3 operating-point thresholds for 4 classes"),
        "{e}"
    );
    // thresholds with another head
    let e = msg(apply_head(
        &mut base.clone(),
        Some(HeadKind::Softmax),
        Some(vec![0.5; 4]),
        None,
    ));
    assert!(
        e.contains("--op-threshs applies to the op-norm head"),
        "{e}"
    );
    // a head on a graph whose output is not the classifier
    let mut g = base.clone();
    apply_head(&mut g, Some(HeadKind::Features), None, None).expect("features");
    let e = msg(apply_head(&mut g, Some(HeadKind::Sigmoid), None, None));
    assert!(e.contains("does not fit this graph"), "{e}");
    // unknown names
    let e = "bogus".parse::<HeadKind>().expect_err("unknown");
    assert!(e.contains("logits, softmax, sigmoid"), "{e}");
    // CUDA has a head kernel (its numerics: compiler/tests/cuda/heads.rs): the head is the
    // last launch of the table, and the manifest records it.
    let mut g = base;
    apply_head(&mut g, Some(HeadKind::Softmax), None, None).expect("softmax");
    let o = CompileOptions {
        cpus: Vec::new(),
        cuda: Some(Default::default()),
        assemble_ptx: false,
        ..Default::default()
    };
    let compiled = compiler::compile_graph(&cfg, g, &o).expect("a CUDA softmax head");
    let cuda = compiled.manifest().cuda.as_ref().expect("cuda target");
    let last = cuda.launches.last().expect("launches");
    assert!(last.entry.ends_with("_softmax"), "{}", last.entry);
    let head = compiled.manifest().head.as_ref().expect("head");
    assert_eq!(head.kind, "softmax");
}

#[test]
fn the_command_line_compiles_inspects_and_runs_heads() {
    let (front, back) = tests::cli_binaries();
    let dir = std::env::temp_dir().join(format!("densenetc-heads-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let xrv = checkpoints().join("xrv_densenet.pt");
    let arch = [
        "--arch",
        "densenet121",
        "--growth-rate",
        "4",
        "--block-config",
        "2,2",
        "--init-features",
        "8",
        "--bn-size",
        "2",
        "--num-classes",
        "6",
        "--in-channels",
        "1",
        "--image-size",
        "32",
        "--cpu",
        "x86-64-v3",
    ];
    let out = dir.join("xrv.dnc");
    let compile = |extra: &[&str]| {
        std::process::Command::new(back)
            .arg("compile")
            .args(arch)
            .arg("--weights")
            .arg(&xrv)
            .arg("-o")
            .arg(&out)
            .args(extra)
            .output()
            .expect("runs")
    };
    let o = compile(&["--head", "bogus"]);
    assert_eq!(o.status.code(), Some(2), "a usage error");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("unknown head `bogus`"), "{err}");
    let o = compile(&["--op-threshs", "0.5,0.5"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("2 operating-point thresholds for 6 classes"),
        "{err}"
    );
    let o = compile(&[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = std::process::Command::new(back)
        .arg("inspect")
        .arg(&out)
        .output()
        .expect("inspect");
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("head:          op-norm (6 classes)"),
        "{text}"
    );
    let o = std::process::Command::new(front)
        .args(["run"])
        .arg(&out)
        .args(["--random-input", "1", "--top", "2"])
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(text.contains("image 0 (op-norm probabilities):"), "{text}");
    assert!(text.contains("above 0.5:"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn head_ops_print_parse_and_verify() {
    let (_, base) = small(4, 2, 1.0);
    for (head, t) in [
        (HeadKind::Softmax, None),
        (HeadKind::Sigmoid, None),
        (HeadKind::OpNorm, Some(vec![0.2, f32::NAN, 0.5, 0.9])),
    ] {
        let mut g = base.clone();
        apply_head(&mut g, Some(head), t, None).expect("head");
        ir::verify::verify(&g).expect("verifies");
        // The parsed graph is unbound: compare without the `= <bound>` markers.
        let text = ir::text::print(&g).replace(" = <bound>", "");
        let again = ir::text::parse(&text).expect("parses");
        assert_eq!(ir::text::print(&again), text, "{head} round-trips");
        let out = g.node(g.outputs()[0]);
        assert_eq!(out.ty.shape, [2, 4], "{head} keeps the shape");
        assert!(
            text.contains(out.op.mnemonic()),
            "{head}: {}",
            out.op.mnemonic()
        );
    }
}

/// `compiler::compile` (the CLI's path) keeps every head on CUDA too: random weights with a
/// sigmoid head and with a softmax head compile for `--target cuda`, the head the last launch.
#[test]
fn the_compile_driver_accepts_heads_for_cuda() {
    let o = ConfigOverrides {
        block_config: Some(vec![2, 2]),
        image_size: Some(12),
        ..Default::default()
    };
    let cfg = DenseNetConfig::resolve(Some("densenet-bc-100"), &o).expect("config");
    for kind in [HeadKind::Sigmoid, HeadKind::Softmax] {
        let opts = CompileOptions {
            cpus: Vec::new(),
            cuda: Some(Default::default()),
            assemble_ptx: false,
            head: Some(kind),
            ..Default::default()
        };
        let compiled = compiler::compile(&cfg, &Weights::Random(3), &opts).expect("compile");
        let cuda = compiled.manifest().cuda.as_ref().expect("cuda target");
        let last = cuda.launches.last().expect("launches");
        let name = compiled
            .manifest()
            .head
            .as_ref()
            .expect("head")
            .kind
            .clone();
        assert!(last.entry.ends_with(&format!("_{name}")), "{}", last.entry);
    }
}

/// A NaN threshold outputs 0.5 whatever the logit, a NaN logit included (torchxrayvision's
/// `op_norm`, the reference and the CUDA kernel); a known threshold passes a NaN through.
#[test]
fn op_norm_with_nan_thresholds_outputs_one_half_even_for_nan_logits() {
    let (cfg, mut g) = small(4, 1, 1.0);
    let thresholds = vec![f32::NAN, 0.3, f32::NAN, 0.7];
    apply_head(&mut g, Some(HeadKind::OpNorm), Some(thresholds), None).expect("op-norm");
    let x = Tensor::from_vec(vec![1, 3, 16, 16], vec![f32::NAN; 3 * 16 * 16]).expect("x");
    for cpu in cpus() {
        let bytes = compiler::compile_graph(&cfg, g.clone(), &opts(cpu))
            .and_then(|c| c.to_bytes())
            .expect("compile");
        let y = run(&model(&bytes), &x);
        assert_eq!(y.data[0], 0.5, "{cpu}: {:?}", y.data);
        assert_eq!(y.data[2], 0.5, "{cpu}: {:?}", y.data);
        assert!(
            y.data[1].is_nan() && y.data[3].is_nan(),
            "{cpu}: {:?}",
            y.data
        );
    }
}
