//! Compiled artefact vs reference executor on every preset (ARCHITECTURE.md, Targets: every
//! backend within 1e-4 relative error of the reference on every preset and on custom configs).
//!
//! Each case builds the real preset (its growth rate, block configuration, stem, bottleneck
//! and compression) with random weights at a reduced image size, compiles it exactly as
//! `densenetc compile` does (all passes, kernel mapping, LLVM CPU code, artefact bytes), loads
//! the artefact with `runtime::Model` and runs it in a `Session` on two threads, and compares
//! the logits with `ir::reference::run` on the unoptimised graph. Image sizes are the smallest
//! that keep every layer valid or close to it (ImageNet stem: 32 → 1×1 after the last
//! transition; odd sizes 29, 33, 35 round differently in the stem and every pool), batches of
//! 1 to 3. Each test prints `preset ... relative error ...` (run with `--nocapture`).
//!
//! The bf16 kernels (`--precision bf16`) are checked the same way against the f32 reference,
//! within `CPU_BF16_REL_BOUND`.

use compiler::backend::precision::Precision;
use compiler::builder::{build, ConfigOverrides, DenseNetConfig, Stem};
use ir::reference::Tensor;
use runtime::{Artefact, Device, Model};

const BOUND: f64 = 1e-4;

/// One CPU code variant every preset is checked on.
struct Variant {
    cpu: &'static str,
    precision: Precision,
    /// Whether this host runs it (else it is only compiled).
    runs: bool,
    /// Why not, when it does not.
    why_not: &'static str,
    /// The relative error bound of its logits.
    bound: f64,
}

/// The CPU targets every preset is checked on: the AVX2 kernels (x86-64-v3, which every CI
/// machine runs), the AVX-512 kernels (x86-64-v4), run where the host has AVX-512 and
/// compiled only elsewhere, and the bf16 kernels (x86-64-v4 + AVX512_BF16, `--precision
/// bf16`) within their bound, run where the host has AVX512_BF16, and on the AMX tiles
/// (`sapphirerapids`), run where the host has AMX-BF16 and the OS grants the tile state.
fn cpus() -> Vec<Variant> {
    let avx512 = ["avx512f", "avx512vl", "avx512bw", "avx512dq"]
        .iter()
        .all(|f| host_has(f));
    vec![
        Variant {
            cpu: "x86-64-v3",
            precision: Precision::Fp32,
            runs: true,
            why_not: "",
            bound: BOUND,
        },
        Variant {
            cpu: "x86-64-v4",
            precision: Precision::Fp32,
            runs: avx512,
            why_not: "the host has no AVX-512",
            bound: BOUND,
        },
        Variant {
            cpu: "x86-64-v4",
            precision: Precision::Bf16,
            runs: avx512 && host_has("avx512bf16"),
            why_not: "the host has no AVX512_BF16",
            bound: f64::from(compiler::backend::cpu::CPU_BF16_REL_BOUND),
        },
        Variant {
            cpu: "sapphirerapids",
            precision: Precision::Bf16,
            // Also asks the OS for the tile state (the runtime does so at load as well).
            runs: avx512 && host_has("avx512bf16") && runtime::host_has_amx(),
            why_not: "the host has no usable AMX-BF16",
            bound: f64::from(compiler::backend::cpu::CPU_BF16_REL_BOUND),
        },
    ]
}

fn host_has(feature: &str) -> bool {
    match feature {
        "avx512f" => std::arch::is_x86_feature_detected!("avx512f"),
        "avx512vl" => std::arch::is_x86_feature_detected!("avx512vl"),
        "avx512bw" => std::arch::is_x86_feature_detected!("avx512bw"),
        "avx512dq" => std::arch::is_x86_feature_detected!("avx512dq"),
        "avx512bf16" => std::arch::is_x86_feature_detected!("avx512bf16"),
        _ => false,
    }
}

/// Compiles, runs and compares on every CPU target of [`cpus`]; returns the worst relative
/// error.
fn check(arch: &str, o: ConfigOverrides, batch: usize, seed: u64) -> f64 {
    let cfg = DenseNetConfig::resolve(Some(arch), &o).expect("config");
    let mut g = build(&cfg, batch).expect("build");
    compiler::weights::randomize(&mut g, seed);
    let shape = vec![batch, cfg.in_channels, cfg.image_size, cfg.image_size];
    let x = Tensor::random_uniform(shape, seed ^ 0x5eed, -1.0, 1.0);
    let want = ir::reference::run(&g, std::slice::from_ref(&x))
        .expect("reference")
        .remove(0);
    let mut worst: f64 = 0.0;
    for v in cpus() {
        let (cpu, precision) = (v.cpu, v.precision);
        let start = std::time::Instant::now();
        let opts = compiler::CompileOptions {
            cpus: vec![compiler::backend::cpu::CpuOptions {
                cpu: cpu.into(),
                ..Default::default()
            }],
            precision,
            ..Default::default()
        };
        let bytes = compiler::compile_graph(&cfg, g.clone(), &opts)
            .and_then(|c| c.to_bytes())
            .expect("compile");
        let compile_s = start.elapsed().as_secs_f64();
        if !v.runs {
            eprintln!(
                "preset {arch} {cpu} {precision}: compiled; not run ({})",
                v.why_not
            );
            continue;
        }
        let model = Model::from_artefact(Artefact::read(&bytes).expect("artefact")).expect("load");
        assert_eq!(model.input_shape(), x.shape.as_slice());
        let mut session = model.session(Device::Cpu { threads: 2 }).expect("session");
        let got = session.run(&x.data, &x.shape).expect("run");
        let got = Tensor::from_vec(model.output_shape().to_vec(), got).expect("output");
        let rel = got.rel_error(&want).expect("same shape");
        eprintln!(
            "preset {arch:<16} {:<28} {cpu:<9} {precision} image {:>3} batch {batch}: relative error {rel:.3e} (compile {compile_s:.1} s)",
            cfg.name, cfg.image_size
        );
        assert!(
            rel <= v.bound,
            "{arch} ({}) {cpu} {precision} image {} batch {batch}: relative error {rel:e}",
            cfg.name,
            cfg.image_size
        );
        // A second run in the same session gives the same logits (no state leaks between runs).
        let again = session.run(&x.data, &x.shape).expect("run again");
        assert_eq!(again, got.data, "{arch} {cpu}: second run differs");
        if precision == Precision::Fp32 {
            worst = worst.max(rel);
        }
    }
    worst
}

fn at(size: usize) -> ConfigOverrides {
    ConfigOverrides {
        image_size: Some(size),
        ..Default::default()
    }
}

#[test]
fn densenet121() {
    check("densenet121", at(32), 2, 121);
}

#[test]
fn densenet161() {
    check("densenet161", at(33), 1, 161);
}

#[test]
fn densenet169() {
    check("densenet169", at(35), 1, 169);
}

#[test]
fn densenet201() {
    check("densenet201", at(29), 1, 201);
}

#[test]
fn densenet_bc_100() {
    check("densenet-bc-100", at(9), 3, 100);
}

#[test]
fn densenet_bc_250() {
    check("densenet-bc-250", at(8), 1, 250);
}

#[test]
fn densenet_bc_190() {
    check("densenet-bc-190", at(7), 1, 190);
}

#[test]
fn densenet_40() {
    check("densenet-40", at(11), 2, 40);
}

#[test]
fn plain_layers_with_the_imagenet_stem() {
    // `--bn-size 0`: BN-ReLU-3x3 layers, no bottleneck.
    let o = ConfigOverrides {
        bn_size: Some(0),
        block_config: Some(vec![3, 4, 2]),
        image_size: Some(19),
        ..Default::default()
    };
    check("densenet121", o, 2, 7);
}

#[test]
fn conv_bias_and_compression_0_4() {
    // Every conv with a bias (other DenseNet implementations), θ = 0.4: floor(C·0.4) channels.
    let o = ConfigOverrides {
        conv_bias: Some(true),
        compression: Some(0.4),
        growth_rate: Some(10),
        block_config: Some(vec![3, 5, 4]),
        num_init_features: Some(22),
        num_classes: Some(17),
        image_size: Some(13),
        ..Default::default()
    };
    check("densenet-bc-100", o, 2, 8);
}

#[test]
fn plain_cifar_layers_with_bias_and_one_input_channel() {
    let o = ConfigOverrides {
        bn_size: Some(0),
        conv_bias: Some(true),
        compression: Some(0.4),
        in_channels: Some(1),
        stem: Some(Stem::Cifar),
        block_config: Some(vec![2, 3]),
        image_size: Some(10),
        ..Default::default()
    };
    check("densenet-40", o, 3, 9);
}
