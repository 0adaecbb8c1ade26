//! `concat-in-place`: one buffer per dense block, each producer writes its
//! slice, no copy remains — for every preset at several batch sizes, and
//! for the concatenation shapes of other implementations.

mod passes_common;

use compiler::builder::{build, DenseNetConfig, PRESETS};
use compiler::memory::concat_copies;
use ir::{Graph, Op, Placement};
use passes_common::*;

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

/// Implementations that concatenate inside each layer:
/// `x1 = cat(x0, f(x0)); x2 = cat(x1, f(x1)); …`.
#[test]
fn nested_concatenations_share_one_buffer() {
    let (mut h, x) = Hand::new("nested", [2, 3, 7, 7]);
    let mut cur = h.conv("stem", x, 5, 3, 1, 1, true);
    for l in 0..4 {
        let bn = h.bn(&format!("l{l}.norm"), cur);
        let r = h.op(&format!("l{l}.relu"), Op::Relu, &[bn]);
        let f = h.conv(&format!("l{l}.conv"), r, 3, 3, 1, 1, false);
        cur = h.op(&format!("l{l}.cat"), Op::Concat, &[cur, f]);
    }
    let gap = h.op("gap", Op::GlobalAvgPool { prologue: None }, &[cur]);
    let g = h.finish(vec![gap], 8);
    let (o, report) = optimized(&g);
    let m = report.memory.expect("memory");
    assert_eq!(m.concat_copies, 0);
    assert_eq!(m.block_buffers, 1);
    assert_eq!(placement(&o, "stem").channel_offset, 0);
    assert_eq!(placement(&o, "l3.conv").channel_offset, 5 + 3 * 3);
    assert_same_function("nested", &g, &o, 1);
}

/// What cannot be placed is copied into its slot, once, and counted: a
/// graph input as the block input, and a value concatenated twice.
#[test]
fn unplaceable_operands_are_copied_and_counted() {
    let (mut h, x) = Hand::new("copies", [1, 4, 5, 5]);
    let f1 = h.conv("f1", x, 2, 3, 1, 1, false);
    let c1 = h.op("c1", Op::Concat, &[x, f1]);
    let f2 = h.conv("f2", c1, 2, 1, 1, 0, true);
    let c2 = h.op("c2", Op::Concat, &[x, f1, f2]);
    let twice = h.op("twice", Op::Concat, &[f2, f2]);
    let g = h.finish(vec![c2, twice], 9);
    let (o, report) = optimized(&g);
    let m = report.memory.expect("memory");
    // One copy of the input into the block buffer (shared by c1 and c2);
    // `twice` cannot fit where f2 lives, so both of its slots are copies.
    assert_eq!(m.concat_copies, 3);
    for copy in ["input.copy", "f2.copy", "f2.copy.1"] {
        assert!(o.node_by_name(copy).is_some(), "{copy}");
    }
    assert!(o.is_view(o.node_by_name("c1").expect("c1")));
    assert!(o.is_view(o.node_by_name("c2").expect("c2")));
    assert_same_function("copies", &g, &o, 2);
}

/// A concatenation that starts like a block's but continues with another
/// value must not write over the block's slices: it gets its own buffer.
#[test]
fn a_diverging_concatenation_never_overwrites_a_slice() {
    let (mut h, x) = Hand::new("diverging", [2, 3, 6, 6]);
    let x0 = h.conv("x0", x, 4, 3, 1, 1, false);
    let f1 = h.conv("f1", x0, 2, 3, 1, 1, true);
    let f2 = h.conv("f2", x0, 2, 1, 1, 0, false);
    let block = h.op("block", Op::Concat, &[x0, f1, f2]);
    let other = h.conv("other", x0, 2, 1, 1, 0, true);
    let diverging = h.op("diverging", Op::Concat, &[x0, other]);
    let g = h.finish(vec![block, diverging], 10);
    let (o, report) = optimized(&g);
    assert_eq!(placement(&o, "f1").buffer, "block");
    let d = placement(&o, "diverging");
    assert_eq!(d.buffer, "diverging", "a buffer of its own");
    assert_eq!(
        placement(&o, "other"),
        Placement {
            buffer: "diverging".into(),
            channel_offset: 4
        }
    );
    assert_eq!(
        report.memory.expect("memory").concat_copies,
        1,
        "x0 copied once"
    );
    assert_same_function("diverging", &g, &o, 3);
}
