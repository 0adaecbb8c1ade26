//! The kernel descriptions fit the memory-planned graph: build a DenseNet,
//! run the whole pass pipeline (BN folding, prologue fusion, transition
//! reorder, concat in place, memory plan with zero borders), map every
//! planned node to a `KernelDesc` over `View::of_value` views, compile,
//! run, and compare with the reference executor on the *unoptimised* graph.
//!
//! The mapping is `backend::graph::kernels_of`.

use crate::support::{Arena, Loaded, Pfor};
use compiler::backend::cpu::{self, CompiledKernel, CpuOptions};
use compiler::backend::graph::{kernels_of, GraphKernels};
use compiler::backend::kernel::{Affine, KernelDesc, KernelOp, View};
use compiler::builder::{build, ConfigOverrides, DenseNetConfig, Stem};
use compiler::passes::optimize;
use ir::reference::Tensor;

/// Returns how many kernels write a bordered buffer.
fn check(arch: &str, o: ConfigOverrides, batch: usize, seed: u64) -> usize {
    check_with(arch, o, batch, seed, None).0
}

/// [`check`] with a batch-tiling budget (`None`: the default), returning
/// also what was compiled for each kernel.
fn check_with(
    arch: &str,
    o: ConfigOverrides,
    batch: usize,
    seed: u64,
    tile_bytes: Option<usize>,
) -> (usize, Vec<CompiledKernel>) {
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
) -> (usize, Vec<CompiledKernel>) {
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
    (bordered, compiled.kernels)
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
    let (_, kernels) = check_with(arch, o, batch, 6, Some(tile_bytes));
    kernels
        .iter()
        .filter(|k| k.plan.contains(" groups of "))
        .count()
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

/// A two-block ImageNet-stem DenseNet with conv biases at an odd image size.
fn small_imagenet_stem_with_bias() -> ConfigOverrides {
    ConfigOverrides {
        block_config: Some(vec![2, 2]),
        growth_rate: Some(8),
        num_init_features: Some(16),
        image_size: Some(33),
        num_classes: Some(10),
        conv_bias: Some(true),
        ..Default::default()
    }
}

#[test]
fn batch_tiled_imagenet_stem_matches_the_reference() {
    let o = small_imagenet_stem_with_bias();
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
    let o = small_imagenet_stem_with_bias();
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
/// Run with `cargo test -p compiler --test cpu kernels_graph:: -- --ignored
/// --nocapture` to see the end-to-end error of the Winograd growth convs.
#[test]
#[ignore]
fn full_size_presets_within_tolerance() {
    check("densenet-bc-100", ConfigOverrides::default(), 2, 6);
    check("densenet121", ConfigOverrides::default(), 1, 7);
}

/// Kernels of one shape at different places (weights, input prefix,
/// output slice) share one task body, across modules, and still compute
/// the reference's result.
#[test]
fn kernels_of_one_shape_share_a_body_and_match_the_reference() {
    let o = ConfigOverrides {
        block_config: Some(vec![5, 5, 5]),
        image_size: Some(16),
        ..Default::default()
    };
    for threads in [1, 2] {
        let (_, kernels) = check_split("densenet-bc-100", o.clone(), 1, 13, None, threads);
        // The growth convs of a block (Winograd at 16x16, direct after)
        // differ only in weights and output slice.
        for block in 1..=3 {
            let growth: Vec<&CompiledKernel> = kernels
                .iter()
                .filter(|k| k.name.contains(&format!("denseblock{block}")))
                .filter(|k| k.name.contains("conv2"))
                .collect();
            assert_eq!(growth.len(), 5, "block {block}");
            assert!(
                growth.iter().all(|k| k.body == growth[0].body),
                "block {block}: {:?}",
                growth.iter().map(|k| &k.body).collect::<Vec<_>>()
            );
        }
        let mut bodies: Vec<&str> = kernels.iter().map(|k| k.body.as_str()).collect();
        bodies.sort_unstable();
        bodies.dedup();
        assert!(bodies.len() < kernels.len() - 10, "{bodies:?}");
    }
}

/// What shapes a kernel's code, read from its description alone: the op
/// and its geometry and flags, and the views at arena offset and channel
/// offset 0 (independent of the backend's own `Shape`). A 1x1 conv (and a
/// linear layer) takes its input channel count K at run time: of K only
/// the panel's row stride (K up to the 256-channel chunk, rounded up to
/// whole vectors) and the lanes of its last vector shape the code.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Signature {
    op: &'static str,
    geometry: Vec<usize>,
    flags: Vec<bool>,
    input: View,
    output: View,
}

fn signature(k: &KernelDesc) -> Signature {
    let aff = |a: &Option<Affine>| [a.is_some(), a.as_ref().is_some_and(|a| a.relu)];
    let (geometry, flags) = match &k.op {
        KernelOp::Conv(c) => (
            [[c.out_channels, 0], c.kernel, c.stride, c.padding].concat(),
            [[c.bias.is_some(), c.relu], aff(&c.prologue)].concat(),
        ),
        KernelOp::MaxPool(p) | KernelOp::AvgPool(p) => (
            [p.kernel, p.stride, p.padding].concat(),
            aff(&p.prologue).to_vec(),
        ),
        KernelOp::GlobalAvgPool { prologue } => (vec![], aff(prologue).to_vec()),
        KernelOp::Linear(l) => (vec![l.out_features], vec![l.bias.is_some(), l.relu]),
        KernelOp::Affine(a) => (vec![], vec![a.relu]),
        KernelOp::Head(h) => (
            vec![],
            vec![matches!(h, compiler::backend::kernel::HeadKernel::Softmax)],
        ),
    };
    let place = |v: &View| View {
        offset: 0,
        channel_offset: 0,
        ..*v
    };
    let gemm = match &k.op {
        KernelOp::Conv(c) => c.kernel == [1, 1] && c.stride == [1, 1] && c.padding == [0, 0],
        KernelOp::Linear(_) => true,
        _ => false,
    };
    let mut input = place(&k.input);
    if gemm {
        let ic = input.channels;
        input.channels = ic.min(256).div_ceil(8) * 8 + 1000 * (ic % 8);
    }
    Signature {
        op: k.op.mnemonic(),
        geometry,
        flags,
        input,
        output: place(&k.output),
    }
}

/// DenseNet-121 compiles one task body per distinct kernel shape: kernels
/// share a body exactly when their descriptions agree but for places.
#[test]
fn densenet121_has_one_body_per_distinct_kernel_shape() {
    let cfg =
        DenseNetConfig::resolve(Some("densenet121"), &ConfigOverrides::default()).expect("config");
    let mut g = build(&cfg, 1).expect("build");
    compiler::weights::randomize(&mut g, 1);
    optimize(&mut g, true).expect("pipeline");
    let GraphKernels {
        kernels, outputs, ..
    } = kernels_of(&g).expect("kernels");
    let opts = CpuOptions {
        live_out: outputs,
        ..CpuOptions::default()
    };
    let compiled = cpu::compile(&kernels, &opts).expect("compile");
    let sigs: Vec<Signature> = kernels.iter().map(signature).collect();
    let bodies: Vec<&str> = compiled.kernels.iter().map(|k| k.body.as_str()).collect();
    for i in 0..kernels.len() {
        for j in 0..i {
            assert_eq!(
                sigs[i] == sigs[j],
                bodies[i] == bodies[j],
                "{} ({}) and {} ({})",
                kernels[i].name,
                bodies[i],
                kernels[j].name,
                bodies[j]
            );
        }
    }
    let mut distinct = bodies.clone();
    distinct.sort_unstable();
    distinct.dedup();
    let winograd = distinct.iter().filter(|b| b.ends_with("winograd")).count();
    println!(
        "densenet121: {} kernels, {} bodies ({winograd} Winograd)",
        kernels.len(),
        distinct.len()
    );
    // 58 growth convs: Winograd at 56, 28 and 14, direct at 7.
    assert_eq!(winograd, 3);
    // 58 bottlenecks: K = 64 + 32·i, one body per K below 256 (6 in block
    // 1, 4 in block 2), one for the rest of each of blocks 2, 3 and 4.
    let gemm = |name: &str| {
        let mut b: Vec<&str> = kernels
            .iter()
            .zip(&bodies)
            .filter(|(k, _)| k.name.contains(name) && k.name.ends_with("conv1"))
            .map(|(_, b)| *b)
            .collect();
        b.sort_unstable();
        b.dedup();
        b.len()
    };
    assert_eq!(
        [1, 2, 3, 4].map(|i| gemm(&format!("denseblock{i}."))),
        [6, 5, 1, 1]
    );
    assert_eq!(
        bodies.iter().filter(|b| b.ends_with("winograd")).count(),
        6 + 12 + 24
    );
}
