//! Speed of the reference executor on DenseNet-121-sized work.
//!
//! The graph is built by hand here (torchvision's DenseNet-121 structure,
//! unfused: BN, ReLU, conv, concat) with random weights. The timing test is
//! `#[ignore]`d; run it with
//! `cargo test -p ir --test reference_speed -- --ignored --nocapture`.

use ir::ops::{BatchNorm, Conv2d, Linear, Op, Pool2d};
use ir::reference::{self, Options, Tensor};
use ir::{Constant, Graph, NodeId, TensorType};
use std::time::Instant;

struct Builder {
    g: Graph,
    seed: u64,
}

impl Builder {
    fn constant(&mut self, name: &str, shape: &[usize], lo: f32, hi: f32) -> String {
        self.seed += 1;
        let t = Tensor::random_uniform(shape.to_vec(), self.seed, lo, hi);
        self.g
            .add_constant(name, Constant::with_data(shape.to_vec(), t.data))
            .expect("fresh constant");
        name.to_owned()
    }

    fn bn(&mut self, name: &str, x: NodeId, c: usize) -> NodeId {
        let op = Op::BatchNorm(BatchNorm {
            weight: self.constant(&format!("{name}.weight"), &[c], -0.5, 1.5),
            bias: self.constant(&format!("{name}.bias"), &[c], -0.2, 0.2),
            running_mean: self.constant(&format!("{name}.running_mean"), &[c], -0.5, 0.5),
            running_var: self.constant(&format!("{name}.running_var"), &[c], 0.5, 2.0),
            eps: 1e-5,
        });
        self.g.add_node(name, op, &[x]).expect("bn")
    }

    fn relu(&mut self, name: &str, x: NodeId) -> NodeId {
        self.g.add_node(name, Op::Relu, &[x]).expect("relu")
    }

    fn conv(&mut self, name: &str, x: NodeId, c: usize, o: usize, k: usize, s: usize) -> NodeId {
        let bound = (3.0 / (c * k * k) as f32).sqrt();
        let op = Op::Conv2d(Conv2d {
            weight: self.constant(&format!("{name}.weight"), &[o, c, k, k], -bound, bound),
            bias: None,
            out_channels: o,
            kernel: [k, k],
            stride: [s, s],
            padding: [k / 2, k / 2],
            prologue: None,
            relu: false,
        });
        self.g.add_node(name, op, &[x]).expect("conv")
    }
}

/// torchvision's DenseNet-121 (k=32, blocks 6/12/24/16, init 64, bn_size 4).
fn densenet121(image: usize) -> Graph {
    let mut b = Builder {
        g: Graph::new("densenet121"),
        seed: 0,
    };
    let x =
        b.g.add_input("input", TensorType::f32([1, 3, image, image]))
            .expect("input");
    let x = b.conv("features.conv0", x, 3, 64, 7, 2);
    let x = b.bn("features.norm0", x, 64);
    let x = b.relu("features.relu0", x);
    let pool = Pool2d {
        kernel: [3, 3],
        stride: [2, 2],
        padding: [1, 1],
        prologue: None,
    };
    let mut x =
        b.g.add_node("features.pool0", Op::MaxPool2d(pool), &[x])
            .expect("pool0");
    let mut c = 64;
    let (k, blocks) = (32, [6, 12, 24, 16]);
    for (bi, &layers) in blocks.iter().enumerate() {
        let mut feats = vec![x];
        for l in 1..=layers {
            let p = format!("features.denseblock{}.denselayer{l}", bi + 1);
            let cat = if feats.len() == 1 {
                feats[0]
            } else {
                b.g.add_node(format!("{p}.cat"), Op::Concat, &feats)
                    .expect("cat")
            };
            let cin = c + (l - 1) * k;
            let y = b.bn(&format!("{p}.norm1"), cat, cin);
            let y = b.relu(&format!("{p}.relu1"), y);
            let y = b.conv(&format!("{p}.conv1"), y, cin, 4 * k, 1, 1);
            let y = b.bn(&format!("{p}.norm2"), y, 4 * k);
            let y = b.relu(&format!("{p}.relu2"), y);
            let y = b.conv(&format!("{p}.conv2"), y, 4 * k, k, 3, 1);
            feats.push(y);
        }
        x =
            b.g.add_node(
                format!("features.denseblock{}.out", bi + 1),
                Op::Concat,
                &feats,
            )
            .expect("block out");
        c += layers * k;
        if bi + 1 < blocks.len() {
            let p = format!("features.transition{}", bi + 1);
            let y = b.bn(&format!("{p}.norm"), x, c);
            let y = b.relu(&format!("{p}.relu"), y);
            let y = b.conv(&format!("{p}.conv"), y, c, c / 2, 1, 1);
            c /= 2;
            let pool = Pool2d {
                kernel: [2, 2],
                stride: [2, 2],
                padding: [0, 0],
                prologue: None,
            };
            x =
                b.g.add_node(format!("{p}.pool"), Op::AvgPool2d(pool), &[y])
                    .expect("transition pool");
        }
    }
    let y = b.bn("features.norm5", x, c);
    let y = b.relu("relu", y);
    let y =
        b.g.add_node("pool", Op::GlobalAvgPool { prologue: None }, &[y])
            .expect("gap");
    let y = b.g.add_node("flatten", Op::Flatten, &[y]).expect("flatten");
    let lin = Op::Linear(Linear {
        weight: b.constant("classifier.weight", &[1000, c], -0.03, 0.03),
        bias: Some(b.constant("classifier.bias", &[1000], -0.1, 0.1)),
        out_features: 1000,
    });
    let y = b.g.add_node("classifier", lin, &[y]).expect("linear");
    b.g.set_outputs(vec![y]);
    b.g
}

#[test]
fn densenet121_small_image_is_thread_count_independent() {
    let g = densenet121(64);
    let x = Tensor::random_uniform(vec![1, 3, 64, 64], 7, -2.0, 2.0);
    let one = reference::run_with(
        &g,
        std::slice::from_ref(&x),
        &Options { threads: 1 },
        &mut |_, _| {},
    )
    .expect("run 1 thread");
    let many = reference::run_with(&g, &[x], &Options { threads: 3 }, &mut |_, _| {})
        .expect("run 3 threads");
    assert_eq!(one, many);
    assert_eq!(one[0].shape, vec![1, 1000]);
    assert!(one[0].data.iter().all(|v| v.is_finite()));
}

#[test]
#[ignore = "timing; run with --ignored --nocapture"]
fn densenet121_224_timing() {
    let g = densenet121(224);
    let stats = ir::stats::stats(&g);
    let x = Tensor::random_uniform(vec![1, 3, 224, 224], 7, -2.0, 2.0);
    // Wall time between consecutive observer calls is the time of the node
    // just computed; summed per op kind.
    let mut per_op: std::collections::BTreeMap<&'static str, f64> = Default::default();
    let t0 = Instant::now();
    let mut last = t0;
    let out = reference::run_with(&g, &[x], &Options::default(), &mut |n, _| {
        let now = Instant::now();
        *per_op.entry(n.op.mnemonic()).or_default() += (now - last).as_secs_f64();
        last = now;
    })
    .expect("run");
    let dt = t0.elapsed();
    println!("per op kind (s): {per_op:.3?}");
    println!(
        "densenet121 224x224 batch 1: {:.2} GMAC, {} nodes, {:.2} s ({:.2} GMAC/s), output {:?}",
        stats.macs as f64 / 1e9,
        g.node_count(),
        dt.as_secs_f64(),
        stats.macs as f64 / 1e9 / dt.as_secs_f64(),
        out[0].shape
    );
}
