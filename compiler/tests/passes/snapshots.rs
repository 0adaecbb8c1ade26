//! The IR after each pass, pinned for a small configuration of each family
//! (the configurations of `tests/tests/builder_snapshots.rs`, whose
//! snapshots are the IR before the passes). Snapshots are named
//! `<family>@NN-after-<pass>`; review a change with
//! `INSTA_UPDATE=always cargo test -p compiler --test passes snapshots::` and
//! `git diff`.

use compiler::builder::{build, ConfigOverrides, DenseNetConfig, Stem};
use compiler::passes::{run_pipeline, PipelineOptions};

fn snapshot_each_pass(family: &str, base: &str, o: ConfigOverrides) {
    let cfg = DenseNetConfig::resolve(Some(base), &o).expect("valid config");
    let mut g = build(&cfg, 2).expect("builds");
    let mut dumps = Vec::new();
    let mut dump = |i: usize, pass: &str, g: &ir::Graph| {
        dumps.push((format!("{family}@{i:02}-after-{pass}"), ir::text::print(g)));
    };
    run_pipeline(
        &mut g,
        &mut PipelineOptions {
            dump: Some(&mut dump),
            verify: true,
            ..Default::default()
        },
    )
    .expect("pipeline");
    assert_eq!(dumps.len(), compiler::passes::PASSES.len());
    for (name, text) in dumps {
        insta::assert_snapshot!(name, text);
    }
}

#[test]
fn imagenet_stem() {
    snapshot_each_pass(
        "imagenet_stem",
        "densenet121",
        ConfigOverrides {
            growth_rate: Some(4),
            block_config: Some(vec![2, 2]),
            num_init_features: Some(8),
            num_classes: Some(5),
            image_size: Some(29),
            ..Default::default()
        },
    );
}

#[test]
fn cifar_bc() {
    snapshot_each_pass(
        "cifar_bc",
        "densenet-bc-100",
        ConfigOverrides {
            block_config: Some(vec![2, 1]),
            image_size: Some(8),
            ..Default::default()
        },
    );
}

#[test]
fn plain_with_conv_bias() {
    snapshot_each_pass(
        "plain_with_conv_bias",
        "densenet-40",
        ConfigOverrides {
            block_config: Some(vec![2, 2]),
            stem: Some(Stem::Cifar),
            conv_bias: Some(true),
            compression: Some(0.5),
            image_size: Some(6),
            ..Default::default()
        },
    );
}
