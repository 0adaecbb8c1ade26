//! The kernel descriptions fit the memory-planned graph: build a DenseNet,
//! run the whole pass pipeline (BN folding, prologue fusion, transition
//! reorder, concat in place, memory plan with zero borders), map every
//! planned node to a `KernelDesc` over `View::of_value` views, compile,
//! run, and compare with the reference executor on the *unoptimised* graph.
//!
//! The mapping is `backend::graph::kernels_of`.

mod cpu_kernels_support;

use compiler::backend::cpu::{self, CpuOptions};
use compiler::backend::graph::{kernels_of, GraphKernels};
use compiler::builder::{build, ConfigOverrides, DenseNetConfig, Stem};
use compiler::passes::optimize;
use cpu_kernels_support::{Arena, Loaded, Pfor};
use ir::reference::Tensor;

/// Returns how many kernels write a bordered buffer.
fn check(arch: &str, o: ConfigOverrides, batch: usize, seed: u64) -> usize {
    check_with(arch, o, batch, seed, None).0
}

/// [`check`] with a batch-tiling budget (`None`: the default), returning
/// also the kernels' plans.
fn check_with(
    arch: &str,
    o: ConfigOverrides,
    batch: usize,
    seed: u64,
    tile_bytes: Option<usize>,
) -> (usize, Vec<String>) {
    check_split(arch, o, batch, seed, tile_bytes, 0)
}

/// `check_with`, with the kernels compiled as `codegen_threads` LLVM
/// modules (0: one per core) and linked together.
fn check_split(
    arch: &str,
    o: ConfigOverrides,
    batch: usize,
    seed: u64,
    tile_bytes: Option<usize>,
    codegen_threads: usize,
) -> (usize, Vec<String>) {
    let cfg = DenseNetConfig::resolve(Some(arch), &o).expect("config");
    let mut g = build(&cfg, batch).expect("build");
    compiler::weights::randomize(&mut g, seed);
    let x: Vec<Tensor> = g
        .inputs()
        .iter()
        .map(|&i| Tensor::random_uniform(g.node(i).ty.shape.clone(), seed, -1.0, 1.0))
        .collect();
    let want = ir::reference::run(&g, &x).expect("reference");

    let mut planned = g.clone();
    optimize(&mut planned, true).expect("pipeline");
    let GraphKernels {
        kernels,
        inputs: in_views,
        outputs: out_views,
        arena_bytes,
    } = kernels_of(&planned).expect("kernels");
    let opts = CpuOptions {
        live_out: out_views.clone(),
        batch_tile_bytes: tile_bytes.unwrap_or(CpuOptions::default().batch_tile_bytes),
        codegen_threads,
        // The module count is read from the IR text.
        keep_ir: codegen_threads > 1,
        ..CpuOptions::default()
    };
    let compiled = cpu::compile(&kernels, &opts).expect("compile");
    if codegen_threads > 1 {
        let modules = compiled.llvm_ir_before.matches("; ModuleID").count();
        assert_eq!(
            modules,
            codegen_threads.min(kernels.len() / 16).max(1),
            "{} kernels in {modules} modules",
            kernels.len()
        );
    }
    let lib = Loaded::new(&compiled);
    assert!(compiled.arena_bytes <= arena_bytes);
    for pfor in [Pfor::Sequential, Pfor::TwoThreads, Pfor::ReverseSingles] {
        // NaN everywhere: a kernel reading what no kernel wrote (an input
        // border, a dead buffer) turns the output into NaN.
        let mut arena = Arena::poisoned(arena_bytes);
        for (v, t) in in_views.iter().zip(&x) {
            arena.write(v, t);
        }
        lib.run(&mut arena, pfor);
        for (v, w) in out_views.iter().zip(&want) {
            let got = arena.read(v, &w.shape);
            let err = got.rel_error(w).expect("shape");
            assert!(
                err <= 1e-4,
                "{arch} b{batch} ({pfor:?}): relative error {err:e}"
            );
            if pfor == Pfor::Sequential {
                println!("{arch} b{batch}: relative error {err:.2e}");
            }
        }
    }
    // Kernel by kernel through `dnc_run_kernel`, as a profiler would.
    let mut arena = Arena::new(arena_bytes);
    for (v, t) in in_views.iter().zip(&x) {
        arena.write(v, t);
    }
    for k in 0..kernels.len() {
        assert_eq!(lib.run_kernel(&mut arena, k as i64), 0);
    }
    let got = arena.read(&out_views[0], &want[0].shape);
    assert!(
        got.rel_error(&want[0]).expect("shape") <= 1e-4,
        "{arch}: kernel by kernel"
    );
    let bordered = kernels.iter().filter(|k| !k.output.is_flat()).count();
    (
        bordered,
        compiled.kernels.iter().map(|k| k.plan.clone()).collect(),
    )
}

#[test]
fn kernels_compiled_as_several_modules_link_and_match_the_reference() {
    // 3 blocks of 8 layers: 58 kernels, so 3 modules of ~19, batch-tiled at b3.
    let o = || ConfigOverrides {
        block_config: Some(vec![8, 8, 8]),
        image_size: Some(9),
        ..Default::default()
    };
    check_split("densenet-bc-100", o(), 1, 11, None, 3);
    check_split("densenet-bc-100", o(), 3, 12, Some(64 << 10), 2);
}

/// Runs `check_with` and returns how many kernels ran in image groups.
fn tiled(arch: &str, o: ConfigOverrides, batch: usize, tile_bytes: usize) -> usize {
    let (_, plans) = check_with(arch, o, batch, 6, Some(tile_bytes));
    plans.iter().filter(|p| p.contains(" groups of ")).count()
}

#[test]
fn batch_tiled_densenet_bc_matches_the_reference() {
    let o = || ConfigOverrides {
        block_config: Some(vec![2, 3, 2]),
        image_size: Some(11),
        ..Default::default()
    };
    // One image per group (an odd batch), then groups of several images.
    assert!(tiled("densenet-bc-100", o(), 3, 1) >= 7);
    let per_image = 64 << 10;
    assert!(tiled("densenet-bc-100", o(), 4, per_image) >= 7);
    // Off: nothing is grouped.
    assert_eq!(tiled("densenet-bc-100", o(), 4, 0), 0);
}

#[test]
fn batch_tiled_imagenet_stem_matches_the_reference() {
    let o = ConfigOverrides {
        block_config: Some(vec![2, 2]),
        growth_rate: Some(8),
        num_init_features: Some(16),
        image_size: Some(33),
        num_classes: Some(10),
        conv_bias: Some(true),
        ..Default::default()
    };
    assert!(tiled("densenet121", o, 5, 1) >= 4);
}

#[test]
fn planned_densenet_bc_runs_on_the_cpu_backend() {
    let o = ConfigOverrides {
        block_config: Some(vec![2, 3, 2]),
        image_size: Some(11),
        ..Default::default()
    };
    // Every bottleneck output is stored with a zero border.
    assert_eq!(check("densenet-bc-100", o, 2, 3), 7);
}

#[test]
fn planned_imagenet_stem_with_conv_bias_runs_on_the_cpu_backend() {
    let o = ConfigOverrides {
        block_config: Some(vec![2, 2]),
        growth_rate: Some(8),
        num_init_features: Some(16),
        image_size: Some(33),
        num_classes: Some(10),
        conv_bias: Some(true),
        ..Default::default()
    };
    assert_eq!(check("densenet121", o, 1, 4), 4);
}

#[test]
fn planned_plain_densenet_runs_on_the_cpu_backend() {
    let o = ConfigOverrides {
        block_config: Some(vec![3, 2]),
        image_size: Some(9),
        stem: Some(Stem::Cifar),
        ..Default::default()
    };
    // Plain layers: every 3x3 conv has a prologue, so no border.
    assert_eq!(check("densenet-40", o, 1, 5), 0);
}

/// Full-size presets (slow: the f64 reference runs the whole network).
/// Run with `cargo test -p compiler --test cpu_kernels_graph -- --ignored
/// --nocapture` to see the end-to-end error of the Winograd growth convs.
#[test]
#[ignore]
fn full_size_presets_within_tolerance() {
    check("densenet-bc-100", ConfigOverrides::default(), 2, 6);
    check("densenet121", ConfigOverrides::default(), 1, 7);
}
