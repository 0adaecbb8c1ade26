//! The builder against torchvision's numbers, and its error paths.

use compiler::builder::{build, BuildError, ConfigOverrides, DenseNetConfig, PRESETS};
use ir::stats::stats;

fn preset_stats(name: &str) -> ir::stats::GraphStats {
    let cfg = DenseNetConfig::preset(name).expect("preset");
    stats(&build(&cfg, 1).expect("build"))
}

#[test]
fn densenet121_matches_torchvision() {
    let s = preset_stats("densenet121");
    assert_eq!(s.params, 7_978_856);
    assert_eq!(s.conv_layers, 120);
    assert_eq!(s.linear_layers, 1);
    assert_eq!(s.macs, 2_834_161_664);
}

#[test]
fn densenet201_matches_torchvision() {
    let s = preset_stats("densenet201");
    assert_eq!(s.params, 20_013_928);
    assert_eq!(s.macs, 4_291_365_888);
}

#[test]
fn densenet161_and_169_match_torchvision_params() {
    assert_eq!(preset_stats("densenet161").params, 28_681_000);
    assert_eq!(preset_stats("densenet169").params, 14_149_480);
}

#[test]
fn densenet_bc_100_matches_reference_counts() {
    let s = preset_stats("densenet-bc-100");
    assert_eq!(s.params, 769_162);
    assert_eq!(s.macs, 287_929_692);
}

#[test]
fn every_preset_builds_and_verifies() {
    for name in PRESETS {
        let cfg = DenseNetConfig::preset(name).expect("preset");
        let g = build(&cfg, 2).unwrap_or_else(|e| panic!("{name}: {e}"));
        ir::verify::verify(&g).expect("verifies");
        let out = &g.node(g.outputs()[0]).ty.shape;
        assert_eq!(out, &vec![2, cfg.num_classes], "{name}");
    }
}

#[test]
fn macs_scale_with_batch() {
    let cfg = DenseNetConfig::preset("densenet-bc-100").expect("preset");
    let one = stats(&build(&cfg, 1).expect("b1")).macs;
    let four = stats(&build(&cfg, 4).expect("b4")).macs;
    assert_eq!(four, 4 * one);
}

#[test]
fn plain_layers_have_one_conv() {
    let cfg = DenseNetConfig::preset("densenet-40").expect("preset");
    let s = stats(&build(&cfg, 1).expect("build"));
    // stem + 36 layers + 2 transitions
    assert_eq!(s.conv_layers, 1 + 36 + 2);
}

#[test]
fn conv_bias_adds_a_bias_per_conv() {
    let o = ConfigOverrides {
        conv_bias: Some(true),
        ..Default::default()
    };
    let cfg = DenseNetConfig::resolve(Some("densenet-bc-100"), &o).expect("cfg");
    let with = stats(&build(&cfg, 1).expect("build"));
    let without = preset_stats("densenet-bc-100");
    let conv_out_channels: u64 = {
        let g = build(&cfg, 1).expect("build");
        g.node_ids()
            .into_iter()
            .filter_map(|id| match &g.node(id).op {
                ir::Op::Conv2d(c) => Some(c.out_channels as u64),
                _ => None,
            })
            .sum()
    };
    assert_eq!(with.params, without.params + conv_out_channels);
    assert_eq!(cfg.name, "densenet-bc-100-custom");
}

#[test]
fn overrides_that_restate_the_preset_keep_its_name() {
    let same = ConfigOverrides {
        arch: Some("densenet121".into()),
        image_size: Some(224),
        growth_rate: Some(32),
        ..Default::default()
    };
    let cfg = DenseNetConfig::resolve(None, &same).expect("resolve");
    assert_eq!(cfg.name, "densenet121");
    let other = ConfigOverrides {
        image_size: Some(160),
        ..same
    };
    let cfg = DenseNetConfig::resolve(None, &other).expect("resolve");
    assert_eq!(cfg.name, "densenet121-custom");
}

#[test]
fn transition_uses_floor_of_compression() {
    // 24 + 3*12 = 60 channels; floor(60 * 0.3) = 18.
    let o = ConfigOverrides {
        block_config: Some(vec![3, 2]),
        compression: Some(0.3),
        ..Default::default()
    };
    let cfg = DenseNetConfig::resolve(Some("densenet-bc-100"), &o).expect("cfg");
    let g = build(&cfg, 1).expect("build");
    let t = g
        .node_by_name("features.transition1.conv")
        .expect("transition");
    assert_eq!(g.node(t).ty.shape, vec![1, 18, 32, 32]);
}

fn invalid(o: &ConfigOverrides) -> String {
    match DenseNetConfig::resolve(Some("densenet121"), o) {
        Err(e) => e.to_string(),
        Ok(c) => panic!("accepted an invalid config: {c:?}"),
    }
}

#[test]
fn invalid_configurations_are_clear_errors() {
    let e = invalid(&ConfigOverrides {
        growth_rate: Some(0),
        ..Default::default()
    });
    assert!(e.contains("growth rate"), "{e}");
    for theta in [0.0, -0.5, 1.5, f64::NAN] {
        let e = invalid(&ConfigOverrides {
            compression: Some(theta),
            ..Default::default()
        });
        assert!(e.contains("compression"), "{e}");
    }
    let e = invalid(&ConfigOverrides {
        image_size: Some(16),
        ..Default::default()
    });
    assert!(e.contains("too small"), "{e}");
    let e = invalid(&ConfigOverrides {
        block_config: Some(vec![]),
        ..Default::default()
    });
    assert!(e.contains("at least one dense block"), "{e}");
    let e = invalid(&ConfigOverrides {
        block_config: Some(vec![6, 0]),
        ..Default::default()
    });
    assert!(e.contains("block 2 has no layers"), "{e}");
    let e = invalid(&ConfigOverrides {
        growth_rate: Some(usize::MAX / 2),
        ..Default::default()
    });
    assert!(e.contains("overflow"), "{e}");
    let e = invalid(&ConfigOverrides {
        image_size: Some(usize::MAX / 4),
        ..Default::default()
    });
    assert!(e.contains("overflow"), "{e}");
    let e = invalid(&ConfigOverrides {
        num_classes: Some(0),
        ..Default::default()
    });
    assert!(e.contains("num classes"), "{e}");
    // floor(C * θ) = 0
    let e = invalid(&ConfigOverrides {
        compression: Some(0.001),
        ..Default::default()
    });
    assert!(e.contains("0 channels"), "{e}");
}

#[test]
fn unknown_arch_lists_the_valid_ones() {
    let e = DenseNetConfig::preset("densenet122")
        .expect_err("unknown")
        .to_string();
    assert!(
        e.contains("densenet121") && e.contains("densenet-40"),
        "{e}"
    );
}

#[test]
fn zero_batch_is_an_error() {
    let cfg = DenseNetConfig::preset("densenet-40").expect("preset");
    assert!(matches!(build(&cfg, 0), Err(BuildError::ZeroBatch)));
}

#[test]
fn toml_config_files() {
    let cfg = DenseNetConfig::from_toml(
        "arch = \"densenet-bc-100\"\ngrowth_rate = 16\nblock_config = [4, 4]\nstem = \"imagenet\"\nimage_size = 64\n",
    )
    .expect("toml");
    assert_eq!(cfg.growth_rate, 16);
    assert_eq!(cfg.block_config, vec![4, 4]);
    build(&cfg, 1).expect("builds");
    let e = DenseNetConfig::from_toml("growth_rat = 3")
        .expect_err("typo")
        .to_string();
    assert!(e.contains("growth_rat"), "{e}");
    let e = DenseNetConfig::from_toml("growth_rate = -3")
        .expect_err("negative")
        .to_string();
    assert!(e.contains("configuration file"), "{e}");
}

mod random_configs {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Any configuration either builds a verified graph or is rejected
        /// with an error; it never panics.
        #[test]
        fn build_never_panics(
            k in 0usize..40,
            blocks in proptest::collection::vec(0usize..5, 0..5),
            init in 0usize..64,
            bn in 0usize..5,
            theta in -0.2f64..1.2,
            image in 0usize..80,
            imagenet in any::<bool>(),
            batch in 0usize..3,
        ) {
            let o = ConfigOverrides {
                growth_rate: Some(k),
                block_config: Some(blocks),
                num_init_features: Some(init),
                bn_size: Some(bn),
                compression: Some(theta),
                image_size: Some(image),
                stem: Some(if imagenet { compiler::builder::Stem::Imagenet } else { compiler::builder::Stem::Cifar }),
                ..Default::default()
            };
            if let Ok(cfg) = DenseNetConfig::resolve(Some("densenet-bc-100"), &o) {
                if let Ok(g) = build(&cfg, batch) {
                    prop_assert!(ir::verify::verify(&g).is_ok());
                }
            }
        }
    }
}
