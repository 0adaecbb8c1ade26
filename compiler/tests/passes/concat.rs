//! `concat-in-place`: one buffer per dense block, each producer writes its
//! slice, no copy remains — for every preset at several batch sizes. The
//! concatenation shapes of other implementations (nested, unplaceable
//! operands, diverging) are file tests: `tests/filetests/*concat*.ir`.

use crate::common::*;
use compiler::builder::{build, DenseNetConfig, PRESETS};
use compiler::memory::concat_copies;
use ir::{Graph, Placement};

fn placement(g: &Graph, name: &str) -> Placement {
    let id = g
        .node_by_name(name)
        .unwrap_or_else(|| panic!("no node `{name}`"));
    g.node(id)
        .placement
        .clone()
        .unwrap_or_else(|| panic!("`{name}` is not placed"))
}

#[test]
fn no_copy_remains_in_any_preset_at_any_batch_size() {
    for name in PRESETS {
        let cfg = DenseNetConfig::preset(name).expect("preset");
        for batch in [1, 3, 8] {
            let mut g = build(&cfg, batch).expect("build");
            assert!(concat_copies(&g) > 0, "the builder's concats copy");
            let report = compiler::passes::optimize(&mut g, true).expect("pipeline");
            let m = report.memory.expect("memory report");
            assert_eq!(m.concat_copies, 0, "{name} b{batch}");
            assert_eq!(
                m.block_buffers,
                cfg.block_config.len(),
                "{name} b{batch}: one buffer per block"
            );
        }
    }
}

#[test]
fn every_producer_writes_its_channel_slice() {
    let cfg = DenseNetConfig::preset("densenet121").expect("preset");
    let g = after(&build(&cfg, 2).expect("build"), "concat-in-place");
    let k = cfg.growth_rate;
    let blocks = [
        ("features.denseblock1", "features.pool0", 64),
        ("features.denseblock2", "features.transition1.conv", 128),
        ("features.denseblock3", "features.transition2.conv", 256),
        ("features.denseblock4", "features.transition3.conv", 512),
    ];
    for ((block, input, c0), &layers) in blocks.iter().zip(&cfg.block_config) {
        let buffer = format!("{block}.cat");
        let buf = &g.buffers[&buffer];
        assert_eq!(buf.ty.shape[1], c0 + layers * k, "{block}");
        assert_eq!(buf.ty.shape[0], 2, "batch");
        assert_eq!(
            placement(&g, input),
            Placement {
                buffer: buffer.clone(),
                channel_offset: 0
            }
        );
        for l in 1..=layers {
            let out = format!("{block}.denselayer{l}.conv2");
            let at = Placement {
                buffer: buffer.clone(),
                channel_offset: c0 + (l - 1) * k,
            };
            assert_eq!(placement(&g, &out), at, "{out}");
            if l > 1 {
                // Layer l reads a view: the prefix of the buffer.
                let cat = g
                    .node_by_name(&format!("{block}.denselayer{l}.cat"))
                    .expect("cat");
                assert!(g.is_view(cat));
                assert_eq!(
                    placement(&g, &format!("{block}.denselayer{l}.cat")).channel_offset,
                    0
                );
            }
        }
    }
    assert_eq!(concat_copies(&g), 0);
}
