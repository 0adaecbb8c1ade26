//! A *trained* DenseNet-BC (`tests/fixtures/trained/shapes10`, made by `tools/train_tiny.py`:
//! 10 procedural shape/colour classes, 256 held-out test images) compiled with
//! `compiler::compile` for the CPU: the f32 build must match PyTorch's float32 logits within
//! 1e-4, agree with its top-1 on every image and reach the recorded accuracy; the bf16 build
//! (x86-64-v4 with AVX512_BF16, and sapphirerapids on the AMX tiles, each run only where the
//! host has it) must stay within
//! `CPU_BF16_REL_BOUND` of the f32 logits and agree with the f32 top-1 on ≥ 99% of the images.

use compiler::backend::cpu::{CpuOptions, CPU_BF16_REL_BOUND};
use compiler::backend::precision::Precision;
use compiler::builder::{DenseNetConfig, Stem};
use compiler::driver::Weights;
use compiler::CompileOptions;
use ir::reference::{npy, Tensor};
use runtime::{Artefact, Device, Model};
use std::path::{Path, PathBuf};

const F32_BOUND: f64 = 1e-4;
const MIN_BF16_AGREEMENT: f64 = 0.99;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/trained/shapes10")
}

/// The fixture's `config.json`: the DenseNet config, the batch (the number of test images)
/// and the `generator` record.
fn config() -> (DenseNetConfig, usize, serde_json::Value) {
    let path = fixture_dir().join("config.json");
    let text = std::fs::read_to_string(&path).expect("reads config.json");
    let j: serde_json::Value = serde_json::from_str(&text).expect("config.json is JSON");
    let uint = |k: &str| -> usize {
        let v = j[k]
            .as_u64()
            .unwrap_or_else(|| panic!("`{k}` is an integer"));
        usize::try_from(v).expect("fits")
    };
    let block_config = j["block_config"]
        .as_array()
        .expect("block_config")
        .iter()
        .map(|v| usize::try_from(v.as_u64().expect("block_config entry")).expect("fits"))
        .collect();
    let stem = match j["stem"].as_str() {
        Some("imagenet") => Stem::Imagenet,
        Some("cifar") => Stem::Cifar,
        other => panic!("unknown stem {other:?}"),
    };
    let cfg = DenseNetConfig {
        name: "shapes10".to_owned(),
        growth_rate: uint("growth_rate"),
        block_config,
        num_init_features: uint("num_init_features"),
        bn_size: uint("bn_size"),
        compression: j["compression"].as_f64().expect("compression"),
        num_classes: uint("num_classes"),
        in_channels: uint("in_channels"),
        image_size: uint("image_size"),
        stem,
        conv_bias: j["conv_bias"].as_bool().expect("conv_bias"),
        bn_eps: j["generator"]["bn_eps"].as_f64().unwrap_or(1e-5) as f32,
    };
    cfg.validate().expect("a valid config");
    let batch = uint("batch");
    (cfg, batch, j["generator"].clone())
}

/// A C-order `.npy` fixture of dtype `descr` (`|u1`, `<i8`) with `item`-byte values: its
/// shape and raw payload.
fn read_npy_raw(path: &Path, descr: &str, item: usize) -> (Vec<usize>, Vec<u8>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let raw = ::npy::parse(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(raw.descr, descr, "{}", path.display());
    assert_eq!(raw.payload.len(), raw.len() * item, "{}", path.display());
    (raw.shape.clone(), raw.payload.to_vec())
}

/// The normalised test images, x = (u8 / 255 - 0.5) / 0.25, as torch computes it in float32.
fn input() -> Tensor {
    let (shape, u8s) = read_npy_raw(&fixture_dir().join("test_images_u8.npy"), "|u1", 1);
    let data = u8s
        .iter()
        .map(|&u| (f32::from(u) / 255.0 - 0.5) / 0.25)
        .collect();
    Tensor::from_vec(shape, data).expect("images")
}

fn labels() -> Vec<usize> {
    let (shape, raw) = read_npy_raw(&fixture_dir().join("test_labels.npy"), "<i8", 8);
    assert_eq!(shape.len(), 1);
    raw.chunks_exact(8)
        .map(|b| {
            let v = i64::from_le_bytes(b.try_into().expect("8 bytes"));
            usize::try_from(v).expect("a class index")
        })
        .collect()
}

/// Each row's index of its largest value (the first one on ties, as torch's argmax).
fn top1(logits: &Tensor) -> Vec<usize> {
    let classes = logits.shape[1];
    logits
        .data
        .chunks_exact(classes)
        .map(|row| {
            let mut best = 0;
            for (i, &v) in row.iter().enumerate() {
                if v > row[best] {
                    best = i;
                }
            }
            best
        })
        .collect()
}

fn agreement(a: &[usize], b: &[usize]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / a.len() as f64
}

fn compile(cfg: &DenseNetConfig, batch: usize, cpu: &str, precision: Precision) -> Vec<u8> {
    let opts = CompileOptions {
        batch,
        cpus: vec![CpuOptions {
            cpu: cpu.into(),
            ..Default::default()
        }],
        precision,
        ..Default::default()
    };
    let weights = Weights::File(fixture_dir().join("weights.safetensors"));
    compiler::compile(cfg, &weights, &opts)
        .and_then(|c| c.to_bytes())
        .expect("compiles")
}

fn run(bytes: &[u8], x: &Tensor) -> Tensor {
    let model = Model::from_artefact(Artefact::read(bytes).expect("artefact")).expect("load");
    let mut s = model.session(Device::Cpu { threads: 2 }).expect("session");
    let y = s.run(&x.data, &x.shape).expect("run");
    Tensor::from_vec(model.output_shape().to_vec(), y).expect("output")
}

fn host_has_avx512_bf16() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512vl")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512dq")
        && std::arch::is_x86_feature_detected!("avx512bf16")
}

#[test]
fn trained_shapes10_f32_matches_pytorch_and_bf16_keeps_its_predictions() {
    let (cfg, batch, gen) = config();
    let x = input();
    let labels = labels();
    assert_eq!(
        x.shape,
        [batch, cfg.in_channels, cfg.image_size, cfg.image_size]
    );
    assert_eq!(labels.len(), batch);
    let torch = npy::read(fixture_dir().join("torch_logits.npy")).expect("torch logits");
    assert_eq!(torch.shape, [batch, cfg.num_classes]);
    let recorded = gen["test_accuracy"].as_f64().expect("test_accuracy");
    let torch_top1 = top1(&torch);
    assert_eq!(
        agreement(&torch_top1, &labels),
        recorded,
        "the fixture's logits give its recorded accuracy"
    );

    // f32 on AVX2.
    let f32_logits = run(&compile(&cfg, batch, "x86-64-v3", Precision::Fp32), &x);
    let err = f32_logits.rel_error(&torch).expect("same shape");
    let f32_top1 = top1(&f32_logits);
    let vs_torch = agreement(&f32_top1, &torch_top1);
    let accuracy = agreement(&f32_top1, &labels);
    eprintln!(
        "f32 (x86-64-v3): logits rel error vs torch {err:.2e}, top-1 agreement with torch \
         {vs_torch:.4}, accuracy {accuracy:.4} (recorded {recorded:.4})"
    );
    assert!(err <= F32_BOUND, "f32 logits rel error {err:e}");
    assert_eq!(vs_torch, 1.0, "f32 top-1 differs from torch's");
    assert_eq!(accuracy, recorded, "f32 accuracy");

    // bf16 with vdpbf16ps (AVX-512 with AVX512_BF16) and on the AMX tiles (sapphirerapids):
    // compiled everywhere, run where the host has it.
    let bf16_host = host_has_avx512_bf16();
    for (cpu, runs) in [
        ("x86-64-v4", bf16_host),
        ("sapphirerapids", bf16_host && runtime::host_has_amx()),
    ] {
        let bf16 = compile(&cfg, batch, cpu, Precision::Bf16);
        if !runs {
            eprintln!("note: the host cannot run {cpu} bf16 (AVX512_BF16, AMX): compiled, not run");
            continue;
        }
        let bf16_logits = run(&bf16, &x);
        let err = bf16_logits.rel_error(&f32_logits).expect("same shape");
        let bf16_top1 = top1(&bf16_logits);
        let vs_f32 = agreement(&bf16_top1, &f32_top1);
        let accuracy = agreement(&bf16_top1, &labels);
        eprintln!(
            "bf16 ({cpu}): logits rel error vs f32 {err:.2e} (bound {CPU_BF16_REL_BOUND:e}), \
             top-1 agreement with f32 {vs_f32:.4}, accuracy {accuracy:.4}"
        );
        assert!(
            err <= f64::from(CPU_BF16_REL_BOUND),
            "bf16 ({cpu}) logits rel error {err:e}"
        );
        assert!(
            vs_f32 >= MIN_BF16_AGREEMENT,
            "bf16 ({cpu}) top-1 agreement with f32 {vs_f32}"
        );
    }
}
