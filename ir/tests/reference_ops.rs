//! The reference executor, op by op, against hand-computed tiny cases, and
//! its errors.

use ir::ops::{BatchNorm, ChannelAffine, Conv2d, Linear, Op, Pool2d};
use ir::reference::{self, npy, Options, Tensor};
use ir::{Constant, Graph, IrError, TensorType};

/// A graph `input -> op -> output` with the given bound constants.
fn single(op: Op, input_shape: &[usize], consts: &[(&str, &[usize], Vec<f32>)]) -> Graph {
    let mut g = Graph::new("t");
    for (name, shape, data) in consts {
        g.add_constant(*name, Constant::with_data(shape.to_vec(), data.clone()))
            .expect("constant");
    }
    let x = g
        .add_input("x", TensorType::f32(input_shape.to_vec()))
        .expect("input");
    let y = g.add_node("y", op, &[x]).expect("node");
    g.set_outputs(vec![y]);
    g
}

fn run1(g: &Graph, shape: &[usize], data: Vec<f32>) -> Tensor {
    let x = Tensor::from_vec(shape.to_vec(), data).expect("input tensor");
    let mut out = reference::run(g, &[x]).expect("run");
    assert_eq!(out.len(), 1);
    out.remove(0)
}

fn seq(n: usize) -> Vec<f32> {
    (1..=n).map(|i| i as f32).collect()
}

fn conv(o: usize, k: usize, s: usize, p: usize) -> Conv2d {
    Conv2d {
        weight: "w".into(),
        bias: None,
        out_channels: o,
        kernel: [k, k],
        stride: [s, s],
        padding: [p, p],
        prologue: None,
        relu: false,
    }
}

fn affine(relu: bool) -> ChannelAffine {
    ChannelAffine {
        scale: "s".into(),
        shift: "t".into(),
        relu,
    }
}

fn pool(k: usize, s: usize, p: usize) -> Pool2d {
    Pool2d {
        kernel: [k, k],
        stride: [s, s],
        padding: [p, p],
        prologue: None,
    }
}

/// x = 1..16 on a 4x4 grid.
const SUMS_3X3_PAD1: [f32; 16] = [
    14., 24., 30., 22., //
    33., 54., 63., 45., //
    57., 90., 99., 69., //
    46., 72., 78., 54.,
];

#[test]
fn conv3x3_pad1_all_ones_sums_real_neighbours() {
    let g = single(
        Op::Conv2d(conv(1, 3, 1, 1)),
        &[1, 1, 4, 4],
        &[("w", &[1, 1, 3, 3], vec![1.0; 9])],
    );
    let y = run1(&g, &[1, 1, 4, 4], seq(16));
    assert_eq!(y.shape, vec![1, 1, 4, 4]);
    assert_eq!(y.data, SUMS_3X3_PAD1);
}

#[test]
fn conv_is_cross_correlation() {
    // Only the top-left tap: y[i, j] = x[i-1, j-1], zero outside.
    let mut w = vec![0.0; 9];
    w[0] = 1.0;
    let g = single(
        Op::Conv2d(conv(1, 3, 1, 1)),
        &[1, 1, 4, 4],
        &[("w", &[1, 1, 3, 3], w)],
    );
    let y = run1(&g, &[1, 1, 4, 4], seq(16));
    #[rustfmt::skip]
    let want = [
        0., 0., 0., 0.,
        0., 1., 2., 3.,
        0., 5., 6., 7.,
        0., 9., 10., 11.,
    ];
    assert_eq!(y.data, want);
}

#[test]
fn conv_stride2_picks_every_other_window() {
    let g = single(
        Op::Conv2d(conv(1, 3, 2, 1)),
        &[1, 1, 4, 4],
        &[("w", &[1, 1, 3, 3], vec![1.0; 9])],
    );
    let y = run1(&g, &[1, 1, 4, 4], seq(16));
    assert_eq!(y.shape, vec![1, 1, 2, 2]);
    assert_eq!(y.data, [14., 30., 57., 99.]);
}

#[test]
fn conv_many_channels_bias_relu_and_batch() {
    // 5 output channels (a block of four and one more); channel j has all
    // weights j+1 - 3 (so some are negative), bias 10*j; ReLU epilogue.
    // Two images: the second is the first negated.
    let o = 5;
    let w: Vec<f32> = (0..o).flat_map(|j| vec![j as f32 - 2.0; 9]).collect();
    let b: Vec<f32> = (0..o).map(|j| 10.0 * j as f32).collect();
    let mut c = conv(o, 3, 1, 1);
    c.bias = Some("b".into());
    c.relu = true;
    let g = single(
        Op::Conv2d(c),
        &[2, 1, 4, 4],
        &[("w", &[o, 1, 3, 3], w), ("b", &[o], b)],
    );
    let mut x = seq(16);
    x.extend(seq(16).iter().map(|v| -v));
    let y = run1(&g, &[2, 1, 4, 4], x);
    assert_eq!(y.shape, vec![2, o, 4, 4]);
    for n in 0..2 {
        let sign = if n == 0 { 1.0 } else { -1.0 };
        for j in 0..o {
            let scale = j as f32 - 2.0;
            let want: Vec<f32> = SUMS_3X3_PAD1
                .iter()
                .map(|s| (sign * scale * s + 10.0 * j as f32).max(0.0))
                .collect();
            assert_eq!(
                &y.data[(n * o + j) * 16..][..16],
                want.as_slice(),
                "n={n} j={j}"
            );
        }
    }
}

#[test]
fn conv1x1_mixes_input_channels() {
    let g = single(
        Op::Conv2d(conv(1, 1, 1, 0)),
        &[1, 2, 1, 3],
        &[("w", &[1, 2, 1, 1], vec![2.0, -1.0])],
    );
    let y = run1(&g, &[1, 2, 1, 3], vec![1., 2., 3., 10., 20., 30.]);
    assert_eq!(y.data, [-8., -16., -24.]);
}

#[test]
fn conv_prologue_applies_to_real_pixels_only() {
    // x*1 + 10 then ReLU on [[1,2],[3,4]] gives [[11,12],[13,14]]; every 3x3
    // window (pad 1) covers all four real pixels: 50. Applying the prologue
    // to the five padded positions too would add 50.
    let mut c = conv(1, 3, 1, 1);
    c.prologue = Some(affine(true));
    let g = single(
        Op::Conv2d(c),
        &[1, 1, 2, 2],
        &[
            ("w", &[1, 1, 3, 3], vec![1.0; 9]),
            ("s", &[1], vec![1.0]),
            ("t", &[1], vec![10.0]),
        ],
    );
    let y = run1(&g, &[1, 1, 2, 2], vec![1., 2., 3., 4.]);
    assert_eq!(y.data, [50.0; 4]);
}

#[test]
fn conv_prologue_is_per_channel_with_relu() {
    // Channel 0: x*2 + 1; channel 1: x*(-1) + 0 then ReLU kills it.
    let mut c = conv(1, 1, 1, 0);
    c.prologue = Some(affine(true));
    let g = single(
        Op::Conv2d(c),
        &[1, 2, 1, 2],
        &[
            ("w", &[1, 2, 1, 1], vec![1.0, 100.0]),
            ("s", &[2], vec![2.0, -1.0]),
            ("t", &[2], vec![1.0, 0.0]),
        ],
    );
    let y = run1(&g, &[1, 2, 1, 2], vec![1., 2., 3., 4.]);
    assert_eq!(y.data, [3., 5.]);
}

#[test]
fn max_pool_pads_with_minus_infinity() {
    let g = single(Op::MaxPool2d(pool(3, 2, 1)), &[1, 1, 3, 3], &[]);
    #[rustfmt::skip]
    let x = vec![
        -5., -1., -7.,
        -2., -8., -3.,
        -9., -4., -6.,
    ];
    let y = run1(&g, &[1, 1, 3, 3], x);
    assert_eq!(y.shape, vec![1, 1, 2, 2]);
    assert_eq!(y.data, [-1., -1., -2., -3.]);
}

#[test]
fn max_pool_prologue_applies_to_real_pixels_only() {
    // x - 10 is negative everywhere; a zero in the padding would win.
    let mut p = pool(3, 1, 1);
    p.prologue = Some(affine(false));
    let g = single(
        Op::MaxPool2d(p),
        &[1, 1, 2, 2],
        &[("s", &[1], vec![1.0]), ("t", &[1], vec![-10.0])],
    );
    let y = run1(&g, &[1, 1, 2, 2], vec![1., 2., 3., 4.]);
    assert_eq!(y.data, [-6.0; 4]);
}

#[test]
fn avg_pool_counts_padding_in_the_divisor() {
    let g = single(Op::AvgPool2d(pool(3, 2, 1)), &[1, 1, 3, 3], &[]);
    let y = run1(&g, &[1, 1, 3, 3], seq(9));
    assert_eq!(y.data, [12. / 9., 16. / 9., 24. / 9., 28. / 9.]);
}

#[test]
fn avg_pool_2x2_stride2_floors_odd_sizes() {
    let g = single(Op::AvgPool2d(pool(2, 2, 0)), &[1, 1, 5, 5], &[]);
    let y = run1(&g, &[1, 1, 5, 5], seq(25));
    assert_eq!(y.shape, vec![1, 1, 2, 2]);
    // (1+2+6+7)/4, (3+4+8+9)/4, (11+12+16+17)/4, (13+14+18+19)/4
    assert_eq!(y.data, [4., 6., 14., 16.]);
}

#[test]
fn avg_pool_prologue_applies_to_real_pixels_only() {
    // Real pixels become 1; each 3x3 window sees four of them and five
    // zero pads: 4/9 (it would be 1 if the pads were shifted too).
    let mut p = pool(3, 1, 1);
    p.prologue = Some(affine(true));
    let g = single(
        Op::AvgPool2d(p),
        &[1, 1, 2, 2],
        &[("s", &[1], vec![1.0]), ("t", &[1], vec![1.0])],
    );
    let y = run1(&g, &[1, 1, 2, 2], vec![0.0; 4]);
    assert_eq!(y.data, [4. / 9.; 4]);
}

#[test]
fn global_avg_pool_with_and_without_prologue() {
    let g = single(Op::GlobalAvgPool { prologue: None }, &[1, 2, 2, 3], &[]);
    let y = run1(&g, &[1, 2, 2, 3], seq(12));
    assert_eq!(y.shape, vec![1, 2, 1, 1]);
    assert_eq!(y.data, [3.5, 9.5]);

    let g = single(
        Op::GlobalAvgPool {
            prologue: Some(affine(true)),
        },
        &[1, 2, 1, 2],
        &[("s", &[2], vec![2.0, 1.0]), ("t", &[2], vec![0.0, -3.5])],
    );
    // Channel 0: 2, 4 -> 3; channel 1: ReLU(-0.5, 0.5) = 0, 0.5 -> 0.25.
    let y = run1(&g, &[1, 2, 1, 2], vec![1., 2., 3., 4.]);
    assert_eq!(y.data, [3.0, 0.25]);
}

#[test]
fn batch_norm_uses_eps() {
    // (x - 3) / sqrt(3 + 1) * 2 + 1 = x - 2; ignoring eps would give
    // (x - 3) / sqrt(3) * 2 + 1.
    let bn = BatchNorm {
        weight: "w".into(),
        bias: "b".into(),
        running_mean: "m".into(),
        running_var: "v".into(),
        eps: 1.0,
    };
    let g = single(
        Op::BatchNorm(bn),
        &[1, 2, 1, 2],
        &[
            ("w", &[2], vec![2.0, -1.0]),
            ("b", &[2], vec![1.0, 0.5]),
            ("m", &[2], vec![3.0, 0.0]),
            ("v", &[2], vec![3.0, 0.0]),
        ],
    );
    let y = run1(&g, &[1, 2, 1, 2], vec![5., 7., 4., -6.]);
    // Channel 1: x / 1 * -1 + 0.5.
    assert_eq!(y.data, [3., 5., -3.5, 6.5]);
}

#[test]
fn channel_affine_and_relu() {
    let g = single(
        Op::ChannelAffine(affine(false)),
        &[1, 2, 1, 2],
        &[("s", &[2], vec![2.0, -1.0]), ("t", &[2], vec![1.0, 0.5])],
    );
    let y = run1(&g, &[1, 2, 1, 2], vec![1., -2., 3., 4.]);
    assert_eq!(y.data, [3., -3., -2.5, -3.5]);

    let g = single(Op::Relu, &[4], &[]);
    let y = run1(&g, &[4], vec![-1., 0., 2., -0.5]);
    assert_eq!(y.data, [0., 0., 2., 0.]);
}

#[test]
fn concat_keeps_operand_order_per_image() {
    let mut g = Graph::new("cat");
    let a = g.add_input("a", TensorType::f32([2, 1, 1, 2])).expect("a");
    let b = g.add_input("b", TensorType::f32([2, 2, 1, 2])).expect("b");
    let ab = g.add_node("ab", Op::Concat, &[a, b]).expect("ab");
    let ba = g.add_node("ba", Op::Concat, &[b, a]).expect("ba");
    let aa = g.add_node("aa", Op::Concat, &[a, a]).expect("aa");
    g.set_outputs(vec![ab, ba, aa]);
    let ta = Tensor::from_vec(vec![2, 1, 1, 2], vec![1., 2., 101., 102.]).expect("a");
    let tb = Tensor::from_vec(
        vec![2, 2, 1, 2],
        vec![3., 4., 5., 6., 103., 104., 105., 106.],
    )
    .expect("b");
    let out = reference::run(&g, &[ta, tb]).expect("run");
    assert_eq!(out[0].shape, vec![2, 3, 1, 2]);
    assert_eq!(
        out[0].data,
        [1., 2., 3., 4., 5., 6., 101., 102., 103., 104., 105., 106.]
    );
    assert_eq!(
        out[1].data,
        [3., 4., 5., 6., 1., 2., 103., 104., 105., 106., 101., 102.]
    );
    assert_eq!(out[2].data, [1., 2., 1., 2., 101., 102., 101., 102.]);
}

#[test]
fn flatten_then_linear() {
    let mut g = Graph::new("fc");
    g.add_constant(
        "w",
        Constant::with_data([2, 3], vec![1., 0., -1., 0.5, 0.5, 0.5]),
    )
    .expect("w");
    g.add_constant("b", Constant::with_data([2], vec![10., -10.]))
        .expect("b");
    let x = g.add_input("x", TensorType::f32([2, 3, 1, 1])).expect("x");
    let f = g.add_node("f", Op::Flatten, &[x]).expect("flatten");
    let lin = Linear {
        weight: "w".into(),
        bias: Some("b".into()),
        out_features: 2,
    };
    let y = g.add_node("y", Op::Linear(lin), &[f]).expect("linear");
    g.set_outputs(vec![f, y]);
    let x = Tensor::from_vec(vec![2, 3, 1, 1], vec![1., 2., 3., 4., 6., 8.]).expect("x");
    let out = reference::run(&g, &[x]).expect("run");
    assert_eq!(out[0].shape, vec![2, 3]);
    assert_eq!(out[0].data, [1., 2., 3., 4., 6., 8.]);
    // [1-3+10, 3-10], [4-8+10, 9-10]
    assert_eq!(out[1].data, [8., -7., 6., -1.]);
}

#[test]
fn every_node_is_observed_once_and_threads_do_not_matter() {
    let g = single(
        Op::Conv2d(conv(7, 3, 1, 1)),
        &[2, 3, 5, 6],
        &[(
            "w",
            &[7, 3, 3, 3],
            Tensor::random_uniform(vec![7, 3, 3, 3], 1, -1.0, 1.0).data,
        )],
    );
    let x = Tensor::random_uniform(vec![2, 3, 5, 6], 2, -1.0, 1.0);
    let mut seen = Vec::new();
    let one = reference::run_with(
        &g,
        std::slice::from_ref(&x),
        &Options { threads: 1 },
        &mut |n, _| seen.push(n.name.clone()),
    )
    .expect("run");
    assert_eq!(seen, ["x", "y"]);
    let four = reference::run_with(&g, &[x], &Options { threads: 4 }, &mut |_, _| {}).expect("run");
    assert_eq!(one, four);
}

fn conv_graph_unbound() -> Graph {
    let mut g = Graph::new("t");
    g.add_constant("w", Constant::unbound([1, 1, 3, 3]))
        .expect("w");
    let x = g.add_input("x", TensorType::f32([1, 1, 4, 4])).expect("x");
    let y = g
        .add_node("y", Op::Conv2d(conv(1, 3, 1, 1)), &[x])
        .expect("y");
    g.set_outputs(vec![y]);
    g
}

#[test]
fn unbound_constant_is_an_error_naming_it() {
    let g = conv_graph_unbound();
    let err = reference::run(&g, &[Tensor::zeros([1, 1, 4, 4])]).expect_err("unbound");
    assert!(
        matches!(&err, IrError::Constant { name, .. } if name == "w"),
        "{err}"
    );
    assert!(err.to_string().contains("`y`"), "{err}");
}

#[test]
fn wrong_number_of_inputs_is_an_error() {
    let g = single(Op::Relu, &[2], &[]);
    let err = reference::run(&g, &[]).expect_err("no inputs");
    assert!(err.to_string().contains("1 input"), "{err}");
    let two = [Tensor::zeros([2]), Tensor::zeros([2])];
    assert!(reference::run(&g, &two).is_err());
}

#[test]
fn input_shape_mismatch_names_the_input_and_both_shapes() {
    let g = single(Op::Relu, &[1, 3, 4, 4], &[]);
    let err = reference::run(&g, &[Tensor::zeros([1, 3, 4, 5])]).expect_err("shape");
    let msg = err.to_string();
    assert!(
        matches!(&err, IrError::Node { node, .. } if node == "x"),
        "{msg}"
    );
    assert!(
        msg.contains("[1, 3, 4, 5]") && msg.contains("[1, 3, 4, 4]"),
        "{msg}"
    );
}

#[test]
fn inconsistent_tensor_is_an_error_not_a_panic() {
    let g = single(Op::Relu, &[2, 2], &[]);
    let bad = Tensor {
        shape: vec![2, 2],
        data: vec![1.0; 3],
    };
    assert!(reference::run(&g, &[bad]).is_err());
    assert!(Tensor::from_vec(vec![2, 2], vec![0.0; 3]).is_err());
}

#[test]
fn graph_without_outputs_is_rejected() {
    let mut g = single(Op::Relu, &[2], &[]);
    g.set_outputs(vec![]);
    assert!(reference::run(&g, &[Tensor::zeros([2])]).is_err());
}

#[test]
fn error_measures() {
    let b = Tensor::from_vec(vec![4], vec![1., -10., 0., 5.]).expect("b");
    let a = Tensor::from_vec(vec![4], vec![1.5, -10., 0.01, 5.]).expect("a");
    assert_eq!(a.max_abs_diff(&b).expect("diff"), 0.5);
    assert_eq!(a.rel_error(&b).expect("rel"), 0.05);
    // Elementwise: the near-zero reference element dominates.
    let e = a.max_elementwise_rel_error(&b, 1e-3).expect("elem");
    assert!((e - 10.0).abs() < 1e-6, "{e}");
    assert_eq!(b.rel_error(&b).expect("self"), 0.0);

    let nan = Tensor::from_vec(vec![4], vec![f32::NAN, -10., 0., 5.]).expect("nan");
    assert_eq!(nan.rel_error(&b).expect("nan"), f64::INFINITY);
    assert_eq!(b.rel_error(&nan).expect("nan ref"), f64::INFINITY);
    assert!(a.rel_error(&Tensor::zeros([2, 2])).is_err());
}

#[test]
fn npy_round_trip_and_errors() {
    for shape in [vec![], vec![3], vec![2, 3, 4, 5]] {
        let t = Tensor::random_uniform(shape, 3, -1.0, 1.0);
        let bytes = npy::to_bytes(&t);
        assert_eq!((bytes.len() - 4 * t.data.len()) % 64, 0);
        assert_eq!(npy::from_bytes(&bytes).expect("parse"), t);
    }
    let t = Tensor::zeros([2, 2]);
    let bytes = npy::to_bytes(&t);
    assert!(npy::from_bytes(&bytes[..bytes.len() - 1]).is_err());
    assert!(npy::from_bytes(b"not an npy file at all").is_err());
    let replace = |from: &[u8], to: &[u8]| {
        let mut b = bytes.clone();
        let i = b
            .windows(from.len())
            .position(|w| w == from)
            .expect("found");
        b[i..i + to.len()].copy_from_slice(to);
        b
    };
    assert!(npy::from_bytes(&replace(b"<f4", b"<f8")).is_err());
    let fortran = replace(b"False", b"True ");
    assert!(npy::from_bytes(&fortran).is_err());
}
