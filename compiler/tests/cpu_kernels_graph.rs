//! The kernel descriptions fit the memory-planned graph: build a DenseNet,
//! run the whole pass pipeline (BN folding, prologue fusion, transition
//! reorder, concat in place, memory plan with zero borders), map every
//! planned node to a `KernelDesc` over `View::of_value` views, compile,
//! run, and compare with the reference executor on the *unoptimised* graph.
//!
//! `kernels_of` below is the reference mapping for the integration: graph
//! inputs get storage after the planned arena (the runtime owns them),
//! concatenations that are views and flattens of `[N, C, 1, 1]` values
//! write nothing when they alias their operand, and every other node is one
//! kernel.

mod cpu_kernels_support;

use compiler::backend::cpu::{self, CpuOptions};
use compiler::backend::kernel::{Affine, KernelDesc, KernelOp, View};
use compiler::builder::{build, ConfigOverrides, DenseNetConfig, Stem};
use compiler::passes::optimize;
use cpu_kernels_support::{Arena, Loaded, Pfor};
use ir::reference::Tensor;
use ir::{Graph, Op};
use std::sync::Arc;

/// The kernel list of a planned graph, with the input and output views.
fn kernels_of(g: &Graph) -> (Vec<KernelDesc>, Vec<View>, Vec<View>) {
    let arena = g.arena_bytes.expect("planned").div_ceil(64) * 64;
    let mut inputs = Vec::new();
    let mut next = arena;
    for &id in g.inputs() {
        let (n, c, h, w) = g.node(id).ty.nchw().expect("NCHW input");
        let v = View::dense(next, n, h, w, c);
        next = v.end_bytes().div_ceil(64) * 64;
        inputs.push(v);
    }
    let view = |id| match g.inputs().iter().position(|&i| i == id) {
        Some(k) => inputs[k],
        None => View::of_value(g, id).unwrap_or_else(|e| panic!("{e}")),
    };
    let mut kernels = Vec::new();
    for id in g.schedule().expect("schedule") {
        let node = g.node(id);
        match &node.op {
            Op::Input => continue,
            Op::Concat if g.is_view(id) => continue,
            Op::Concat => panic!("`{}` is a concat that copies", node.name),
            _ => {}
        }
        let operands = g.operands(id);
        let (input, output) = (view(operands[0]), view(id));
        if matches!(node.op, Op::Flatten) {
            if input == output {
                continue;
            }
            // A copy: the identity affine.
            let ones = Arc::new(vec![1.0; input.channels]);
            let zeros = Arc::new(vec![0.0; input.channels]);
            kernels.push(KernelDesc {
                name: node.name.clone(),
                op: KernelOp::Affine(Affine {
                    scale: ones,
                    shift: zeros,
                    relu: false,
                }),
                input,
                output,
            });
            continue;
        }
        let k = KernelDesc::from_ir(&node.name, &node.op, &g.constants, input, output)
            .unwrap_or_else(|e| panic!("`{}`: {e}", node.name));
        kernels.push(k);
    }
    let outputs = g.outputs().iter().map(|&o| view(o)).collect();
    (kernels, inputs, outputs)
}

/// Returns how many kernels write a bordered buffer.
fn check(arch: &str, o: ConfigOverrides, batch: usize, seed: u64) -> usize {
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
    let (kernels, in_views, out_views) = kernels_of(&planned);
    let compiled = cpu::compile(&kernels, &CpuOptions::default()).expect("compile");
    let lib = Loaded::new(&compiled);
    let end = in_views.iter().map(View::end_bytes).max().unwrap_or(0);
    for pfor in [Pfor::Sequential, Pfor::TwoThreads] {
        let mut arena = Arena::new(end.max(compiled.arena_bytes));
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
        }
    }
    kernels.iter().filter(|k| !k.output.is_flat()).count()
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
