//! Test support for the CUDA backend: one-op cases with their reference
//! output, NCHW tensors in and out of NHWC views of a host arena, and the
//! `ptxas` lookup that skips (with a printed reason) when it is absent.

use crate::cpu_support::{constant, Rng};
use compiler::backend::cuda::ptxas;
use compiler::backend::kernel::{KernelDesc, View};
use ir::graph::Graph;
use ir::ops::{ChannelAffine, Conv2d, Head, Linear, Op, Pool2d};
use ir::reference::Tensor;
use ir::types::TensorType;
use std::path::PathBuf;

/// One case per kernel kind and edge the CUDA lowering handles (see [`case`] for the
/// spec syntax): GEMM convs (1x1, 3x3, 7x7/2, strided, remainders, slices, borders), pools,
/// global pools, linear layers, affines, output heads (rows shorter and longer than a block,
/// strided, in place).
pub const KERNEL_CASES: &[&str] = &[
    "conv n2 c20 5x7 oc12 pro relu block",
    "conv c37 6x6 oc40 bias relu strided",
    "conv c300 3x5 oc24 pro bias relu",
    "conv n3 c13 11x9 oc33 pro bias",
    "conv c1 4x4 oc1 pro strided",
    "conv n2 c16 9x11 oc12 k3 p1 pro block",
    "conv c48 7x7 oc32 k3 p1 bias relu strided",
    "conv n2 c5 10x9 oc9 k3 s2 p1 pro bias relu",
    "conv c3 23x20 oc16 k7 s2 p3 bias relu strided",
    "conv c10 7x7 oc8 s2 pro",
    "conv c8 6x5 oc70 k3 bias strided",
    "conv c6 9x8 oc5 k5x3 s2x1 p2x1 pro bias strided",
    "conv c4 3x3 oc4 k3 p2 pro bias strided",
    "conv n2 c7 6x5 oc10 k3 p1 pro bias bordered",
    "conv c9 5x5 oc6 bias relu bordered",
    "conv n2 c24 12x12 oc96 pro relu",
    "max n2 c13 11x10 k3 s2 p1 neg strided",
    "max c9 7x9 k2 s2",
    "max c16 12x12 k3 s2 p1 pro",
    "max n2 c3 9x7 k3 s2 p1 neg bordered",
    "avg n2 c20 8x8 k2 s2 pro strided",
    "avg c17 5x6 k3 p1 pro",
    "gap n2 c19 5x3 pro strided",
    "gap c7 4x4",
    "gap n2 c5 3x4 pro bordered",
    "linear n3 c37 oc11 bias strided",
    "linear c64 oc1000 bias",
    "affine n2 c13 3x5 pro inplace",
    "affine c6 4x3 neg strided",
    "affine n2 c4 3x3 pro bordered",
    "softmax n3 c10",
    "softmax n2 c1000 strided",
    "softmax c300 inplace",
    "sigmoid n2 c37 strided",
    "sigmoid c600 inplace",
    "opnorm n3 c18",
    "opnorm n2 c300 strided",
    "opnorm c14 inplace",
];

/// Operating-point thresholds for `classes` classes: in `[0.05, 0.95]`, every seventh NaN
/// (outputs 0.5).
pub fn thresholds(rng: &mut Rng, classes: usize) -> Vec<f32> {
    (0..classes)
        .map(|c| {
            let t = rng.f32(0.05, 0.95);
            if c % 7 == 3 {
                f32::NAN
            } else {
                t
            }
        })
        .collect()
}

/// `ptxas`, or `None` after printing why the caller skips.
pub fn ptxas_or_skip(test: &str) -> Option<PathBuf> {
    match ptxas::find() {
        Ok(p) => Some(p),
        Err(e) => {
            eprintln!("{test}: skipped: ptxas not found (run scripts/install-ptxas.sh) [{e}]");
            None
        }
    }
}

/// A one-op case: the kernel description and the reference output.
pub struct Case {
    pub desc: KernelDesc,
    pub input: Tensor,
    pub reference: Tensor,
}

/// A host arena filled with recognisable garbage.
pub fn arena(bytes: usize) -> Vec<f32> {
    (0..bytes.div_ceil(4) + 16)
        .map(|i| -777.0 - (i % 251) as f32)
        .collect()
}

fn index(v: &View, n: usize, c: usize, h: usize, w: usize) -> usize {
    v.element(n, h, w, c)
}

/// Store an NCHW (or `[N, C]`) tensor into the view.
pub fn write(arena: &mut [f32], v: &View, t: &Tensor) {
    assert_eq!(t.num_elements(), v.pixels() * v.channels);
    let mut k = 0;
    for n in 0..v.n {
        for c in 0..v.channels {
            for h in 0..v.h {
                for w in 0..v.w {
                    arena[index(v, n, c, h, w)] = t.data[k];
                    k += 1;
                }
            }
        }
    }
}

/// Read the view as an NCHW tensor of `shape`.
pub fn read(arena: &[f32], v: &View, shape: &[usize]) -> Tensor {
    let mut data = Vec::with_capacity(v.pixels() * v.channels);
    for n in 0..v.n {
        for c in 0..v.channels {
            for h in 0..v.h {
                for w in 0..v.w {
                    data.push(arena[index(v, n, c, h, w)]);
                }
            }
        }
    }
    Tensor::from_vec(shape.to_vec(), data).expect("view matches shape")
}

/// Where a case's views live.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Layout {
    /// Two dense buffers.
    Dense,
    /// Buffers with extra channels per pixel and odd channel offsets.
    Strided,
    /// One block buffer: the input is its channel prefix, the output the
    /// slice after it (equal spatial extents).
    Block,
    /// The same view in and out (in-place affine).
    InPlace,
    /// Strided buffers stored with zero borders (`[1, 1]` in, `[2, 1]` out).
    Bordered,
}

fn views(layout: Layout, i: [usize; 4], o: [usize; 4]) -> (View, View) {
    let [n, c, h, w] = i;
    let [_, oc, oh, ow] = o;
    match layout {
        Layout::Dense => {
            let iv = View::dense(64, n, h, w, c);
            (iv, View::dense(iv.end_bytes() + 36, n, oh, ow, oc))
        }
        Layout::Strided => {
            let iv = View {
                offset: 12,
                n,
                h,
                w,
                channels: c,
                pixel_stride: c + 5,
                channel_offset: 3,
                border: [0, 0],
                bf16: false,
            };
            let ov = View {
                offset: iv.end_bytes() + 8,
                n,
                h: oh,
                w: ow,
                channels: oc,
                pixel_stride: oc + 7,
                channel_offset: 1,
                border: [0, 0],
                bf16: false,
            };
            (iv, ov)
        }
        Layout::Bordered => {
            let (iv, ov) = views(Layout::Strided, i, o);
            let iv = iv.with_border([1, 1]);
            let ov = View {
                offset: iv.end_bytes() + 8,
                ..ov
            };
            (iv, ov.with_border([2, 1]))
        }
        Layout::Block => {
            assert_eq!((h, w), (oh, ow), "a block buffer needs equal extents");
            let buf = View {
                offset: 20,
                n,
                h,
                w,
                channels: c,
                pixel_stride: c + oc + 3,
                channel_offset: 0,
                border: [1, 1],
                bf16: false,
            };
            (buf, buf.slice(c, oc))
        }
        Layout::InPlace => {
            let v = View {
                offset: 8,
                n,
                h,
                w,
                channels: c,
                pixel_stride: c + 2,
                channel_offset: 1,
                border: [0, 0],
                bf16: false,
            };
            (v, v)
        }
    }
}

/// A case in one line, e.g. `conv n2 c20 5x7 oc12 k3 s2 p1 pro bias relu block`
/// (layouts: dense by default, `strided`, `block` (bordered), `bordered`,
/// `inplace`).
/// Op: `conv`, `max`, `avg`, `gap`, `linear` (input `cI`, `ocO`), `affine`, and the heads
/// `softmax`, `sigmoid`, `opnorm` (input `[N, C]`, thresholds from [`thresholds`]).
/// Prologue: `pro` (positive shifts, ReLU: wrongly affine padding shows),
/// `neg` (all negative, no ReLU: zero instead of -inf padding shows).
pub fn case(seed: u64, spec: &str) -> Case {
    let mut rng = Rng::new(seed);
    let (mut shape, mut oc) = ([1usize, 1, 1, 1], 0usize);
    let (mut k, mut s, mut p) = ([1usize, 1], [1usize, 1], [0usize, 0]);
    let (mut pro, mut bias, mut relu, mut layout) = (None, false, false, Layout::Dense);
    let mut words = spec.split_whitespace();
    let op = words.next().expect("op");
    let pair = |v: &str| -> [usize; 2] {
        let num = |x: &str| x.parse::<usize>().expect("number");
        match v.split_once('x') {
            Some((a, b)) => [num(a), num(b)],
            None => [num(v), num(v)],
        }
    };
    for tok in words {
        match tok {
            "pro" => pro = Some(((0.2f32, 1.0f32), true)),
            "neg" => pro = Some(((-3.0, -2.0), false)),
            "bias" => bias = true,
            "relu" => relu = true,
            "strided" => layout = Layout::Strided,
            "block" => layout = Layout::Block,
            "inplace" => layout = Layout::InPlace,
            "bordered" => layout = Layout::Bordered,
            t if t.starts_with("oc") => oc = pair(&t[2..])[0],
            t if t.starts_with('n') => shape[0] = pair(&t[1..])[0],
            t if t.starts_with('c') => shape[1] = pair(&t[1..])[0],
            t if t.starts_with('k') => k = pair(&t[1..]),
            t if t.starts_with('s') => s = pair(&t[1..]),
            t if t.starts_with('p') => p = pair(&t[1..]),
            t => [shape[2], shape[3]] = pair(t),
        }
    }
    let c = shape[1];
    let mut g = Graph::new("case");
    let affine = |g: &mut Graph, rng: &mut Rng, (shift, relu): ((f32, f32), bool)| {
        constant(g, "pro.s", vec![c], rng.vec(c, 0.5, 1.5));
        constant(g, "pro.t", vec![c], rng.vec(c, shift.0, shift.1));
        ChannelAffine {
            scale: "pro.s".into(),
            shift: "pro.t".into(),
            relu,
        }
    };
    let pool = Pool2d {
        kernel: k,
        stride: s,
        padding: p,
        prologue: pro.map(|a| affine(&mut g, &mut rng, a)),
    };
    let ir_op = match op {
        "conv" | "linear" => {
            let (kh, kw) = if op == "conv" { (k[0], k[1]) } else { (1, 1) };
            let bound = 1.0 / ((c * kh * kw) as f32).sqrt();
            let wshape = if op == "conv" {
                vec![oc, c, kh, kw]
            } else {
                vec![oc, c]
            };
            constant(
                &mut g,
                "w",
                wshape,
                rng.vec(oc * c * kh * kw, -bound, bound),
            );
            let b = bias.then(|| {
                constant(&mut g, "b", vec![oc], rng.vec(oc, -0.5, 0.5));
                "b".to_string()
            });
            if op == "linear" {
                Op::Linear(Linear {
                    weight: "w".into(),
                    bias: b,
                    out_features: oc,
                })
            } else {
                Op::Conv2d(Conv2d {
                    weight: "w".into(),
                    bias: b,
                    out_channels: oc,
                    kernel: k,
                    stride: s,
                    padding: p,
                    prologue: pool.prologue,
                    relu,
                })
            }
        }
        "max" => Op::MaxPool2d(pool),
        "avg" => Op::AvgPool2d(pool),
        "gap" => Op::GlobalAvgPool {
            prologue: pool.prologue,
        },
        "affine" => Op::ChannelAffine(pool.prologue.expect("affine needs pro or neg")),
        "softmax" => Op::Head(Head::Softmax),
        "sigmoid" => Op::Head(Head::Sigmoid),
        "opnorm" => {
            let t = thresholds(&mut rng, c);
            constant(&mut g, "t", vec![c], t);
            Op::Head(Head::SigmoidOpNorm {
                thresholds: "t".into(),
            })
        }
        other => panic!("unknown op `{other}`"),
    };
    let row = matches!(op, "linear" | "softmax" | "sigmoid" | "opnorm");
    let in_shape = if row {
        vec![shape[0], c]
    } else {
        shape.to_vec()
    };
    let x = g
        .add_input("x", TensorType::f32(in_shape.clone()))
        .expect("input");
    let y = g.add_node("y", ir_op.clone(), &[x]).expect("op");
    g.set_outputs(vec![y]);
    let out_shape = g.node(y).ty.shape.clone();
    let as4 = |s: &[usize]| match *s {
        [n, c, h, w] => [n, c, h, w],
        [n, c] => [n, c, 1, 1],
        _ => panic!("unexpected rank {s:?}"),
    };
    let (iv, ov) = views(layout, as4(&in_shape), as4(&out_shape));
    // Heads see logits of a few units, enough for softmax to be far from uniform.
    let spread = if row && op != "linear" { 6.0 } else { 1.0 };
    let input = Tensor::random_uniform(in_shape, seed ^ 0x5eed, -spread, spread);
    let reference = ir::reference::run(&g, std::slice::from_ref(&input))
        .expect("reference")
        .remove(0);
    let desc = KernelDesc::from_ir(spec, &ir_op, &g.constants, iv, ov)
        .unwrap_or_else(|e| panic!("{spec}: kernel description: {e}"));
    Case {
        desc,
        input,
        reference,
    }
}
