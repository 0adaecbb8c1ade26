//! The CPU backend, kernel by kernel, against the reference executor.
//!
//! Each case builds a one-op IR graph, runs it through `ir::reference`,
//! maps the op to a `KernelDesc` with NHWC views into an arena (dense,
//! strided with channel offsets, or a channel slice of a shared block
//! buffer), compiles it to a shared object, loads it and runs it with three
//! parallel-fors (sequential, two threads, single tasks in reverse order).
//! The output must be within 1e-4 relative error of the reference, and every
//! arena element outside the output view must be left untouched.

use crate::support;

use compiler::backend::cpu::{self, CpuOptions};
use compiler::backend::kernel::{KernelDesc, View};
use compiler::backend::BackendError;
use ir::graph::Graph;
use ir::ops::{ChannelAffine, Conv2d, Linear, Op, Pool2d};
use ir::reference::Tensor;
use ir::types::TensorType;
use support::{test_isas, Arena, Loaded, Pfor, Rng, TestIsa};

/// A one-op test case.
pub(crate) struct Case {
    pub name: String,
    pub graph: Graph,
    pub op: Op,
    pub input: Tensor,
    pub in_view: View,
    pub out_view: View,
}

/// Where the views live in the arena.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Layout {
    /// Two dense buffers.
    Dense,
    /// Two buffers with extra channels per pixel and non-zero channel offsets.
    Strided,
    /// One block buffer: input is its channel prefix, output the slice after.
    Block,
    /// Strided buffers stored with zero borders (the output's writer zeroes
    /// its slice of the border; the input's border holds garbage).
    Bordered,
}

fn views(rng: &mut Rng, layout: Layout, i: [usize; 4], o: [usize; 4]) -> (View, View) {
    let [n, c, h, w] = i;
    let [_, oc, oh, ow] = o;
    match layout {
        Layout::Dense => {
            let iv = View::dense(64, n, h, w, c);
            let ov = View::dense(support::round_up(iv.end_bytes(), 64) + 4, n, oh, ow, oc);
            (iv, ov)
        }
        Layout::Strided | Layout::Bordered => {
            let border = |rng: &mut Rng, lo| match layout {
                Layout::Bordered => [rng.range(lo, 3), rng.range(lo, 3)],
                _ => [0, 0],
            };
            let (co, extra) = (rng.range(1, 6), rng.range(0, 7));
            let iv = View {
                offset: 4 * rng.range(0, 9),
                n,
                h,
                w,
                channels: c,
                pixel_stride: c + co + extra,
                channel_offset: co,
                border: border(rng, 0),
                bf16: false,
            };
            let (co, extra) = (rng.range(1, 10), rng.range(1, 5));
            let ov = View {
                offset: iv.end_bytes() + 4 * rng.range(0, 5),
                n,
                h: oh,
                w: ow,
                channels: oc,
                pixel_stride: oc + co + extra,
                channel_offset: co,
                border: border(rng, 1),
                bf16: false,
            };
            (iv, ov)
        }
        Layout::Block => {
            assert_eq!(
                (h, w),
                (oh, ow),
                "a block buffer needs equal spatial extents"
            );
            let stride = c + oc + rng.range(0, 9);
            let buf = View {
                offset: 4 * rng.range(0, 9),
                n,
                h,
                w,
                channels: c,
                pixel_stride: stride,
                channel_offset: 0,
                border: [0, 0],
                bf16: false,
            };
            (buf, buf.slice(c, oc))
        }
    }
}

fn affine(
    rng: &mut Rng,
    g: &mut Graph,
    name: &str,
    c: usize,
    shift: (f32, f32),
    relu: bool,
) -> ChannelAffine {
    let scale = format!("{name}.scale");
    let shift_name = format!("{name}.shift");
    support::constant(g, &scale, vec![c], rng.vec(c, 0.5, 1.5));
    support::constant(g, &shift_name, vec![c], rng.vec(c, shift.0, shift.1));
    ChannelAffine {
        scale,
        shift: shift_name,
        relu,
    }
}

/// Build a case: `make(graph, rng)` declares constants and returns the op.
fn case(
    name: &str,
    seed: u64,
    in_shape: Vec<usize>,
    layout: Layout,
    make: impl FnOnce(&mut Graph, &mut Rng) -> Op,
) -> Case {
    let mut rng = Rng::new(seed);
    let mut graph = Graph::new(name);
    let op = make(&mut graph, &mut rng);
    let x = graph
        .add_input("x", TensorType::f32(in_shape.clone()))
        .expect("input");
    let y = graph.add_node("y", op.clone(), &[x]).expect("op");
    graph.set_outputs(vec![y]);
    let out_shape = graph.node(y).ty.shape.clone();
    let as4 = |s: &[usize]| match *s {
        [n, c, h, w] => [n, c, h, w],
        [n, c] => [n, c, 1, 1],
        _ => panic!("unexpected rank {s:?}"),
    };
    let (in_view, out_view) = views(&mut rng, layout, as4(&in_shape), as4(&out_shape));
    let input = Tensor::random_uniform(in_shape, seed ^ 0x5eed, -1.0, 1.0);
    Case {
        name: name.into(),
        graph,
        op,
        input,
        in_view,
        out_view,
    }
}

/// A case in one line: `n2 c20 5x7 oc12 k3 s2x1 p1 pro bias relu block`.
/// Unset: batch 1, kernel 1, stride 1, padding 0, dense layout. For pools,
/// `max`/`avg` and the prologue `pro` (positive shifts, ReLU), `neg` (all
/// outputs negative, no ReLU) or `bn` (mixed shifts, ReLU).
#[derive(Debug, Clone)]
struct Spec {
    shape: [usize; 4],
    oc: usize,
    k: [usize; 2],
    s: [usize; 2],
    p: [usize; 2],
    prologue: Option<((f32, f32), bool)>,
    bias: bool,
    relu: bool,
    max: bool,
    layout: Layout,
}

fn pair(v: &str) -> [usize; 2] {
    let num = |x: &str| {
        x.parse::<usize>()
            .unwrap_or_else(|_| panic!("bad number in `{v}`"))
    };
    match v.split_once('x') {
        Some((a, b)) => [num(a), num(b)],
        None => [num(v), num(v)],
    }
}

impl Spec {
    fn parse(text: &str) -> Spec {
        let mut s = Spec {
            shape: [1, 0, 0, 0],
            oc: 0,
            k: [1, 1],
            s: [1, 1],
            p: [0, 0],
            prologue: None,
            bias: false,
            relu: false,
            max: false,
            layout: Layout::Dense,
        };
        for tok in text.split_whitespace() {
            match tok {
                "pro" => s.prologue = Some(((0.2, 1.0), true)),
                "neg" => s.prologue = Some(((-3.0, -2.0), false)),
                "bn" => s.prologue = Some(((-0.5, 0.5), true)),
                "bias" => s.bias = true,
                "relu" => s.relu = true,
                "max" => s.max = true,
                "avg" => s.max = false,
                "dense" => s.layout = Layout::Dense,
                "strided" => s.layout = Layout::Strided,
                "block" => s.layout = Layout::Block,
                "bordered" => s.layout = Layout::Bordered,
                t if t.starts_with("oc") => s.oc = pair(&t[2..])[0],
                t if t.starts_with('n') => s.shape[0] = pair(&t[1..])[0],
                t if t.starts_with('c') => s.shape[1] = pair(&t[1..])[0],
                t if t.starts_with('k') => s.k = pair(&t[1..]),
                t if t.starts_with('s') => s.s = pair(&t[1..]),
                t if t.starts_with('p') => s.p = pair(&t[1..]),
                t => [s.shape[2], s.shape[3]] = pair(t),
            }
        }
        s
    }
}

pub(crate) fn conv_case(name: &str, seed: u64, spec: &str) -> Case {
    let sp = Spec::parse(spec);
    let [_, c, ..] = sp.shape;
    let [kh, kw] = sp.k;
    case(name, seed, sp.shape.to_vec(), sp.layout, |g, rng| {
        let bound = 1.0 / ((c * kh * kw) as f32).sqrt();
        let w = rng.vec(sp.oc * c * kh * kw, -bound, bound);
        support::constant(g, "w", vec![sp.oc, c, kh, kw], w);
        let bias = sp.bias.then(|| {
            support::constant(g, "b", vec![sp.oc], rng.vec(sp.oc, -0.5, 0.5));
            "b".to_string()
        });
        // Positive shifts: a prologue wrongly applied to the zero padding
        // turns it into a visible non-zero.
        let prologue = sp
            .prologue
            .map(|(shift, relu)| affine(rng, g, "pro", c, shift, relu));
        Op::Conv2d(Conv2d {
            weight: "w".into(),
            bias,
            out_channels: sp.oc,
            kernel: sp.k,
            stride: sp.s,
            padding: sp.p,
            prologue,
            relu: sp.relu,
        })
    })
}

fn pool_case(name: &str, seed: u64, spec: &str) -> Case {
    let sp = Spec::parse(spec);
    case(name, seed, sp.shape.to_vec(), sp.layout, |g, rng| {
        let prologue = sp
            .prologue
            .map(|(shift, relu)| affine(rng, g, "pro", sp.shape[1], shift, relu));
        let p = Pool2d {
            kernel: sp.k,
            stride: sp.s,
            padding: sp.p,
            prologue,
        };
        if sp.max {
            Op::MaxPool2d(p)
        } else {
            Op::AvgPool2d(p)
        }
    })
}

/// Compile one case, run it under every parallel-for and check it; returns
/// the kernel's plan for each vector ISA of [`test_isas`] that ran.
fn check(case: &Case) -> Vec<(String, String)> {
    test_isas()
        .into_iter()
        .filter_map(|isa| check_on(case, &isa).map(|plan| (isa.name.to_owned(), plan)))
        .collect()
}

/// [`check`] for one ISA: its plan, or `None` when the host cannot run it (the kernel is
/// still compiled).
fn check_on(case: &Case, isa: &TestIsa) -> Option<String> {
    let reference = ir::reference::run(&case.graph, std::slice::from_ref(&case.input))
        .unwrap_or_else(|e| panic!("{}: reference failed: {e}", case.name))
        .remove(0);
    check_against(case, isa, &reference, 1e-4).map(|(plan, _)| plan)
}

/// Compile `case` for `isa`, run it under every parallel-for and check it against `reference`
/// within `bound` (relative error), and that nothing outside the output view was written:
/// the kernel's plan and the worst error, or `None` when the host cannot run it (the kernel
/// is still compiled).
pub(crate) fn check_against(
    case: &Case,
    isa: &TestIsa,
    reference: &Tensor,
    bound: f64,
) -> Option<(String, f64)> {
    let desc = KernelDesc::from_ir(
        &case.name,
        &case.op,
        &case.graph.constants,
        case.in_view,
        case.out_view,
    )
    .unwrap_or_else(|e| panic!("{}: kernel description: {e}", case.name));
    let compiled = cpu::compile(std::slice::from_ref(&desc), &isa.opts)
        .unwrap_or_else(|e| panic!("{} ({}): compile failed: {e}", case.name, isa.name));
    if !isa.runs {
        return None;
    }
    let lib = Loaded::new(&compiled);
    let mut worst: f64 = 0.0;
    for pfor in [Pfor::Sequential, Pfor::TwoThreads, Pfor::ReverseSingles] {
        let mut arena = Arena::new(compiled.arena_bytes);
        arena.write(&case.in_view, &case.input);
        let before = arena.clone();
        lib.run(&mut arena, pfor);
        let got = arena.read(&case.out_view, &reference.shape);
        let err = got.rel_error(reference).expect("same shape");
        worst = worst.max(err);
        let what = format!("{} ({}, {pfor:?})", case.name, isa.name);
        assert!(
            err <= bound,
            "{what}: relative error {err:e} (plan {})",
            compiled.kernels[0].plan
        );
        if let Some(i) = arena.first_nonzero_border(&case.out_view) {
            panic!("{what}: border element {i} of the output slice is not zero");
        }
        if let Some(i) = arena.first_change_outside(&before, &case.out_view) {
            panic!("{what}: arena element {i} outside the output view was written");
        }
        if pfor == Pfor::Sequential {
            println!("{} ({}): relative error {err:.2e}", case.name, isa.name);
        }
    }
    Some((compiled.kernels[0].plan.clone(), worst))
}

#[test]
fn conv_1x1_gemm() {
    let cases = [
        ("bottleneck", "n2 c20 5x7 oc12 pro relu block"),
        ("plain_bias_relu", "c37 6x6 oc40 bias relu strided"),
        ("chunked_rem", "c300 3x5 oc24 pro bias relu"),
        ("two_full_chunks", "c512 2x3 oc16 relu strided"),
        ("three_chunks_block", "c600 2x2 oc8 pro relu block"),
        ("many_pixels", "n3 c13 11x9 oc33 pro bias"),
        ("one_channel", "c1 4x4 oc1 pro strided"),
        ("bordered_in_out", "n2 c19 5x7 oc20 bias relu bordered"),
        ("bordered_pro_chunks", "c270 3x4 oc12 pro bordered"),
        // Weights past 1 MiB, over twice the input: output-channel groups outermost (f32 and
        // bf16; `conv::weights_stay_per_group`), a tail block in the last group.
        ("weights_outer_tail", "c1100 3x3 oc520 pro bias relu"),
        // The same in f32 only, with several pixel blocks per group and two images.
        ("weights_outer_blocks", "n2 c1040 5x6 oc264 bn relu strided"),
    ];
    for (seed, (name, spec)) in cases.iter().enumerate() {
        check(&conv_case(name, seed as u64, spec));
    }
}

#[test]
fn conv_direct() {
    let cases = [
        ("dense_3x3_k12", "n2 c16 9x11 oc12 k3 p1 pro block"),
        ("3x3_k32", "c48 7x7 oc32 k3 p1 bias relu strided"),
        ("3x3_s2", "n2 c5 10x9 oc9 k3 s2 p1 pro bias relu"),
        ("stem_7x7", "c3 23x20 oc16 k7 s2 p3 bias relu strided"),
        ("1x1_s2", "c10 7x7 oc8 s2 pro"),
        ("3x3_nopad_oc70", "c8 6x5 oc70 k3 bias strided"),
        ("3x3_chunked", "c260 4x4 oc12 k3 p1 pro relu block"),
        ("5x3_mixed", "c6 9x8 oc5 k5x3 s2x1 p2x1 pro bias strided"),
        ("wide_row_split", "c8 2x40 oc8 k3 p1 pro relu block"),
        ("big_panel", "c256 3x120 oc8 k3 p1 pro"),
        ("pad_gt_half", "c4 3x3 oc4 k3 p2 pro bias strided"),
        ("bordered_3x3", "n2 c16 6x9 oc12 k3 p1 relu bordered"),
        ("bordered_s2", "c7 9x8 oc10 k3 s2 p1 pro bordered"),
        // 23 = 2 vectors + 7 lanes: a partial store of 4 + 2 + 1 lanes.
        ("3x3_oc23", "n2 c12 6x7 oc23 k3 p1 pro bias relu strided"),
        ("8x8_rows_of_4", "c48 8x8 oc12 k3 p1 bordered"),
    ];
    for (seed, (name, spec)) in cases.iter().enumerate() {
        check(&conv_case(name, 100 + seed as u64, spec));
    }
}

#[test]
fn conv_winograd() {
    // Stride-1 pad-1 3x3 convs with at least 16 input channels and 24 2x2
    // tiles take the Winograd F(2x2, 3x3) plan: odd sizes (partial edge
    // tiles), 1x1 images, batches, k = 5/12/24/32/40, prologue/bias/ReLU,
    // strided slices, borders, chunked input channels and more than one
    // task per image row.
    let cases = [
        ("k12_7x7_block", "n2 c16 7x7 oc12 k3 p1 pro block"),
        (
            "k12_9x13_bias_relu",
            "c48 9x13 oc12 k3 p1 bias relu strided",
        ),
        ("k12_1x1_images", "n24 c48 1x1 oc12 k3 p1 pro bias relu"),
        ("k32_7x7_bordered", "n2 c128 7x7 oc32 k3 p1 relu bordered"),
        ("k40_5x6_bn_bias", "n3 c40 5x6 oc40 k3 p1 bn bias strided"),
        ("k12_chunked", "n4 c300 4x5 oc12 k3 p1 pro relu block"),
        ("k32_wide_row", "c20 2x48 oc32 k3 p1 dense"),
        (
            "k12_bordered_pro",
            "n2 c16 6x9 oc12 k3 p1 pro relu bordered",
        ),
        ("k5_one_row", "n5 c16 1x9 oc5 k3 p1 bias"),
        (
            "k12_batch_tasks",
            "n4 c64 8x8 oc12 k3 p1 pro bias relu block",
        ),
        ("k24_neg_prologue", "n6 c24 3x3 oc24 k3 p1 neg"),
        ("k32_9x1", "n5 c33 9x1 oc32 k3 p1 bn relu strided"),
    ];
    for (seed, (name, spec)) in cases.iter().enumerate() {
        for (isa, plan) in check(&conv_case(name, 300 + seed as u64, spec)) {
            assert!(plan.contains("Winograd"), "{name} ({isa}): {plan}");
        }
    }
    // Enough 4x4 tiles for F(4x4, 3x3): partial tiles on odd sizes.
    let f4 = [
        ("f4_k12_13x17", "n3 c16 13x17 oc12 k3 p1 pro block"),
        ("f4_k40_25x23", "n2 c40 25x23 oc40 k3 p1 bn bias strided"),
        ("f4_k32_30x27", "c33 30x27 oc32 k3 p1 pro relu bordered"),
        ("f4_k12_chunked", "c300 29x26 oc12 k3 p1 bias relu dense"),
    ];
    for (seed, (name, spec)) in f4.iter().enumerate() {
        for (isa, plan) in check(&conv_case(name, 350 + seed as u64, spec)) {
            assert!(plan.contains("m: 4,"), "{name} ({isa}): {plan}");
        }
    }
    // Not Winograd: stride 2, no padding, few input channels, few tiles.
    for (seed, spec) in [
        "c16 8x8 oc12 k3 s2 p1",
        "c16 8x8 oc12 k3",
        "c8 8x8 oc12 k3 p1",
        "c128 7x7 oc32 k3 p1 relu",
    ]
    .iter()
    .enumerate()
    {
        for (isa, plan) in check(&conv_case(spec, 400 + seed as u64, spec)) {
            assert!(!plan.contains("Winograd"), "{spec} ({isa}): {plan}");
        }
    }
}

#[test]
fn winograd_error_at_densenet_sizes() {
    // DenseNet-121 and DenseNet-BC-100 growth convs at full size: the error
    // of F(2x2, 3x3) against the f64 reference (printed with --nocapture).
    for (seed, spec) in [
        "c128 56x56 oc32 k3 p1 relu block",
        "n2 c128 7x7 oc32 k3 p1 relu block",
        "n2 c48 32x32 oc12 k3 p1 relu block",
        "n2 c48 8x8 oc12 k3 p1 pro bias relu block",
    ]
    .iter()
    .enumerate()
    {
        let case = conv_case(spec, 500 + seed as u64, spec);
        for (isa, plan) in check(&case) {
            assert!(plan.contains("Winograd"), "{spec} ({isa}): {plan}");
        }
    }
}

#[test]
fn conv_random_shapes() {
    let mut rng = Rng::new(2024);
    for i in 0..8 {
        let (kh, kw) = (rng.range(1, 4), rng.range(1, 4));
        let spec = format!(
            "n{} c{} {}x{} oc{} k{kh}x{kw} s{}x{} p{}x{} {} {} {} {}",
            rng.range(1, 3),
            rng.range(1, 40),
            rng.range(kh, 10),
            rng.range(kw, 10),
            rng.range(1, 40),
            rng.range(1, 3),
            rng.range(1, 3),
            rng.range(0, kh),
            rng.range(0, kw),
            ["", "pro"][rng.range(0, 2)],
            ["", "bias"][rng.range(0, 2)],
            ["", "relu"][rng.range(0, 2)],
            ["dense", "strided", "bordered"][rng.range(0, 3)],
        );
        check(&conv_case(&format!("random{i}: {spec}"), 200 + i, &spec));
    }
}

#[test]
fn pools() {
    let cases = [
        // All prologue outputs negative: zero padding instead of -inf shows.
        ("max_3x3_s2_neg", "n2 c13 11x10 max k3 s2 p1 neg strided"),
        ("max_2x2_odd", "c9 7x9 max k2 s2"),
        ("avg_transition", "n2 c20 8x8 avg k2 s2 bn strided"),
        ("avg_3x3_pad_counts", "c17 5x6 avg k3 p1 pro"),
        ("max_stem_relu", "c16 12x12 max k3 s2 p1 pro"),
        ("avg_bordered", "n2 c12 6x6 avg k2 s2 bn bordered"),
        ("max_bordered_neg", "c9 7x7 max k3 s2 p1 neg bordered"),
        // Windows over 16 taps run as loops, not unrolled.
        ("avg_5x5_loops", "c6 7x6 avg k5 p2 pro strided"),
        ("max_5x4_loops", "c5 9x9 max k5x4 s2 neg"),
    ];
    for (seed, (name, spec)) in cases.iter().enumerate() {
        check(&pool_case(name, 300 + seed as u64, spec));
    }
}

#[test]
fn global_avg_pool_linear_affine() {
    use Layout::*;
    let gap = |name: &str, seed, shape: [usize; 4], pro: bool, layout| {
        case(name, seed, shape.to_vec(), layout, |g, rng| {
            Op::GlobalAvgPool {
                prologue: pro.then(|| affine(rng, g, "pro", shape[1], (0.2, 1.0), true)),
            }
        })
    };
    let linear = |name: &str, seed, n: usize, i: usize, o: usize, bias: bool, layout| {
        case(name, seed, vec![n, i], layout, |g, rng| {
            support::constant(g, "w", vec![o, i], rng.vec(o * i, -0.2, 0.2));
            let bias = bias.then(|| {
                support::constant(g, "b", vec![o], rng.vec(o, -1.0, 1.0));
                "b".to_string()
            });
            Op::Linear(Linear {
                weight: "w".into(),
                bias,
                out_features: o,
            })
        })
    };
    let affine_case = |name: &str, seed, shape: [usize; 4], relu: bool, layout| {
        case(name, seed, shape.to_vec(), layout, |g, rng| {
            Op::ChannelAffine(affine(rng, g, "a", shape[1], (-0.5, 0.5), relu))
        })
    };
    let cases = [
        gap("gap_norm5", 41, [3, 70, 7, 7], true, Strided),
        gap("gap_plain_1x1", 42, [2, 8, 1, 1], false, Dense),
        gap("gap_bordered", 47, [2, 20, 3, 4], true, Bordered),
        linear("classifier", 43, 1, 50, 10, true, Dense),
        linear("classifier_b3", 44, 3, 70, 1000, false, Strided),
        affine_case("affine_relu", 45, [2, 11, 3, 5], true, Strided),
        affine_case("affine_plain", 46, [1, 16, 4, 4], false, Dense),
        affine_case("affine_bordered", 48, [2, 10, 3, 5], true, Bordered),
    ];
    for c in &cases {
        check(c);
    }
}

#[test]
fn affine_in_place() {
    let mut c = case(
        "relu_in_place",
        51,
        vec![2, 19, 3, 4],
        Layout::Strided,
        |_, _| Op::Relu,
    );
    c.out_view = c.in_view;
    check(&c);
}

#[test]
fn checker_catches_a_write_outside_the_slice() {
    let c = conv_case("guard", 61, "c8 3x3 oc8 block");
    let mut arena = Arena::new(c.out_view.end_bytes());
    arena.write(&c.in_view, &c.input);
    let before = arena.clone();
    // One element just past the output slice of pixel 0 (the block has
    // padding channels after the slice or the next pixel's channel 0).
    let i = c.out_view.first_element() + c.out_view.channels;
    arena.poke(i, 42.0);
    assert_eq!(arena.first_change_outside(&before, &c.out_view), Some(i));
}

#[test]
fn errors_are_typed() {
    let c = conv_case("err", 71, "c8 3x3 oc8");
    let desc =
        KernelDesc::from_ir("err", &c.op, &c.graph.constants, c.in_view, c.out_view).expect("desc");

    let opts = CpuOptions {
        cpu: "not-a-cpu".into(),
        ..CpuOptions::default()
    };
    assert!(matches!(
        cpu::compile(std::slice::from_ref(&desc), &opts),
        Err(BackendError::UnknownCpu(_))
    ));

    let mut bad = desc.clone();
    bad.output.channel_offset = bad.output.pixel_stride;
    assert!(matches!(
        cpu::compile(&[bad], &CpuOptions::default()),
        Err(BackendError::InvalidKernel { index: 0, .. })
    ));

    let mut alias = desc.clone();
    alias.output = alias.input.slice(0, 8);
    let err = cpu::compile(&[alias], &CpuOptions::default()).expect_err("aliasing views");
    assert!(err.to_string().contains("overlaps"), "{err}");

    let opts = CpuOptions {
        linker: Some("/nonexistent/cc".into()),
        ..CpuOptions::default()
    };
    assert!(matches!(
        cpu::compile(&[desc], &opts),
        Err(BackendError::LinkerNotFound { .. })
    ));
}

#[test]
fn named_cpu_and_abi_metadata() {
    let c = conv_case("abi", 81, "c24 5x5 oc16 k3 p1 pro bias relu strided");
    let desc =
        KernelDesc::from_ir("abi", &c.op, &c.graph.constants, c.in_view, c.out_view).expect("desc");
    let opts = CpuOptions {
        cpu: "x86-64-v3".into(),
        emit_asm: true,
        keep_ir: true,
        ..CpuOptions::default()
    };
    let compiled = cpu::compile(&[desc.clone(), desc], &opts).expect("compile");
    assert_eq!(compiled.target.cpu, "x86-64-v3");
    let asm = compiled.asm.as_deref().expect("asm");
    assert!(asm.contains("vfmadd"), "no FMA in the generated code");
    assert!(compiled.llvm_ir_before.contains("define void @dnc_run"));
    assert!(compiled.llvm_ir_after.contains("<8 x float>"));
    let lib = Loaded::new(&compiled);
    assert_eq!(lib.abi_version(), cpu::ABI_VERSION as i32);
    assert_eq!(lib.kernel_count(), 2);
    assert_eq!(lib.kernel_tasks(1), compiled.kernels[1].tasks as i64);
    assert_eq!(lib.kernel_tasks(2), -1);
    assert_eq!(lib.kernel_tasks(-1), -1);
    let mut arena = Arena::new(compiled.arena_bytes);
    assert_eq!(lib.run_kernel(&mut arena, 5), -1);
    arena.write(&c.in_view, &c.input);
    assert_eq!(lib.run_kernel(&mut arena, 0), 0);
    let reference =
        ir::reference::run(&c.graph, std::slice::from_ref(&c.input)).expect("reference");
    let got = arena.read(&c.out_view, &reference[0].shape);
    assert!(got.rel_error(&reference[0]).expect("shape") <= 1e-4);

    let dir = std::env::temp_dir().join(format!("dnc-dump-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dump dir");
    compiled.dump(&dir).expect("dump");
    let table = std::fs::read_to_string(dir.join("cpu-kernels.txt")).expect("table");
    assert!(table.contains("dnc_k1_abi"), "{table}");
    assert!(dir.join("cpu.s").exists() && dir.join("cpu-after-opt.ll").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Correctness does not depend on LLVM's optimisations.
#[test]
fn unoptimised_code_is_correct() {
    let opts = CpuOptions {
        opt_level: 0,
        ..CpuOptions::default()
    };
    for (name, spec) in [
        ("o0_3x3", "n2 c10 5x6 oc12 k3 p1 pro bias relu strided"),
        ("o0_1x1", "c20 4x3 oc9 pro block"),
    ] {
        let c = conv_case(name, 91, spec);
        let desc = KernelDesc::from_ir(name, &c.op, &c.graph.constants, c.in_view, c.out_view)
            .expect("desc");
        let compiled = cpu::compile(&[desc], &opts).expect("compile");
        let lib = Loaded::new(&compiled);
        let mut arena = Arena::new(compiled.arena_bytes);
        arena.write(&c.in_view, &c.input);
        lib.run(&mut arena, Pfor::TwoThreads);
        let reference =
            ir::reference::run(&c.graph, std::slice::from_ref(&c.input)).expect("reference");
        let got = arena.read(&c.out_view, &reference[0].shape);
        assert!(
            got.rel_error(&reference[0]).expect("shape") <= 1e-4,
            "{name}"
        );
    }
}

/// A NaN in the input propagates as in PyTorch (ReLU and max pooling keep
/// it), so a poisoned arena shows reads of unwritten memory.
#[test]
fn nan_propagates_like_the_reference() {
    let mut cases = [
        conv_case("nan_conv", 401, "c9 4x5 oc10 k3 p1 pro relu strided"),
        pool_case("nan_max", 402, "c11 5x5 max k3 s2 p1 pro bordered"),
        case(
            "nan_relu",
            403,
            vec![1, 10, 3, 3],
            Layout::Strided,
            |_, _| Op::Relu,
        ),
    ];
    for c in &mut cases {
        c.input.data[7] = f32::NAN;
        let want = ir::reference::run(&c.graph, std::slice::from_ref(&c.input))
            .expect("reference")
            .remove(0);
        let desc = KernelDesc::from_ir(&c.name, &c.op, &c.graph.constants, c.in_view, c.out_view)
            .expect("desc");
        let compiled = cpu::compile(&[desc], &CpuOptions::default()).expect("compile");
        let lib = Loaded::new(&compiled);
        let mut arena = Arena::new(compiled.arena_bytes);
        arena.write(&c.in_view, &c.input);
        lib.run(&mut arena, Pfor::Sequential);
        let got = arena.read(&c.out_view, &want.shape);
        let nans = want.data.iter().filter(|x| x.is_nan()).count();
        let scale = want
            .data
            .iter()
            .filter(|x| !x.is_nan())
            .fold(1.0f32, |m, x| m.max(x.abs()));
        assert!(nans > 0, "{}: the reference has no NaN", c.name);
        for (i, (a, b)) in got.data.iter().zip(&want.data).enumerate() {
            assert_eq!(
                a.is_nan(),
                b.is_nan(),
                "{}: element {i}: {a} vs {b}",
                c.name
            );
            if !b.is_nan() {
                assert!((a - b).abs() <= 1e-4 * scale, "{}: {a} vs {b}", c.name);
            }
        }
    }
}

/// Validation rejects nonsense with an error, never a panic or overflow:
/// views and kernels drawn from small, zero and huge values.
#[test]
fn validation_never_panics() {
    use compiler::backend::kernel::{Affine, ConvKernel, KernelOp, LinearKernel, PoolKernel};
    use std::sync::Arc;
    let mut rng = Rng::new(99);
    let values = [
        0,
        1,
        2,
        3,
        7,
        64,
        1 << 20,
        1 << 40,
        usize::MAX / 3,
        usize::MAX,
    ];
    let pick = |rng: &mut Rng| values[rng.range(0, values.len())];
    let mut ok = 0;
    for _ in 0..4000 {
        let view = |rng: &mut Rng| View {
            offset: pick(rng) & !3,
            n: pick(rng),
            h: pick(rng),
            w: pick(rng),
            channels: pick(rng),
            pixel_stride: pick(rng),
            channel_offset: pick(rng),
            border: [pick(rng), pick(rng)],
            bf16: pick(rng) % 2 == 1,
        };
        let (input, output) = (view(&mut rng), view(&mut rng));
        let consts = |rng: &mut Rng| Arc::new(vec![0.0; rng.range(0, 64)]);
        let window = |rng: &mut Rng| {
            let mut two = || [pick(rng), pick(rng)];
            (two(), two(), two())
        };
        let (kernel, stride, padding) = window(&mut rng);
        let affine = |rng: &mut Rng| Affine {
            scale: consts(rng),
            shift: consts(rng),
            relu: true,
        };
        let pool = PoolKernel {
            kernel,
            stride,
            padding,
            prologue: Some(affine(&mut rng)),
        };
        let op = match rng.range(0, 5) {
            0 => KernelOp::Conv(ConvKernel {
                out_channels: pick(&mut rng),
                kernel,
                stride,
                padding,
                weight: consts(&mut rng),
                bias: Some(consts(&mut rng)),
                prologue: Some(affine(&mut rng)),
                relu: false,
            }),
            1 => KernelOp::MaxPool(pool),
            2 => KernelOp::GlobalAvgPool {
                prologue: Some(affine(&mut rng)),
            },
            3 => KernelOp::Linear(LinearKernel {
                out_features: pick(&mut rng),
                weight: consts(&mut rng),
                bias: None,
                relu: false,
            }),
            _ => KernelOp::Affine(affine(&mut rng)),
        };
        let desc = KernelDesc {
            name: "fuzz".into(),
            op,
            input,
            output,
            output_to_next_only: false,
        };
        let _ = desc.macs();
        if desc.validate().is_ok() {
            ok += 1;
        }
    }
    assert!(ok < 4000);
}
