//! Shared by the `weights` tests: test data paths, a hand-built DenseNet
//! graph with torchvision's constant names (its stem, 3x3 conv then max
//! pool, is one the builder does not offer), run by `ir::reference`.

use ir::ops::{BatchNorm, Pool2d};
use ir::reference::{self, Options, Tensor};
use ir::{Constant, Conv2d, Graph, Linear, NodeId, Op, TensorType};
use std::path::PathBuf;

pub fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// A torchvision-style DenseNet with a small stem: conv0 3x3/1 (pad 1),
/// norm0, relu0, pool0 max 3x3/2 (pad 1), dense blocks, transitions
/// (norm, relu, 1x1 conv to floor(C/2), avg pool 2x2), norm5, relu, global
/// average pool, classifier.
#[derive(Debug, Clone)]
pub struct Config {
    pub in_channels: usize,
    pub image: usize,
    pub init_features: usize,
    pub growth: usize,
    /// 0 = plain layers (norm1, relu, 3x3 conv1).
    pub bn_size: usize,
    pub blocks: Vec<usize>,
    pub classes: usize,
    pub conv_bias: bool,
}

impl Config {
    /// The model of `tools/gen_weight_test_files.py`.
    pub fn mini() -> Self {
        Config {
            in_channels: 2,
            image: 8,
            init_features: 4,
            growth: 2,
            bn_size: 2,
            blocks: vec![2, 1],
            classes: 3,
            conv_bias: false,
        }
    }
}

struct Builder {
    g: Graph,
    conv_bias: bool,
}

impl Builder {
    fn channels(&self, x: NodeId) -> usize {
        self.g.node(x).ty.shape[1]
    }

    fn conv(&mut self, name: &str, x: NodeId, out: usize, k: usize, s: usize, p: usize) -> NodeId {
        let c = self.channels(x);
        let weight = format!("{name}.weight");
        self.g
            .add_constant(&weight, Constant::unbound([out, c, k, k]))
            .expect("fresh constant");
        let bias = self.conv_bias.then(|| format!("{name}.bias"));
        if let Some(b) = &bias {
            self.g
                .add_constant(b, Constant::unbound([out]))
                .expect("fresh constant");
        }
        let op = Op::Conv2d(Conv2d {
            weight,
            bias,
            out_channels: out,
            kernel: [k, k],
            stride: [s, s],
            padding: [p, p],
            prologue: None,
            relu: false,
        });
        self.g.add_node(name, op, &[x]).expect("valid conv")
    }

    fn bn_relu(&mut self, name: &str, x: NodeId) -> NodeId {
        let c = self.channels(x);
        let field = |f: &str| format!("{name}.{f}");
        for f in ["weight", "bias", "running_mean", "running_var"] {
            self.g
                .add_constant(field(f), Constant::unbound([c]))
                .expect("fresh constant");
        }
        let op = Op::BatchNorm(BatchNorm {
            weight: field("weight"),
            bias: field("bias"),
            running_mean: field("running_mean"),
            running_var: field("running_var"),
            eps: 1e-5,
        });
        let bn = self.g.add_node(name, op, &[x]).expect("valid bn");
        self.g
            .add_node(format!("{name}/relu"), Op::Relu, &[bn])
            .expect("valid relu")
    }

    fn pool(&mut self, name: &str, x: NodeId, max: bool, k: usize, s: usize, p: usize) -> NodeId {
        let pool = Pool2d {
            kernel: [k, k],
            stride: [s, s],
            padding: [p, p],
            prologue: None,
        };
        let op = if max {
            Op::MaxPool2d(pool)
        } else {
            Op::AvgPool2d(pool)
        };
        self.g.add_node(name, op, &[x]).expect("valid pool")
    }

    fn concat(&mut self, name: &str, xs: &[NodeId]) -> NodeId {
        if let [x] = xs {
            return *x;
        }
        self.g.add_node(name, Op::Concat, xs).expect("valid concat")
    }
}

/// Build the graph of `cfg` for batch size `batch`, constants unbound.
pub fn densenet(cfg: &Config, batch: usize) -> Graph {
    let mut b = Builder {
        g: Graph::new("densenet"),
        conv_bias: cfg.conv_bias,
    };
    let x =
        b.g.add_input(
            "input",
            TensorType::f32([batch, cfg.in_channels, cfg.image, cfg.image]),
        )
        .expect("input");
    let x = b.conv("features.conv0", x, cfg.init_features, 3, 1, 1);
    let x = b.bn_relu("features.norm0", x);
    let mut x = b.pool("features.pool0", x, true, 3, 2, 1);
    for (i, &layers) in cfg.blocks.iter().enumerate() {
        let block = format!("features.denseblock{}", i + 1);
        let mut feats = vec![x];
        for j in 1..=layers {
            let l = format!("{block}.denselayer{j}");
            let input = b.concat(&format!("{l}/input"), &feats);
            let h = b.bn_relu(&format!("{l}.norm1"), input);
            let h = if cfg.bn_size > 0 {
                let h = b.conv(&format!("{l}.conv1"), h, cfg.bn_size * cfg.growth, 1, 1, 0);
                let h = b.bn_relu(&format!("{l}.norm2"), h);
                b.conv(&format!("{l}.conv2"), h, cfg.growth, 3, 1, 1)
            } else {
                b.conv(&format!("{l}.conv1"), h, cfg.growth, 3, 1, 1)
            };
            feats.push(h);
        }
        x = b.concat(&format!("{block}/output"), &feats);
        if i + 1 < cfg.blocks.len() {
            let t = format!("features.transition{}", i + 1);
            let c = b.channels(x);
            let h = b.bn_relu(&format!("{t}.norm"), x);
            let h = b.conv(&format!("{t}.conv"), h, c / 2, 1, 1, 0);
            x = b.pool(&format!("{t}.pool"), h, false, 2, 2, 0);
        }
    }
    let x = b.bn_relu("features.norm5", x);
    let x =
        b.g.add_node("pool", Op::GlobalAvgPool { prologue: None }, &[x])
            .expect("gap");
    let x = b.g.add_node("flatten", Op::Flatten, &[x]).expect("flatten");
    let c = b.channels(x);
    for (n, shape) in [
        ("classifier.weight", vec![cfg.classes, c]),
        ("classifier.bias", vec![cfg.classes]),
    ] {
        b.g.add_constant(n, Constant::unbound(shape))
            .expect("fresh constant");
    }
    let op = Op::Linear(Linear {
        weight: "classifier.weight".into(),
        bias: Some("classifier.bias".into()),
        out_features: cfg.classes,
    });
    let y = b.g.add_node("classifier", op, &[x]).expect("linear");
    b.g.set_outputs(vec![y]);
    ir::verify::verify(&b.g).expect("the hand-built graph verifies");
    b.g
}

/// An NCHW tensor for the interpreter.
#[derive(Debug, Clone)]
pub struct Nd {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Run a bound graph on one input with the reference executor.
pub fn run(g: &Graph, input: &Nd) -> Nd {
    let t = Tensor::from_vec(input.shape.clone(), input.data.clone()).expect("input tensor");
    let out = reference::run(g, &[t]).expect("reference run");
    let o = out.into_iter().next().expect("one output");
    Nd {
        shape: o.shape,
        data: o.data,
    }
}

/// Every node's value, in schedule order.
pub fn run_all(g: &Graph, input: &Nd) -> Vec<(NodeId, Nd)> {
    let t = Tensor::from_vec(input.shape.clone(), input.data.clone()).expect("input tensor");
    let mut values = Vec::new();
    reference::run_with(g, &[t], &Options::default(), &mut |node, v| {
        let id = g.node_by_name(&node.name).expect("node exists");
        values.push((
            id,
            Nd {
                shape: v.shape.clone(),
                data: v.data.clone(),
            },
        ));
    })
    .expect("reference run");
    values
}
