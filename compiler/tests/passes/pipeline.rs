//! The pipeline machinery: the registry, `stop_after`, dumps, verification
//! before and after the passes, errors that list valid names or mark the
//! offending node, and the statistics the command line reports.

use crate::common::*;
use compiler::builder::{build, ConfigOverrides, DenseNetConfig};
use compiler::passes::{
    check_pass_name, run_pipeline, PassError, PipelineOptions, PASSES, PIPELINE,
};
use ir::{Op, TensorType};

#[test]
fn the_registry_is_the_pipeline_in_order() {
    assert_eq!(
        PASSES,
        [
            "fold-batchnorm",
            "fuse-preactivation",
            "fuse-epilogue",
            "reorder-transition",
            "concat-in-place",
            "plan-memory"
        ]
    );
    let names: Vec<&str> = PIPELINE.iter().map(|p| p.name()).collect();
    assert_eq!(names, PASSES);
    for (i, name) in PASSES.iter().enumerate() {
        assert_eq!(check_pass_name(name).ok(), Some(i));
    }
}

#[test]
fn an_unknown_pass_name_lists_the_valid_ones() {
    let mut g = build(&DenseNetConfig::preset("densenet-40").expect("preset"), 1).expect("build");
    let before = ir::text::print(&g);
    let err = run_pipeline(
        &mut g,
        &mut PipelineOptions {
            stop_after: Some("fold-bn".into()),
            ..Default::default()
        },
    )
    .expect_err("unknown pass");
    assert!(matches!(err, PassError::UnknownPass { .. }));
    let msg = err.to_string();
    assert!(msg.contains("`fold-bn`"), "{msg}");
    for name in PASSES {
        assert!(msg.contains(name), "{msg} lacks {name}");
    }
    assert_eq!(ir::text::print(&g), before, "nothing ran");
}

#[test]
fn stop_after_runs_a_prefix_and_dumps_after_each_pass() {
    let cfg = DenseNetConfig::preset("densenet-bc-100").expect("preset");
    let mut g = build(&cfg, 1).expect("build");
    let mut seen = Vec::new();
    let mut dump = |i: usize, name: &str, g: &ir::Graph| {
        seen.push((i, name.to_owned(), ir::text::print(g)));
    };
    let report = run_pipeline(
        &mut g,
        &mut PipelineOptions {
            stop_after: Some("fuse-epilogue".into()),
            dump: Some(&mut dump),
            verify: true,
        },
    )
    .expect("pipeline");
    let names: Vec<(usize, &str)> = seen.iter().map(|(i, n, _)| (*i, n.as_str())).collect();
    assert_eq!(
        names,
        [
            (1, "fold-batchnorm"),
            (2, "fuse-preactivation"),
            (3, "fuse-epilogue")
        ]
    );
    assert_eq!(report.passes.len(), 3);
    assert!(report.passes.iter().all(|p| p.changed));
    assert!(report.memory.is_none() && g.arena_bytes.is_none());
    assert_eq!(
        seen[2].2,
        ir::text::print(&g),
        "the last dump is the result"
    );
    // Each dump parses back: the dumps are real IR files.
    for (_, name, text) in &seen {
        ir::text::parse(text).unwrap_or_else(|e| panic!("dump after {name}: {e}"));
    }
}

#[test]
fn an_invalid_input_graph_is_reported_with_the_node_marked() {
    let mut g = build(&DenseNetConfig::preset("densenet-40").expect("preset"), 1).expect("build");
    let id = g
        .node_by_name("features.denseblock1.denselayer2.norm1")
        .expect("node");
    g.node_mut(id).ty = TensorType::f32([1, 2, 3, 4]);
    let err = run_pipeline(
        &mut g,
        &mut PipelineOptions {
            verify: true,
            ..Default::default()
        },
    )
    .expect_err("invalid input");
    let msg = err.to_string();
    assert!(matches!(err, PassError::InvalidInput { .. }), "{msg}");
    let marked = msg
        .lines()
        .position(|l| {
            l.trim_start()
                .starts_with("%features.denseblock1.denselayer2.norm1 =")
        })
        .expect("the node's line is printed");
    let next = msg.lines().nth(marked + 1).unwrap_or_default();
    assert!(
        next.starts_with(';') && next.contains('^') && next.contains("error"),
        "{next}"
    );
}

#[test]
fn the_pipeline_is_idempotent() {
    let cfg = DenseNetConfig::preset("densenet-bc-100").expect("preset");
    let mut g = build(&cfg, 2).expect("build");
    let first = compiler::passes::optimize(&mut g, true).expect("first run");
    let text = ir::text::print(&g);
    let second = compiler::passes::optimize(&mut g, true).expect("second run");
    assert_eq!(ir::text::print(&g), text);
    let changed: Vec<bool> = second.passes.iter().map(|p| p.changed).collect();
    assert_eq!(changed, [false; 6], "a second run changes nothing");
    assert_eq!(
        first.memory.map(|m| m.arena_bytes),
        second.memory.map(|m| m.arena_bytes)
    );
}

#[test]
fn shape_only_graphs_go_through_and_bound_ones_keep_their_data() {
    // Unbound: folded and affine constants come out unbound.
    let cfg = DenseNetConfig::preset("densenet121").expect("preset");
    let mut g = build(&cfg, 1).expect("build");
    compiler::passes::optimize(&mut g, true).expect("shape-only pipeline");
    assert!(g.constants.values().all(|c| c.data.is_none()));
    // Bound: every constant of the result is bound.
    let small = config(
        "densenet-bc-100",
        ConfigOverrides {
            image_size: Some(8),
            ..Default::default()
        },
    );
    let (o, _) = optimized(&random_graph(&small, 1, 3));
    assert!(o.is_bound());
}

#[test]
fn partially_bound_graphs_are_an_error_naming_the_node() {
    let cfg = DenseNetConfig::preset("densenet-40").expect("preset");
    let mut g = build(&cfg, 1).expect("build");
    let c = g.constants["features.norm5.weight"].shape[0];
    g.constants.insert(
        "features.norm5.weight".into(),
        ir::Constant::with_data([c], vec![1.0; c]),
    );
    let err = compiler::passes::optimize(&mut g, true).expect_err("partially bound");
    let msg = err.to_string();
    assert!(
        msg.contains("fuse-preactivation") && msg.contains("features.norm5"),
        "{msg}"
    );
}

#[test]
fn no_batchnorm_or_relu_is_left_in_any_preset() {
    for name in compiler::builder::PRESETS {
        let mut g = build(&DenseNetConfig::preset(name).expect("preset"), 1).expect("build");
        compiler::passes::optimize(&mut g, true).expect("pipeline");
        for id in g.node_ids() {
            let op = &g.node(id).op;
            assert!(
                !matches!(op, Op::BatchNorm(_) | Op::Relu | Op::ChannelAffine(_)),
                "{name}: `{}` is still a {}",
                g.node(id).name,
                op.mnemonic()
            );
        }
    }
}

#[test]
fn macs_optimized_shows_the_transition_reorder() {
    let cfg = DenseNetConfig::preset("densenet121").expect("preset");
    let mut g = build(&cfg, 1).expect("build");
    let report = compiler::passes::optimize(&mut g, true).expect("pipeline");
    assert_eq!(report.stats_before.macs, 2_834_161_664);
    // Each of the three transitions' 1x1 convs is 102,760,448 MACs at full
    // resolution; pooling first leaves a quarter.
    let transition = 102_760_448u64;
    assert_eq!(
        report.macs_optimized(),
        2_834_161_664 - 3 * (transition - transition / 4)
    );
    assert_eq!(
        report.stats_after.conv_layers,
        report.stats_before.conv_layers
    );
}
