//! The four local rewrites, each on the builder's graphs and on hand-built
//! graphs of other DenseNet implementations: what they rewrite, what they
//! leave alone, and (with random weights and random BN statistics) that
//! the values do not change.

mod passes_common;

use compiler::builder::ConfigOverrides;
use ir::ops::Pool2d;
use ir::{Graph, Op};
use passes_common::*;

/// A small ImageNet-stem DenseNet-BC: conv0/norm0/relu0/pool0, two blocks.
fn small_imagenet(conv_bias: bool) -> Graph {
    let cfg = config(
        "densenet121",
        ConfigOverrides {
            growth_rate: Some(6),
            block_config: Some(vec![2, 3]),
            num_init_features: Some(10),
            image_size: Some(29),
            conv_bias: Some(conv_bias),
            num_classes: Some(5),
            ..Default::default()
        },
    );
    random_graph(&cfg, 2, 5)
}

fn conv(g: &Graph, name: &str) -> ir::ops::Conv2d {
    match op_of(g, name) {
        Op::Conv2d(c) => c.clone(),
        other => panic!("`{name}` is a {}", other.mnemonic()),
    }
}

fn check(what: &str, before: &Graph, after: &Graph) {
    assert_same_function(what, before, after, 99);
}

#[test]
fn fold_batchnorm_folds_norm0_and_every_norm2() {
    for bias in [false, true] {
        let g = small_imagenet(bias);
        let f = after(&g, "fold-batchnorm");
        for gone in [
            "features.norm0",
            "features.denseblock1.denselayer1.norm2",
            "features.denseblock2.denselayer3.norm2",
        ] {
            assert!(f.node_by_name(gone).is_none(), "{gone} survived");
        }
        let c0 = conv(&f, "features.conv0");
        assert_eq!(c0.weight, "features.conv0.weight.bnfold");
        assert_eq!(c0.bias.as_deref(), Some("features.conv0.bias.bnfold"));
        assert!(!c0.relu && c0.prologue.is_none());
        // Pre-activations are not this pass's business.
        assert!(matches!(
            op_of(&f, "features.denseblock1.denselayer1.norm1"),
            Op::BatchNorm(_)
        ));
        assert!(matches!(op_of(&f, "features.norm5"), Op::BatchNorm(_)));
        assert_eq!(
            count(&f, "batch_norm"),
            5 + 1 + 1,
            "norm1 x5, transition, norm5"
        );
        check(&format!("fold, conv bias {bias}"), &g, &f);
    }
}

#[test]
fn fold_batchnorm_leaves_a_conv_with_other_users() {
    let (mut h, x) = Hand::new("shared_conv", [2, 3, 9, 9]);
    let c = h.conv("conv", x, 6, 3, 1, 1, true);
    let bn = h.bn("bn", c);
    let r = h.op("relu", Op::Relu, &[bn]);
    let c2 = h.conv("conv2", r, 4, 3, 1, 1, false);
    let side = h.op("side", Op::GlobalAvgPool { prologue: None }, &[c]);
    // And a conv that is itself a graph output, followed by a BN.
    let c3 = h.conv("conv3", x, 5, 1, 1, 0, false);
    let bn3 = h.bn("bn3", c3);
    let g = h.finish(vec![c2, side, c3, bn3], 1);
    let f = after(&g, "fold-batchnorm");
    assert!(matches!(op_of(&f, "bn"), Op::BatchNorm(_)));
    assert!(matches!(op_of(&f, "bn3"), Op::BatchNorm(_)));
    assert_eq!(conv(&f, "conv").weight, "conv.weight");
    // The rest of the pipeline still takes them: prologue / ChannelAffine.
    let (o, _) = optimized(&g);
    assert!(conv(&o, "conv2").prologue.is_some());
    assert!(matches!(op_of(&o, "bn3"), Op::ChannelAffine(a) if !a.relu));
    check("conv with other users", &g, &o);
}

#[test]
fn fuse_preactivation_makes_prologues_of_every_norm1_transition_and_norm5() {
    let g = small_imagenet(false);
    let f = after(&g, "fuse-preactivation");
    assert_eq!(count(&f, "batch_norm"), 0);
    let c1 = conv(&f, "features.denseblock2.denselayer2.conv1");
    let p = c1.prologue.expect("norm1 is conv1's prologue");
    assert!(p.relu);
    assert_eq!(p.scale, "features.denseblock2.denselayer2.norm1.scale");
    assert!(conv(&f, "features.transition1.conv").prologue.is_some());
    assert!(matches!(op_of(&f, "avgpool"), Op::GlobalAvgPool { prologue: Some(a) } if a.relu));
    check("fuse-preactivation", &g, &f);
}

/// The prologue sees real pixels only: padded 3x3 convs, a padded max pool
/// (PyTorch pads with -inf) and a padded average pool (counts the zeros),
/// each after a BN with and without ReLU, with non-zero shifts.
#[test]
fn prologues_never_touch_padding() {
    let (mut h, x) = Hand::new("padding", [2, 5, 7, 7]);
    let mut outs = Vec::new();
    for (i, relu) in [(0, true), (1, false)] {
        let bn = h.bn(&format!("bn{i}"), x);
        let y = if relu {
            h.op(&format!("relu{i}"), Op::Relu, &[bn])
        } else {
            bn
        };
        outs.push(h.conv(&format!("conv{i}"), y, 4, 3, 1, 1, false));
        let bn = h.bn(&format!("bnm{i}"), x);
        let y = if relu {
            h.op(&format!("relum{i}"), Op::Relu, &[bn])
        } else {
            bn
        };
        outs.push(h.op(&format!("max{i}"), Op::MaxPool2d(Hand::pool(3, 2, 1)), &[y]));
        let bn = h.bn(&format!("bna{i}"), x);
        let y = if relu {
            h.op(&format!("relua{i}"), Op::Relu, &[bn])
        } else {
            bn
        };
        outs.push(h.op(&format!("avg{i}"), Op::AvgPool2d(Hand::pool(3, 1, 1)), &[y]));
    }
    let g = h.finish(outs, 2);
    let f = after(&g, "fuse-preactivation");
    assert_eq!(
        count(&f, "batch_norm") + count(&f, "relu") + count(&f, "channel_affine"),
        0
    );
    for n in ["conv0", "max0", "avg0", "conv1", "max1", "avg1"] {
        let p = f.node(f.node_by_name(n).expect(n)).op.prologue().cloned();
        assert_eq!(p.map(|p| p.relu), Some(n.ends_with('0')), "{n}");
    }
    check("padding", &g, &f);
    let (o, _) = optimized(&g);
    check("padding, whole pipeline", &g, &o);
}

#[test]
fn a_bn_feeding_two_consumers_is_duplicated_into_both() {
    let (mut h, x) = Hand::new("two_consumers", [1, 4, 6, 6]);
    let bn = h.bn("bn", x);
    let r = h.op("relu", Op::Relu, &[bn]);
    let a = h.conv("conv_a", r, 3, 1, 1, 0, false);
    let b = h.conv("conv_b", r, 2, 3, 1, 1, true);
    let m = h.op("pool", Op::MaxPool2d(Hand::pool(2, 2, 0)), &[r]);
    let cat = h.op("cat", Op::Concat, &[a, b]);
    let g = h.finish(vec![cat, m], 3);
    let f = after(&g, "fuse-preactivation");
    assert!(f.node_by_name("bn").is_none() && f.node_by_name("relu").is_none());
    let pa = conv(&f, "conv_a").prologue.expect("a");
    let pb = conv(&f, "conv_b").prologue.expect("b");
    assert_eq!(pa, pb);
    assert_eq!(
        f.node(f.node_by_name("pool").expect("pool")).op.prologue(),
        Some(&pa)
    );
    let (o, _) = optimized(&g);
    check("two consumers", &g, &o);
}

/// BNs of other implementations: one whose value also feeds a concat, one
/// that is a graph output, one before a flatten, and a post-activation BN
/// (conv → ReLU → BN → conv).
#[test]
fn other_bns_become_channel_affine_ops_or_prologues() {
    let (mut h, x) = Hand::new("other_bns", [2, 3, 5, 5]);
    let bn = h.bn("bn_shared", x);
    let r = h.op("relu_shared", Op::Relu, &[bn]);
    let c = h.conv("conv", r, 3, 3, 1, 1, false);
    let cat = h.op("cat", Op::Concat, &[r, c]);
    let out_bn = h.bn("bn_out", cat);
    let bn_f = h.bn("bn_flat", x);
    let r_f = h.op("relu_flat", Op::Relu, &[bn_f]);
    let flat = h.op("flatten", Op::Flatten, &[r_f]);
    let c1 = h.conv("post_conv", x, 4, 3, 1, 1, true);
    let r1 = h.op("post_relu", Op::Relu, &[c1]);
    let bn_p = h.bn("post_bn", r1);
    let c2 = h.conv("post_conv2", bn_p, 2, 3, 1, 1, false);
    let g = h.finish(vec![out_bn, flat, c2], 4);
    let (o, _) = optimized(&g);
    assert!(matches!(op_of(&o, "bn_shared"), Op::ChannelAffine(a) if a.relu));
    assert!(conv(&o, "conv").prologue.is_some());
    assert!(matches!(op_of(&o, "bn_out"), Op::ChannelAffine(a) if !a.relu));
    assert!(matches!(op_of(&o, "bn_flat"), Op::ChannelAffine(a) if a.relu));
    assert!(
        conv(&o, "post_conv").relu,
        "the ReLU before the BN is an epilogue"
    );
    assert!(conv(&o, "post_conv2")
        .prologue
        .as_ref()
        .is_some_and(|p| !p.relu));
    assert_eq!(count(&o, "batch_norm") + count(&o, "relu"), 0);
    check("other BNs", &g, &o);
}

#[test]
fn fuse_epilogue_takes_the_relu_after_each_conv() {
    let g = small_imagenet(true);
    let f = after(&g, "fuse-epilogue");
    assert_eq!(count(&f, "relu"), 0);
    assert!(conv(&f, "features.conv0").relu);
    assert!(conv(&f, "features.denseblock1.denselayer2.conv1").relu);
    assert!(!conv(&f, "features.denseblock1.denselayer2.conv2").relu);
    check("fuse-epilogue", &g, &f);

    // A conv whose value is also used unrectified keeps its ReLU separate.
    let (mut h, x) = Hand::new("shared", [1, 2, 4, 4]);
    let c = h.conv("conv", x, 3, 1, 1, 0, false);
    let r = h.op("relu", Op::Relu, &[c]);
    let g = h.finish(vec![r, c], 5);
    let f = after(&g, "fuse-epilogue");
    assert!(!conv(&f, "conv").relu);
    assert_eq!(count(&f, "relu"), 1);
}

#[test]
fn reorder_transition_pools_first() {
    // Odd block sizes (the pool drops a row and a column), conv biases.
    for (arch, size) in [
        ("densenet121", 61),
        ("densenet-bc-100", 13),
        ("densenet-40", 11),
    ] {
        let cfg = config(
            arch,
            ConfigOverrides {
                growth_rate: Some(5),
                block_config: Some(vec![2, 2, 1]),
                image_size: Some(size),
                conv_bias: Some(true),
                compression: Some(0.4),
                ..Default::default()
            },
        );
        let g = random_graph(&cfg, 2, 6);
        let before = after(&g, "fuse-epilogue");
        let f = after(&g, "reorder-transition");
        for t in ["features.transition1", "features.transition2"] {
            let pool = f.node_by_name(&format!("{t}.pool")).expect("pool");
            let conv_id = f.node_by_name(&format!("{t}.conv")).expect("conv");
            assert_eq!(
                f.operands(conv_id),
                vec![pool],
                "{arch}: {t}.conv reads the pool"
            );
            let Op::AvgPool2d(p) = &f.node(pool).op else {
                panic!("{t}.pool is not a pool")
            };
            assert!(
                p.prologue.as_ref().is_some_and(|a| a.relu),
                "the BN+ReLU moved onto the pool"
            );
            let c = conv(&f, &format!("{t}.conv"));
            assert!(c.prologue.is_none() && c.bias.is_some());
        }
        let macs = |g: &Graph| ir::stats::stats(g).macs;
        let saved = macs(&before) - macs(&f);
        let transition_macs: u64 = ["features.transition1.conv", "features.transition2.conv"]
            .iter()
            .map(|n| {
                let id = before.node_by_name(n).expect("conv");
                let t = &before.node(id).ty;
                let cin = before.node(before.operands(id)[0]).ty.shape[1];
                (t.num_elements().expect("size") * cin) as u64
            })
            .sum();
        // The conv now runs on floor(H/2) x floor(W/2) pixels.
        assert!(
            saved * 4 >= transition_macs * 3,
            "{arch}: saved {saved} of {transition_macs}"
        );
        check(&format!("reorder {arch} at {size}"), &g, &f);
    }
}

#[test]
fn reorder_transition_refuses_what_does_not_commute() {
    let avg = |k: usize, s: usize, p: usize| {
        Op::AvgPool2d(Pool2d {
            ..Hand::pool(k, s, p)
        })
    };
    type Case = (&'static str, (usize, usize, usize), bool, Op, bool);
    let cases: [Case; 6] = [
        ("relu epilogue", (1, 1, 0), true, avg(2, 2, 0), false),
        ("3x3 conv", (3, 1, 1), false, avg(2, 2, 0), false),
        ("strided conv", (1, 2, 0), false, avg(2, 2, 0), false),
        ("overlapping pool", (1, 1, 0), false, avg(3, 2, 0), false),
        ("padded pool", (1, 1, 0), false, avg(2, 2, 1), false),
        (
            "conv with another user",
            (1, 1, 0),
            false,
            avg(2, 2, 0),
            true,
        ),
    ];
    for (what, (k, s, p), relu, pool, shared) in cases {
        let (mut h, x) = Hand::new("refuse", [1, 4, 8, 8]);
        let mut c = h.conv("conv", x, 3, k, s, p, true);
        if relu {
            c = h.op("relu", Op::Relu, &[c]);
        }
        let q = h.op("pool", pool, &[c]);
        let outs = if shared { vec![q, c] } else { vec![q] };
        let g = h.finish(outs, 7);
        let f = after(&g, "reorder-transition");
        assert!(matches!(op_of(&f, "pool"), Op::AvgPool2d(_)), "{what}");
        assert!(matches!(op_of(&f, "conv"), Op::Conv2d(_)), "{what}");
        let pool_id = f.node_by_name("pool").expect("pool");
        let conv_id = f.node_by_name("conv").expect("conv");
        assert_eq!(f.operands(pool_id), vec![conv_id], "{what}: not reordered");
        let (o, _) = optimized(&g);
        check(what, &g, &o);
    }
}
