//! The tensor-core GEMM paths (`--precision tf32|fp16|bf16`) without a
//! GPU: the CPU emulator runs the same emission code, modelling each warp's
//! `mma.sync` m16n8k8 and the operand conversions exactly (see
//! `src/backend/cuda/emulate/warp.rs`), with every check of the f32 path
//! (bounds, coverage, overflow, shared-memory races).
//!
//! Accuracy: every preset, reduced to two layers per dense block (its
//! growth rate, width, bottleneck and stem kept) and to a small image,
//! with random weights and random BN statistics, against the f32
//! reference executor: the worst relative error of the logits (max norm)
//! must stay within the precision's bound (`Precision::rel_bound`: 5e-3
//! for TF32 and FP16, 3e-2 for BF16). The measured errors are printed by
//! `cargo test -p compiler --test cuda mma:: -- --nocapture` (full depth with
//! `--ignored`); the table is in `src/backend/cuda/precision.rs`.

use crate::support::{arena, case, read, write, KERNEL_CASES};
use compiler::backend::cuda::{self, emulate, CudaOptions, Precision};
use compiler::backend::graph::{kernels_of, GraphKernels};
use compiler::builder::{build, ConfigOverrides, DenseNetConfig, PRESETS};
use compiler::passes::optimize;
use ir::reference::Tensor;

/// The tensor-core precisions.
const TENSOR_CORES: [Precision; 3] = [Precision::Tf32, Precision::Fp16, Precision::Bf16];

fn options(precision: Precision) -> CudaOptions {
    CudaOptions {
        precision,
        ..CudaOptions::default()
    }
}

/// Kernel-level error bound: one GEMM of rounded operands (a unit
/// roundoff of 2^-11 for TF32 and FP16, 2^-8 for BF16).
fn kernel_bound(p: Precision) -> f64 {
    match p {
        Precision::Bf16 => 1.6e-2,
        _ => 2e-3,
    }
}

/// The GEMM kernel kinds of `ptx.rs` (1x1, 3x3, 7x7/2 stem, strided,
/// remainders in M, N and K, slices, borders, linear), and one conv large
/// enough for the biggest block tile.
fn gemm_cases() -> impl Iterator<Item = &'static str> {
    KERNEL_CASES
        .iter()
        .copied()
        .filter(|s| s.starts_with("conv") || s.starts_with("linear"))
        .chain(["conv c64 40x40 oc64 pro relu"])
}

#[test]
fn emulated_tensor_core_kernels_match_the_reference() {
    for p in TENSOR_CORES {
        let mut worst = 0.0f64;
        for (i, spec) in gemm_cases().enumerate() {
            let c = case(100 + i as u64, spec);
            let compiled = cuda::lower(std::slice::from_ref(&c.desc), &options(p))
                .unwrap_or_else(|e| panic!("{spec}: lowering failed: {e}"));
            assert!(
                compiled.kernels[0].plan.starts_with(&format!("gemm {p}")),
                "{spec}"
            );
            let mut mem = arena(compiled.arena_bytes);
            write(&mut mem, &c.desc.input, &c.input);
            emulate::run(&compiled, &mut mem).unwrap_or_else(|e| panic!("{p} {spec}: {e}"));
            let got = read(&mem, &c.desc.output, &c.reference.shape);
            let err = got.rel_error(&c.reference).expect("shape");
            eprintln!("{spec:<50} {p} relative error {err:.2e}");
            assert!(err <= kernel_bound(p), "{p} {spec}: relative error {err:e}");
            worst = worst.max(err);
        }
        // The operands really are rounded: an f32 kernel is within ~1e-6.
        assert!(
            worst > 1e-5,
            "{p}: worst error {worst:e}: rounding not applied?"
        );
    }
}

/// `preset` with a small image and ten classes, and two layers per block
/// unless `full_depth`.
fn reduced(preset: &str, full_depth: bool) -> (DenseNetConfig, usize) {
    let full = DenseNetConfig::resolve(Some(preset), &ConfigOverrides::default()).expect("preset");
    let cifar = full.block_config.len() == 3;
    let o = ConfigOverrides {
        block_config: (!full_depth).then(|| vec![2; full.block_config.len()]),
        image_size: Some(if cifar { 12 } else { 32 }),
        num_classes: Some(10),
        ..Default::default()
    };
    let batch = if cifar { 2 } else { 1 };
    (
        DenseNetConfig::resolve(Some(preset), &o).expect("config"),
        batch,
    )
}

fn planned(cfg: &DenseNetConfig, batch: usize, seed: u64) -> (ir::Graph, GraphKernels) {
    let mut g = build(cfg, batch).expect("build");
    compiler::weights::randomize(&mut g, seed);
    let mut p = g.clone();
    optimize(&mut p, true).expect("pipeline");
    let kernels = kernels_of(&p).expect("kernels");
    (g, kernels)
}

/// Logits of the reduced preset through the emulator, and the reference's.
fn logits(preset: &str, full_depth: bool, opts: &CudaOptions, seed: u64) -> (Tensor, Tensor) {
    let (cfg, batch) = reduced(preset, full_depth);
    let (g, net) = planned(&cfg, batch, seed);
    let x: Vec<Tensor> = g
        .inputs()
        .iter()
        .map(|&id| Tensor::random_uniform(g.node(id).ty.shape.clone(), seed, -1.0, 1.0))
        .collect();
    let want = ir::reference::run(&g, &x).expect("reference");
    let compiled = cuda::lower(&net.kernels, opts).expect("lower");
    let mut mem = arena(net.arena_bytes);
    for (v, t) in net.inputs.iter().zip(&x) {
        write(&mut mem, v, t);
    }
    emulate::run(&compiled, &mut mem).unwrap_or_else(|e| panic!("{preset}: {e}"));
    let got = read(&mem, &net.outputs[0], &want[0].shape);
    (got, want.into_iter().next().expect("one output"))
}

/// Every preset (reduced) in every tensor-core precision against the f32
/// reference, two seeds.
#[test]
fn every_preset_on_tensor_cores_is_within_the_documented_bound() {
    for p in TENSOR_CORES {
        presets_in(p, false);
    }
}

/// The same at the presets' full depth (about 10 minutes per precision on
/// 2 cores): `cargo test -p compiler --test cuda mma:: -- --ignored --nocapture`.
#[test]
#[ignore = "slow: every preset at full depth through the emulator"]
fn every_full_depth_preset_on_tensor_cores_is_within_the_documented_bound() {
    for p in TENSOR_CORES {
        presets_in(p, true);
    }
}

fn presets_in(p: Precision, full_depth: bool) {
    let bound = f64::from(p.rel_bound());
    let mut worst = 0.0f64;
    for preset in PRESETS {
        for seed in [11, 12] {
            let (got, want) = logits(preset, full_depth, &options(p), seed);
            let err = got.rel_error(&want).expect("shape");
            eprintln!("{preset:<16} seed {seed}: {p} logits relative error {err:.2e}");
            assert!(
                err <= bound,
                "{preset} seed {seed}: {p} relative error {err:e} above {bound:e}"
            );
            worst = worst.max(err);
        }
    }
    eprintln!("worst {p} relative error over the presets: {worst:.2e}");
    assert!(worst > 1e-5, "worst error {worst:e}: rounding not applied?");
}

/// FP16's range: a weight beyond 65504 is refused at compile time, naming
/// the layer; BF16 and TF32 (f32's exponent range) take it.
#[test]
fn fp16_refuses_weights_beyond_its_range() {
    let (cfg, batch) = reduced("densenet-40", false);
    let (_, mut net) = planned(&cfg, batch, 11);
    let conv = net
        .kernels
        .iter_mut()
        .find_map(|k| match &mut k.op {
            compiler::backend::kernel::KernelOp::Conv(c) => Some(c),
            _ => None,
        })
        .expect("a conv");
    std::sync::Arc::make_mut(&mut conv.weight)[5] = 1e5;
    let e = cuda::lower(&net.kernels, &options(Precision::Fp16))
        .map(|_| ())
        .expect_err("a weight of 1e5 in fp16");
    let msg = e.to_string();
    assert!(
        msg.contains("weight 5 (1e5) is outside the range of FP16"),
        "{msg}"
    );
    for p in [Precision::Fp32, Precision::Tf32, Precision::Bf16] {
        cuda::lower(&net.kernels, &options(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    }
}

/// The same reduced presets in fp32 keep the 1e-4 bound (two presets: the
/// f32 kernels are covered more widely by `ptx.rs`).
#[test]
fn fp32_presets_keep_their_bound() {
    for preset in ["densenet121", "densenet-bc-100"] {
        let (got, want) = logits(preset, false, &CudaOptions::default(), 11);
        let err = got.rel_error(&want).expect("shape");
        eprintln!("{preset:<16} fp32 logits relative error {err:.2e}");
        assert!(
            err <= f64::from(Precision::Fp32.rel_bound()),
            "{preset}: relative error {err:e}"
        );
    }
}
