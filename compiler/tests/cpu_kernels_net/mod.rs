//! A whole DenseNet, in the fused form the pass pipeline produces, built
//! twice from the same random weights: as an IR graph (with explicit
//! concatenations, for the reference executor) and as the kernel list with
//! block-buffer views (what the integration will produce), so a chain of
//! kernels can be checked and timed end to end.
#![allow(dead_code)]

use crate::cpu_kernels_support::{constant, Rng};
use compiler::backend::kernel::{KernelDesc, View};
use ir::graph::{Graph, NodeId};
use ir::ops::{ChannelAffine, Conv2d, Linear, Op, Pool2d};
use ir::types::TensorType;

#[derive(Debug, Clone)]
pub struct NetConfig {
    pub batch: usize,
    pub in_channels: usize,
    pub size: usize,
    /// 7x7/2 conv + 3x3/2 max pool, else one 3x3 conv.
    pub imagenet_stem: bool,
    pub init_features: usize,
    pub growth: usize,
    /// Bottleneck width multiplier (0: plain layers, one 3x3 conv each).
    pub bn_size: usize,
    pub blocks: Vec<usize>,
    pub classes: usize,
}

impl NetConfig {
    pub fn densenet121(batch: usize) -> NetConfig {
        NetConfig {
            batch,
            in_channels: 3,
            size: 224,
            imagenet_stem: true,
            init_features: 64,
            growth: 32,
            bn_size: 4,
            blocks: vec![6, 12, 24, 16],
            classes: 1000,
        }
    }
}

pub struct Net {
    pub graph: Graph,
    pub kernels: Vec<KernelDesc>,
    pub input: View,
    pub input_shape: Vec<usize>,
    pub output: View,
}

struct Builder {
    g: Graph,
    kernels: Vec<KernelDesc>,
    rng: Rng,
    next_offset: usize,
    n: usize,
}

impl Builder {
    fn alloc(&mut self, h: usize, w: usize, c: usize) -> View {
        let v = View::dense(self.next_offset, self.n, h, w, c);
        self.next_offset = v.end_bytes().div_ceil(64) * 64;
        v
    }

    fn alloc_bordered(&mut self, h: usize, w: usize, c: usize, border: [usize; 2]) -> View {
        let v = View::dense(self.next_offset, self.n, h, w, c).with_border(border);
        self.next_offset = v.end_bytes().div_ceil(64) * 64;
        v
    }

    fn affine(&mut self, name: &str, c: usize, relu: bool) -> ChannelAffine {
        let (scale, shift) = (format!("{name}.scale"), format!("{name}.shift"));
        let s = self.rng.vec(c, 0.6, 1.4);
        let t = self.rng.vec(c, -0.3, 0.6);
        constant(&mut self.g, &scale, vec![c], s);
        constant(&mut self.g, &shift, vec![c], t);
        ChannelAffine { scale, shift, relu }
    }

    fn node(&mut self, name: &str, op: Op, operand: NodeId, i: View, o: View) -> NodeId {
        let id = self.g.add_node(name, op.clone(), &[operand]).expect("node");
        let k = KernelDesc::from_ir(name, &op, &self.g.constants, i, o).expect("kernel");
        self.kernels.push(k);
        id
    }

    #[allow(clippy::too_many_arguments)]
    fn conv(
        &mut self,
        name: &str,
        x: NodeId,
        (i, o): (View, View),
        k: usize,
        stride: usize,
        prologue: bool,
        relu: bool,
    ) -> NodeId {
        let (ic, oc) = (i.channels, o.channels);
        let bound = 1.5 / ((ic * k * k) as f32).sqrt();
        let w = self.rng.vec(oc * ic * k * k, -bound, bound);
        constant(&mut self.g, &format!("{name}.w"), vec![oc, ic, k, k], w);
        let b = self.rng.vec(oc, -0.1, 0.1);
        constant(&mut self.g, &format!("{name}.b"), vec![oc], b);
        let prologue = prologue.then(|| self.affine(&format!("{name}.pro"), ic, true));
        let op = Op::Conv2d(Conv2d {
            weight: format!("{name}.w"),
            bias: Some(format!("{name}.b")),
            out_channels: oc,
            kernel: [k, k],
            stride: [stride, stride],
            padding: [k / 2, k / 2],
            prologue,
            relu,
        });
        self.node(name, op, x, i, o)
    }

    fn concat(&mut self, name: &str, parts: &[NodeId]) -> NodeId {
        if parts.len() == 1 {
            return parts[0];
        }
        self.g.add_node(name, Op::Concat, parts).expect("concat")
    }
}

/// Build the graph and the kernel list of `cfg` with weights from `seed`.
pub fn build(cfg: &NetConfig, seed: u64) -> Net {
    let mut b = Builder {
        g: Graph::new("net"),
        kernels: Vec::new(),
        rng: Rng::new(seed),
        next_offset: 0,
        n: cfg.batch,
    };
    let input_shape = vec![cfg.batch, cfg.in_channels, cfg.size, cfg.size];
    let x =
        b.g.add_input("x", TensorType::f32(input_shape.clone()))
            .expect("input");
    let input = b.alloc(cfg.size, cfg.size, cfg.in_channels);
    let total = |c0: usize, layers: usize| c0 + layers * cfg.growth;

    // Stem: writes channels [0, c0) of the first block buffer.
    let mut c = cfg.init_features;
    let (mut feat, mut block, mut hw);
    if cfg.imagenet_stem {
        let s = (cfg.size + 6 - 7) / 2 + 1;
        let stem = b.alloc(s, s, c);
        let y = b.conv("conv0", x, (input, stem), 7, 2, false, true);
        hw = (s + 2 - 3) / 2 + 1;
        block = b.alloc(hw, hw, total(c, cfg.blocks[0]));
        let pool = Op::MaxPool2d(Pool2d {
            kernel: [3, 3],
            stride: [2, 2],
            padding: [1, 1],
            prologue: None,
        });
        feat = b.node("pool0", pool, y, stem, block.slice(0, c));
    } else {
        hw = cfg.size;
        block = b.alloc(hw, hw, total(c, cfg.blocks[0]));
        feat = b.conv("conv0", x, (input, block.slice(0, c)), 3, 1, false, false);
    }

    let width = cfg.bn_size * cfg.growth;
    for (bi, &layers) in cfg.blocks.iter().enumerate() {
        let mut parts = vec![feat];
        // Stored with a zero border, as the memory plan does for a buffer
        // read only by padded convs without a prologue.
        let bottleneck = (width > 0).then(|| b.alloc_bordered(hw, hw, width, [1, 1]));
        for li in 0..layers {
            let name = format!("b{bi}l{li}");
            let xin = b.concat(&format!("{name}.cat"), &parts);
            let (prefix, slice) = (block.slice(0, c), block.slice(c, cfg.growth));
            let y = match bottleneck {
                Some(bn) => {
                    let t = b.conv(
                        &format!("{name}.conv1"),
                        xin,
                        (prefix, bn),
                        1,
                        1,
                        true,
                        true,
                    );
                    b.conv(&format!("{name}.conv2"), t, (bn, slice), 3, 1, false, false)
                }
                None => b.conv(
                    &format!("{name}.conv"),
                    xin,
                    (prefix, slice),
                    3,
                    1,
                    true,
                    false,
                ),
            };
            parts.push(y);
            c += cfg.growth;
        }
        let all = b.concat(&format!("b{bi}.cat"), &parts);
        if bi + 1 == cfg.blocks.len() {
            feat = all;
            break;
        }
        // Transition, pool first (the reorder pass's form).
        let half = hw / 2;
        let pooled = b.alloc(half, half, c);
        let pro = b.affine(&format!("t{bi}.pro"), c, true);
        let pool = Op::AvgPool2d(Pool2d {
            kernel: [2, 2],
            stride: [2, 2],
            padding: [0, 0],
            prologue: Some(pro),
        });
        let p = b.node(&format!("t{bi}.pool"), pool, all, block, pooled);
        hw = half;
        let out_c = c / 2;
        let next = b.alloc(hw, hw, total(out_c, cfg.blocks[bi + 1]));
        feat = b.conv(
            &format!("t{bi}.conv"),
            p,
            (pooled, next.slice(0, out_c)),
            1,
            1,
            false,
            false,
        );
        block = next;
        c = out_c;
    }

    let gap_out = b.alloc(1, 1, c);
    let pro = b.affine("norm5", c, true);
    let gap = b.node(
        "gap",
        Op::GlobalAvgPool {
            prologue: Some(pro),
        },
        feat,
        block,
        gap_out,
    );
    let flat =
        b.g.add_node("flatten", Op::Flatten, &[gap])
            .expect("flatten");
    let w = b.rng.vec(cfg.classes * c, -0.05, 0.05);
    constant(&mut b.g, "fc.w", vec![cfg.classes, c], w);
    let bias = b.rng.vec(cfg.classes, -0.1, 0.1);
    constant(&mut b.g, "fc.b", vec![cfg.classes], bias);
    let logits = b.alloc(1, 1, cfg.classes);
    let fc = Op::Linear(Linear {
        weight: "fc.w".into(),
        bias: Some("fc.b".into()),
        out_features: cfg.classes,
    });
    let y = b.node("fc", fc, flat, gap_out, logits);
    b.g.set_outputs(vec![y]);
    Net {
        graph: b.g,
        kernels: b.kernels,
        input,
        input_shape,
        output: logits,
    }
}
