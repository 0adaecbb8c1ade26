//! Shared by the `weights_*` tests: test data paths, a hand-built DenseNet
//! graph with torchvision's constant names, and a tiny NCHW interpreter
//! for it (until the builder and reference executor land).

#![allow(dead_code)]

use ir::ops::{BatchNorm, Pool2d};
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

/// Run a bound graph (the ops [`densenet`] uses) on one input.
pub fn run(g: &Graph, input: &Nd) -> Nd {
    let out = g.outputs()[0];
    run_all(g, input)
        .into_iter()
        .find(|(id, _)| *id == out)
        .expect("output computed")
        .1
}

/// Every node's value, in schedule order.
pub fn run_all(g: &Graph, input: &Nd) -> Vec<(NodeId, Nd)> {
    let mut values: Vec<Option<Nd>> = Vec::new();
    let order = g.schedule().expect("acyclic");
    let slot = |id: NodeId| id.index();
    values.resize(order.iter().map(|&i| slot(i) + 1).max().unwrap_or(0), None);
    let w = |name: &str| g.constant_data(name).expect("bound constant").clone();
    for id in order {
        let node = g.node(id);
        let ins: Vec<&Nd> = g
            .operands(id)
            .iter()
            .map(|&o| values[slot(o)].as_ref().expect("operand computed"))
            .collect();
        let shape = node.ty.shape.clone();
        let out = match &node.op {
            Op::Input => input.clone(),
            Op::Conv2d(c) => {
                let x = ins[0];
                let (n, ci, h, wd) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
                let (co, ho, wo) = (shape[1], shape[2], shape[3]);
                let [kh, kw] = c.kernel;
                let wt = w(&c.weight);
                let bias = c.bias.as_ref().map(|b| w(b));
                let mut y = vec![0f32; n * co * ho * wo];
                for b in 0..n {
                    for o in 0..co {
                        for oy in 0..ho {
                            for ox in 0..wo {
                                let mut acc = bias.as_ref().map_or(0.0, |b| b[o]);
                                for i in 0..ci {
                                    for ky in 0..kh {
                                        for kx in 0..kw {
                                            let iy = (oy * c.stride[0] + ky) as isize
                                                - c.padding[0] as isize;
                                            let ix = (ox * c.stride[1] + kx) as isize
                                                - c.padding[1] as isize;
                                            if iy < 0
                                                || ix < 0
                                                || iy >= h as isize
                                                || ix >= wd as isize
                                            {
                                                continue;
                                            }
                                            let xv = x.data[((b * ci + i) * h + iy as usize) * wd
                                                + ix as usize];
                                            acc += xv * wt[((o * ci + i) * kh + ky) * kw + kx];
                                        }
                                    }
                                }
                                y[((b * co + o) * ho + oy) * wo + ox] = acc;
                            }
                        }
                    }
                }
                Nd { shape, data: y }
            }
            Op::BatchNorm(bn) => {
                let x = ins[0];
                let (gm, bt, mu, var) = (
                    w(&bn.weight),
                    w(&bn.bias),
                    w(&bn.running_mean),
                    w(&bn.running_var),
                );
                let (c, hw) = (x.shape[1], x.shape[2] * x.shape[3]);
                let data = x
                    .data
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| {
                        let ch = (i / hw) % c;
                        (v - mu[ch]) / (var[ch] + bn.eps).sqrt() * gm[ch] + bt[ch]
                    })
                    .collect();
                Nd { shape, data }
            }
            Op::Relu => Nd {
                shape,
                data: ins[0].data.iter().map(|&v| v.max(0.0)).collect(),
            },
            Op::Concat => {
                let n = shape[0];
                let mut data = Vec::with_capacity(shape.iter().product());
                for b in 0..n {
                    for x in &ins {
                        let per = x.data.len() / n;
                        data.extend_from_slice(&x.data[b * per..(b + 1) * per]);
                    }
                }
                Nd { shape, data }
            }
            Op::MaxPool2d(p) | Op::AvgPool2d(p) => {
                let max = matches!(node.op, Op::MaxPool2d(_));
                let x = ins[0];
                let (h, wd) = (x.shape[2], x.shape[3]);
                let (nc, ho, wo) = (shape[0] * shape[1], shape[2], shape[3]);
                let mut data = Vec::with_capacity(nc * ho * wo);
                for plane in 0..nc {
                    for oy in 0..ho {
                        for ox in 0..wo {
                            let mut acc = if max { f32::NEG_INFINITY } else { 0.0 };
                            for ky in 0..p.kernel[0] {
                                for kx in 0..p.kernel[1] {
                                    let iy =
                                        (oy * p.stride[0] + ky) as isize - p.padding[0] as isize;
                                    let ix =
                                        (ox * p.stride[1] + kx) as isize - p.padding[1] as isize;
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                                        continue;
                                    }
                                    let v = x.data[(plane * h + iy as usize) * wd + ix as usize];
                                    acc = if max { acc.max(v) } else { acc + v };
                                }
                            }
                            if !max {
                                acc /= (p.kernel[0] * p.kernel[1]) as f32;
                            }
                            data.push(acc);
                        }
                    }
                }
                Nd { shape, data }
            }
            Op::GlobalAvgPool { .. } => {
                let x = ins[0];
                let hw = x.shape[2] * x.shape[3];
                let data = x
                    .data
                    .chunks(hw)
                    .map(|c| c.iter().sum::<f32>() / hw as f32)
                    .collect();
                Nd { shape, data }
            }
            Op::Flatten => Nd {
                shape,
                data: ins[0].data.clone(),
            },
            Op::Linear(l) => {
                let x = ins[0];
                let (n, i) = (x.shape[0], x.shape[1]);
                let o = l.out_features;
                let wt = w(&l.weight);
                let bias = l.bias.as_ref().map(|b| w(b));
                let mut data = vec![0f32; n * o];
                for b in 0..n {
                    for j in 0..o {
                        let mut acc = bias.as_ref().map_or(0.0, |b| b[j]);
                        for k in 0..i {
                            acc += x.data[b * i + k] * wt[j * i + k];
                        }
                        data[b * o + j] = acc;
                    }
                }
                Nd { shape, data }
            }
            other => panic!("the test interpreter does not run {}", other.mnemonic()),
        };
        values[slot(id)] = Some(out);
    }
    g.schedule()
        .expect("acyclic")
        .into_iter()
        .map(|id| (id, values[slot(id)].take().expect("computed")))
        .collect()
}
