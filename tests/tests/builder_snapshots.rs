//! The printed IR of a small configuration of each DenseNet family, pinned.
//! Review a change with `INSTA_UPDATE=always cargo test -p tests` and `git diff`.

use compiler::builder::{build, ConfigOverrides, DenseNetConfig, Stem};

fn small(base: &str, o: ConfigOverrides) -> String {
    let cfg = DenseNetConfig::resolve(Some(base), &o).expect("valid config");
    ir::text::print(&build(&cfg, 2).expect("builds"))
}

#[test]
fn imagenet_stem() {
    insta::assert_snapshot!(small(
        "densenet121",
        ConfigOverrides {
            growth_rate: Some(4),
            block_config: Some(vec![2, 2]),
            num_init_features: Some(8),
            num_classes: Some(5),
            image_size: Some(29),
            ..Default::default()
        }
    ));
}

#[test]
fn cifar_bc() {
    insta::assert_snapshot!(small(
        "densenet-bc-100",
        ConfigOverrides {
            block_config: Some(vec![2, 1]),
            image_size: Some(8),
            ..Default::default()
        }
    ));
}

#[test]
fn plain_with_conv_bias() {
    insta::assert_snapshot!(small(
        "densenet-40",
        ConfigOverrides {
            block_config: Some(vec![2, 2]),
            stem: Some(Stem::Cifar),
            conv_bias: Some(true),
            compression: Some(0.5),
            image_size: Some(6),
            ..Default::default()
        }
    ));
}
