//! Random DenseNet configurations: the optimised graph, run inside its
//! planned arena, computes what the unoptimised graph computes (reference
//! executor) within 1e-5 relative — with batches above 1, odd image sizes,
//! growth rates that are not multiples of 8, plain layers, conv biases and
//! compression below 0.5 all in the mix.

use crate::common::*;
use compiler::builder::{ConfigOverrides, DenseNetConfig, Stem};
use proptest::prelude::*;

fn configs() -> impl Strategy<Value = (ConfigOverrides, usize, u64)> {
    (
        (
            prop_oneof![Just(Stem::Cifar), Just(Stem::Imagenet)],
            1usize..=11,
            prop::collection::vec(1usize..=3, 1..=3),
            1usize..=12,
            prop_oneof![Just(0usize), 1usize..=4],
            prop_oneof![0.15f64..0.5, 0.5f64..=1.0],
        ),
        (
            any::<bool>(),
            0usize..=6,
            1usize..=3,
            1usize..=4,
            2usize..=3,
            any::<u64>(),
        ),
    )
        .prop_map(
            |(
                (stem, growth, blocks, init, bn_size, compression),
                (conv_bias, extra, in_channels, classes, batch, seed),
            )| {
                // Big enough for every pool and transition, odd half the time.
                let min = if stem == Stem::Imagenet { 8 } else { 2 };
                let size = (min << (blocks.len() - 1)) + extra;
                let o = ConfigOverrides {
                    stem: Some(stem),
                    growth_rate: Some(growth),
                    block_config: Some(blocks),
                    num_init_features: Some(init),
                    bn_size: Some(bn_size),
                    compression: Some(compression),
                    conv_bias: Some(conv_bias),
                    image_size: Some(size),
                    in_channels: Some(in_channels),
                    num_classes: Some(classes),
                    ..Default::default()
                };
                (o, batch, seed)
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn optimised_equals_unoptimised((o, batch, seed) in configs()) {
        let cfg = DenseNetConfig::resolve(Some("densenet121"), &o);
        // Compression can round a transition down to zero channels.
        prop_assume!(cfg.is_ok());
        let cfg = cfg.expect("checked");
        let g = random_graph(&cfg, batch, seed);
        let (opt, report) = optimized(&g);
        let m = report.memory.expect("memory report");
        prop_assert_eq!(m.concat_copies, 0);
        prop_assert!(m.arena_bytes >= m.lower_bound_bytes);
        assert_same_function(&format!("{cfg:?} b{batch}"), &g, &opt, seed);
    }
}
