//! The text form: round trips over hand-built graphs covering every op and
//! over random graphs, parse errors, error markers, and no panics on
//! garbage.

use ir::ops::{BatchNorm, ChannelAffine, Conv2d, Linear, Op, Pool2d};
use ir::text::{parse, print, print_with_error, print_with_marker};
use ir::verify::verify;
use ir::{Constant, Graph, IrError, NodeId, TensorType};
use proptest::prelude::*;

type R<T> = Result<T, IrError>;

fn affine(g: &mut Graph, name: &str, c: usize, relu: bool) -> R<ChannelAffine> {
    g.add_constant(format!("{name}.scale"), Constant::unbound([c]))?;
    g.add_constant(format!("{name}.shift"), Constant::unbound([c]))?;
    Ok(ChannelAffine {
        scale: format!("{name}.scale"),
        shift: format!("{name}.shift"),
        relu,
    })
}

fn pool(k: usize, s: usize, p: usize, prologue: Option<ChannelAffine>) -> Pool2d {
    Pool2d {
        kernel: [k, k],
        stride: [s, s],
        padding: [p, p],
        prologue,
    }
}

/// A small graph using every op variant and every optional attribute both
/// present and absent.
fn all_ops() -> R<Graph> {
    let mut g = Graph::new("all_ops");
    let x = g.add_input("input", TensorType::f32([1, 3, 8, 8]))?;
    g.add_constant("conv1.weight", Constant::unbound([4, 3, 3, 3]))?;
    g.add_constant("conv1.bias", Constant::unbound([4]))?;
    let conv1 = Conv2d {
        weight: "conv1.weight".into(),
        bias: Some("conv1.bias".into()),
        out_channels: 4,
        kernel: [3, 3],
        stride: [1, 1],
        padding: [1, 1],
        prologue: None,
        relu: false,
    };
    let conv1 = g.add_node("conv1", Op::Conv2d(conv1), &[x])?;
    for p in ["weight", "bias", "running_mean", "running_var"] {
        g.add_constant(format!("bn1.{p}"), Constant::unbound([4]))?;
    }
    let bn = BatchNorm {
        weight: "bn1.weight".into(),
        bias: "bn1.bias".into(),
        running_mean: "bn1.running_mean".into(),
        running_var: "bn1.running_var".into(),
        // Not a short decimal: the round trip must be exact.
        eps: 1.000_000_1e-5,
    };
    let bn1 = g.add_node("bn1", Op::BatchNorm(bn), &[conv1])?;
    let relu1 = g.add_node("relu1", Op::Relu, &[bn1])?;
    g.add_constant("conv2.weight", Constant::unbound([4, 4, 1, 1]))?;
    let conv2 = Conv2d {
        weight: "conv2.weight".into(),
        bias: None,
        out_channels: 4,
        kernel: [1, 1],
        stride: [1, 1],
        padding: [0, 0],
        prologue: Some(affine(&mut g, "norm2", 4, true)?),
        relu: true,
    };
    let conv2 = g.add_node("conv2", Op::Conv2d(conv2), &[relu1])?;
    let aff = affine(&mut g, "aff", 4, false)?;
    let aff = g.add_node("aff", Op::ChannelAffine(aff), &[conv2])?;
    let cat = g.add_node("cat", Op::Concat, &[relu1, conv2, aff])?;
    let avg = g.add_node("avg", Op::AvgPool2d(pool(2, 2, 0, None)), &[cat])?;
    let pro = affine(&mut g, "avgp.norm", 12, true)?;
    let avgp = g.add_node("avgp", Op::AvgPool2d(pool(3, 1, 1, Some(pro))), &[cat])?;
    let max = g.add_node("max", Op::MaxPool2d(pool(3, 2, 1, None)), &[avgp])?;
    let pro = affine(&mut g, "maxp.norm", 12, false)?;
    let maxp = g.add_node("maxp", Op::MaxPool2d(pool(2, 2, 1, Some(pro))), &[cat])?;
    let gap = g.add_node("gap", Op::GlobalAvgPool { prologue: None }, &[avg])?;
    let pro = affine(&mut g, "gapp.norm", 12, true)?;
    let gapp = g.add_node(
        "gapp",
        Op::GlobalAvgPool {
            prologue: Some(pro),
        },
        &[maxp],
    )?;
    let cat2 = g.add_node("cat2", Op::Concat, &[gap, gapp])?;
    let flat = g.add_node("flat", Op::Flatten, &[cat2])?;
    g.add_constant("fc.weight", Constant::unbound([10, 24]))?;
    g.add_constant("fc.bias", Constant::unbound([10]))?;
    let fc = Linear {
        weight: "fc.weight".into(),
        bias: Some("fc.bias".into()),
        out_features: 10,
    };
    let fc = g.add_node("fc", Op::Linear(fc), &[flat])?;
    let flat2 = g.add_node("flat2", Op::Flatten, &[max])?;
    g.add_constant("head-2.weight", Constant::unbound([5, 192]))?;
    let head = Linear {
        weight: "head-2.weight".into(),
        bias: None,
        out_features: 5,
    };
    let head = g.add_node("head-2", Op::Linear(head), &[flat2])?;
    g.set_outputs(vec![fc, head]);
    verify(&g)?;
    Ok(g)
}

/// Asserts `print(parse(print(g))) == print(g)` and that the parsed graph
/// holds the same nodes, ops, types and constant shapes.
fn assert_round_trip(g: &Graph) -> R<()> {
    let text = print(g);
    let back = parse(&text)?;
    assert_eq!(print(&back), text);
    verify(&back)?;
    let nodes = |g: &Graph| -> R<Vec<_>> {
        Ok(g.schedule()?
            .into_iter()
            .map(|id| g.node(id).clone())
            .collect())
    };
    assert_eq!(nodes(&back)?, nodes(g)?);
    let shapes = |g: &Graph| -> Vec<_> {
        let c = g.constants.iter();
        c.map(|(k, c)| (k.clone(), c.shape.clone())).collect()
    };
    assert_eq!(shapes(&back), shapes(g));
    assert_eq!(back.name, g.name);
    Ok(())
}

#[test]
fn every_op_round_trips() -> R<()> {
    let g = all_ops()?;
    assert_round_trip(&g)?;
    let text = print(&g);
    for m in [
        "input",
        "conv2d",
        "batch_norm",
        "channel_affine",
        "relu",
        "concat",
        "avg_pool2d",
        "max_pool2d",
        "global_avg_pool",
        "flatten",
        "linear",
    ] {
        assert!(
            text.contains(&format!(" = {m}")),
            "{m} missing from\n{text}"
        );
    }
    Ok(())
}

#[test]
fn format_is_pinned() -> R<()> {
    insta::assert_snapshot!(print(&all_ops()?));
    Ok(())
}

#[test]
fn bound_constants_are_marked_and_parse_unbound() -> R<()> {
    let mut g = Graph::new("bound");
    g.add_constant("w", Constant::with_data([2, 1], vec![0.5, -1.0]))?;
    let x = g.add_input("x", TensorType::f32([3, 1]))?;
    let fc = Linear {
        weight: "w".into(),
        bias: None,
        out_features: 2,
    };
    let y = g.add_node("y", Op::Linear(fc), &[x])?;
    g.set_outputs(vec![y]);
    let text = print(&g);
    assert!(text.contains("  const w: f32[2, 1] = <bound>\n"), "{text}");
    let back = parse(&text)?;
    assert!(back.constants.values().all(|c| c.data.is_none()));
    assert_eq!(print(&back), text.replace(" = <bound>", ""));
    Ok(())
}

#[test]
fn odd_names_are_quoted() -> R<()> {
    let mut g = Graph::new("odd graph");
    let names = [
        "has space",
        "q\"uote\\back",
        "tab\tnew\nline",
        "%@;{}",
        "ünï",
    ];
    let x = g.add_input(names[0], TensorType::f32([1, 2, 2, 2]))?;
    let mut last = x;
    for (i, n) in names[1..].iter().enumerate() {
        let a = affine(&mut g, &format!("{n}{i}"), 2, i % 2 == 0)?;
        last = g.add_node(*n, Op::ChannelAffine(a), &[last])?;
    }
    g.set_outputs(vec![last, x]);
    assert_round_trip(&g)?;
    let text = print(&g);
    assert!(text.starts_with("graph \"odd graph\" {\n"), "{text}");
    assert!(text.contains("%\"tab\\tnew\\nline\""), "{text}");
    assert_eq!(text.lines().count(), 1 + 8 + 1 + 5 + 2);
    Ok(())
}

#[test]
fn empty_graph_round_trips() -> R<()> {
    let g = Graph::new("empty");
    let text = print(&g);
    assert_eq!(text, "graph empty {\n  return\n}\n");
    assert_eq!(print(&parse(&text)?), text);
    Ok(())
}

#[test]
fn comments_blank_lines_and_spacing_are_free() -> R<()> {
    let text = "; leading comment\n\ngraph g{\n const w :f32[2,1];c\n\
                %x=input:f32[3,1]\n   %y = linear( %x ){ weight = @w , out_features = 2 }:f32[3,2]\n\
                return %y ; done\n}\n\n";
    let g = parse(text)?;
    assert_eq!(
        print(&g),
        "graph g {\n  const w: f32[2, 1]\n\n  %x = input : f32[3, 1]\n  \
         %y = linear(%x) {out_features=2, weight=@w} : f32[3, 2]\n  return %y\n}\n"
    );
    Ok(())
}

// ---- parse errors -------------------------------------------------------

const HEADER: &str = "graph g {\n  const w: f32[4, 2, 1, 1]\n  %x = input : f32[1, 2, 4, 4]\n";

/// Parses `HEADER + body + return + }`, expecting an error; returns its
/// line and message.
fn parse_err(body: &str) -> (usize, String) {
    let text = format!("{HEADER}{body}\n  return %x\n}}\n");
    match parse(&text) {
        Err(IrError::Parse { line, message }) => (line, message),
        other => panic!("expected a parse error for\n{text}\ngot {other:?}"),
    }
}

fn assert_err(body: &str, line: usize, parts: &[&str]) {
    let (l, message) = parse_err(body);
    assert_eq!(l, line, "{message}");
    for p in parts {
        assert!(message.contains(p), "`{p}` not in `{message}`");
    }
}

const CONV: &str = "kernel=[1, 1], out_channels=4, padding=[0, 0], relu=false, stride=[1, 1]";

#[test]
fn unknown_op() {
    assert_err(
        "  %y = frob(%x) : f32[1]",
        4,
        &["node `y`", "unknown op `frob`"],
    );
}

#[test]
fn bad_types() {
    assert_err(
        "  %y = relu(%x) : f33[1, 2, 4, 4]",
        4,
        &["element type `f33`"],
    );
    assert_err("  %y = relu(%x) : f32[1, two]", 4, &["integer", "`two`"]);
    assert_err(
        "  %y = relu(%x) : f32[1, 2",
        4,
        &["expected `,`", "end of line"],
    );
    assert_err(
        "  %y = relu(%x) : f32[99999999999999999999999]",
        4,
        &["out of range"],
    );
    assert_err("  const v: f16[2]", 4, &["constant `v`", "f32"]);
}

#[test]
fn printed_type_must_match_inferred() {
    assert_err(
        "  %y = relu(%x) : f32[1, 2, 4, 5]",
        4,
        &[
            "node `y`",
            "printed type f32[1, 2, 4, 5]",
            "f32[1, 2, 4, 4]",
        ],
    );
}

#[test]
fn wrong_constant_shape() {
    let body = format!("  %y = conv2d(%x) {{{CONV}, weight=@w, out_channels=3}} : f32[1, 3, 4, 4]");
    assert_err(&body, 4, &["attribute `out_channels` given twice"]);
    let body = CONV.replace("out_channels=4", "out_channels=3");
    let body = format!("  %y = conv2d(%x) {{{body}, weight=@w}} : f32[1, 3, 4, 4]");
    assert_err(
        &body,
        4,
        &["node `y`", "constant `w` has shape [4, 2, 1, 1]"],
    );
}

#[test]
fn undeclared_constant() {
    let body = format!("  %y = conv2d(%x) {{{CONV}, weight=@nope}} : f32[1, 4, 4, 4]");
    assert_err(&body, 4, &["node `y`", "constant `nope` is not declared"]);
}

#[test]
fn duplicate_names() {
    assert_err(
        "  %x = relu(%x) : f32[1, 2, 4, 4]",
        4,
        &["node `x`", "already exists"],
    );
    assert_err("  const w: f32[1]", 4, &["constant `w`", "declared twice"]);
}

#[test]
fn unknown_operand() {
    assert_err(
        "  %y = relu(%z) : f32[1, 2, 4, 4]",
        4,
        &["node `y`", "`%z`"],
    );
    assert_err(
        "  %y = relu(%y) : f32[1, 2, 4, 4]",
        4,
        &["node `y`", "`%y`"],
    );
    assert_err(
        "  %y = relu(@w) : f32[1, 2, 4, 4]",
        4,
        &["expected an operand", "`@w`"],
    );
}

#[test]
fn attribute_errors() {
    let conv = |attrs: &str| format!("  %y = conv2d(%x) {{{attrs}}} : f32[1, 4, 4, 4]");
    assert_err(
        &conv(CONV),
        4,
        &["node `y`", "conv2d: missing attribute `weight`"],
    );
    let extra = format!("{CONV}, weight=@w, dilation=[1, 1]");
    assert_err(&conv(&extra), 4, &["unknown attribute `dilation`"]);
    let bad = CONV.replace("relu=false", "relu=maybe") + ", weight=@w";
    assert_err(&conv(&bad), 4, &["`relu` must be `true` or `false`"]);
    let bad = CONV.replace("kernel=[1, 1]", "kernel=[1]") + ", weight=@w";
    assert_err(&conv(&bad), 4, &["`kernel` must be a list of two integers"]);
    let pro = format!("{CONV}, weight=@w, prologue=affine(scale=@w, shift=@w)");
    assert_err(
        &conv(&pro),
        4,
        &["attribute `prologue`: missing attribute `relu`"],
    );
    let nested = "prologue=affine(relu=true, scale=affine(relu=true))";
    assert_err(&conv(nested), 4, &["cannot be nested"]);
    assert_err(
        "  %y = relu(%x) {relu=true} : f32[1, 2, 4, 4]",
        4,
        &["unknown attribute `relu`"],
    );
    assert_err(
        "  %y = input(%x) : f32[1]",
        4,
        &["`input` takes no operands"],
    );
    let eps = "  %y = batch_norm(%x) {bias=@w, eps=tiny, running_mean=@w, running_var=@w, weight=@w} : f32[1]";
    assert_err(eps, 4, &["`eps`: `tiny` is not a number"]);
}

#[test]
fn huge_integers_are_rejected_not_overflowed() {
    let pool = |p: &str| {
        format!("  %y = max_pool2d(%x) {{kernel=[1, 1], padding=[{p}, 0], stride=[1, 1]}} : f32[1]")
    };
    assert_err(&pool("2147483648"), 4, &["out of range"]);
    // The largest accepted value reaches the shape rule without overflow.
    assert_err(&pool("2147483647"), 4, &["node `y`", "padding"]);
}

#[test]
fn structural_errors() {
    let err = |text: &str| match parse(text) {
        Err(IrError::Parse { line, message }) => (line, message),
        other => panic!("{text:?}: {other:?}"),
    };
    assert_eq!(err("").0, 1);
    assert!(err("").1.contains("expected `graph"));
    assert!(err("graf g {\n}").1.contains("expected `graph`"));
    let (line, m) = err("graph g {\n  %x = input : f32[1]\n}\n");
    assert_eq!(line, 3);
    assert!(m.contains("missing `return`"), "{m}");
    let (line, m) = err("graph g {\n  return\n}\nmore\n");
    assert_eq!(line, 4);
    assert!(m.contains("after the closing"), "{m}");
    let (line, m) = err("graph g {\n  return\n  return\n}");
    assert_eq!(line, 3);
    assert!(m.contains("expected `}`"), "{m}");
    let (line, m) = err("graph g {\n  %x = input : f32[1]\n  return %x, %q\n}");
    assert_eq!(line, 3);
    assert!(m.contains("`%q`"), "{m}");
    let (line, m) = err("graph g {\n  %x = input : f32[1] extra\n");
    assert_eq!(line, 2);
    assert!(m.contains("`extra`"), "{m}");
    let (line, m) = err("graph g {\n  return\n");
    assert_eq!(line, 2);
    assert!(m.contains("end of input"), "{m}");
    let (_, m) = err("graph g {\n  %x = input : f32[1] # hash\n");
    assert!(m.contains("unexpected character '#'"), "{m}");
}

// ---- error markers ------------------------------------------------------

#[test]
fn marker_points_at_the_node() -> R<()> {
    let g = all_ops()?;
    let text = print_with_marker(&g, "relu1", "something is off\nsecond line");
    insta::assert_snapshot!(text);
    // The marker lines are comments: the marked text still parses.
    assert_eq!(print(&parse(&text)?), print(&g));
    Ok(())
}

#[test]
fn verifier_failures_print_marked() -> R<()> {
    let mut g = all_ops()?;
    let id = g
        .node_by_name("cat")
        .ok_or(IrError::Graph("no cat".into()))?;
    g.node_mut(id).ty = TensorType::f32([1, 11, 8, 8]);
    let err = verify(&g)
        .err()
        .ok_or(IrError::Graph("verify passed".into()))?;
    let text = print_with_error(&g, &err);
    let lines: Vec<&str> = text.lines().collect();
    let at = lines.iter().position(|l| l.starts_with("  %cat = concat"));
    let at = at.ok_or(IrError::Graph("no cat line".into()))?;
    assert_eq!(lines[at + 1], format!("; ^~~~ error: {err}"));

    let text = print_with_error(&g, &IrError::constant("fc.bias", "bad"));
    assert!(
        text.contains("  const fc.bias: f32[10]\n;       ^~~~~~~ error: constant `fc.bias`: bad\n"),
        "{text}"
    );
    let text = print_with_error(&g, &IrError::Graph("no outputs".into()));
    assert!(
        text.starts_with("graph all_ops {\n; error: graph: no outputs\n"),
        "{text}"
    );
    let text = print_with_marker(&g, "ghost", "gone");
    assert!(
        text.starts_with(
            "graph all_ops {\n; error: gone\n;        (no node or constant named `ghost`)\n"
        ),
        "{text}"
    );
    Ok(())
}

// ---- property tests -----------------------------------------------------

/// One step of a random chain: which op, two small sizes, a flag, and a
/// name suffix that sometimes needs quoting.
type Step = (u8, usize, usize, bool, String);

fn step() -> impl Strategy<Value = Step> {
    (
        0u8..10,
        1usize..4,
        0usize..3,
        any::<bool>(),
        "[a-z._ \"%-]{0,3}",
    )
}

/// A chain of random ops over a random input; steps whose shape rule fails
/// (window larger than the image, linear on a 4-D tensor, ...) are skipped.
fn random_graph(dims: (usize, usize, usize), steps: &[Step], eps: f32) -> R<Graph> {
    let (n, c, hw) = dims;
    let mut g = Graph::new("random");
    let mut cur = g.add_input("in", TensorType::f32([n, c, hw, hw]))?;
    let mut seen: Vec<NodeId> = vec![cur];
    for (i, (kind, a, b, flag, suffix)) in steps.iter().enumerate() {
        let name = format!("{i}{suffix}");
        let shape = g.node(cur).ty.shape.clone();
        let ch = shape.get(1).copied().unwrap_or(1);
        let konst = |g: &mut Graph, what: &str, shape: Vec<usize>| -> R<String> {
            let k = format!("{name}.{what}");
            g.add_constant(k.clone(), Constant::unbound(shape))?;
            Ok(k)
        };
        let pro = |g: &mut Graph, on: bool| -> R<Option<ChannelAffine>> {
            Ok(if on {
                Some(affine(g, &format!("{name}.pro"), ch, *flag)?)
            } else {
                None
            })
        };
        let p = |k: usize| Pool2d {
            kernel: [k, k],
            stride: [*a, *a],
            padding: [k / 2, 0],
            prologue: None,
        };
        let (op, operands) = match kind {
            0 => {
                let (o, k) = (a * 2, b * 2 + 1);
                let conv = Conv2d {
                    weight: konst(&mut g, "w", vec![o, ch, k, k])?,
                    bias: if *flag {
                        Some(konst(&mut g, "b", vec![o])?)
                    } else {
                        None
                    },
                    out_channels: o,
                    kernel: [k, k],
                    stride: [1 + usize::from(*flag), 1],
                    padding: [*b, b / 2],
                    prologue: pro(&mut g, a % 2 == 0)?,
                    relu: !flag,
                };
                (Op::Conv2d(conv), vec![cur])
            }
            1 => {
                let mut k = |w| konst(&mut g, w, vec![ch]);
                let bn = BatchNorm {
                    weight: k("weight")?,
                    bias: k("bias")?,
                    running_mean: k("mean")?,
                    running_var: k("var")?,
                    eps: eps * (*a as f32),
                };
                (Op::BatchNorm(bn), vec![cur])
            }
            2 => (
                Op::ChannelAffine(affine(&mut g, &name, ch, *flag)?),
                vec![cur],
            ),
            3 => (Op::Relu, vec![cur]),
            4 => {
                let mut ops: Vec<NodeId> = seen.iter().rev().take(*a).copied().collect();
                ops.push(cur);
                (Op::Concat, ops)
            }
            5 => (
                Op::AvgPool2d(Pool2d {
                    prologue: pro(&mut g, *flag)?,
                    ..p(b + 1)
                }),
                vec![cur],
            ),
            6 => (
                Op::MaxPool2d(Pool2d {
                    prologue: pro(&mut g, *flag)?,
                    ..p(b + 1)
                }),
                vec![cur],
            ),
            7 => (
                Op::GlobalAvgPool {
                    prologue: pro(&mut g, *flag)?,
                },
                vec![cur],
            ),
            8 => (Op::Flatten, vec![cur]),
            _ => {
                let i = shape.last().copied().unwrap_or(1);
                let l = Linear {
                    weight: konst(&mut g, "w", vec![a + b, i])?,
                    bias: if *flag {
                        Some(konst(&mut g, "b", vec![a + b])?)
                    } else {
                        None
                    },
                    out_features: a + b,
                };
                (Op::Linear(l), vec![cur])
            }
        };
        if let Ok(id) = g.add_node(name, op, &operands) {
            cur = id;
            seen.push(id);
        }
    }
    g.set_outputs(vec![cur]);
    Ok(g)
}

/// Tokens the garbage generator strings together.
const TOKENS: &[&str] = &[
    "graph",
    "g",
    "{",
    "}",
    "const",
    "return",
    "%x",
    "%y",
    "@w",
    "=",
    ":",
    ",",
    "(",
    ")",
    "[",
    "]",
    "<",
    ">",
    "bound",
    "f32",
    "f16",
    "1",
    "2",
    "0",
    "4294967296",
    "input",
    "conv2d",
    "relu",
    "concat",
    "max_pool2d",
    "global_avg_pool",
    "linear",
    "batch_norm",
    "affine",
    "kernel",
    "weight",
    "eps",
    "NaN",
    "\"q\\u{0}\"",
    "\n",
    "\n",
    ";",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_graphs_round_trip(
        dims in (1usize..3, 1usize..5, 1usize..10),
        steps in prop::collection::vec(step(), 1..14),
        eps in 1e-7f32..1e-2,
    ) {
        let g = random_graph(dims, &steps, eps).map_err(|e| TestCaseError::fail(e.to_string()))?;
        assert_round_trip(&g).map_err(|e| TestCaseError::fail(format!("{e}\n{}", print(&g))))?;
    }

    #[test]
    fn arbitrary_strings_do_not_panic(s in any::<String>()) {
        let _ = parse(&s);
    }

    #[test]
    fn token_soup_does_not_panic(toks in prop::collection::vec(prop::sample::select(TOKENS), 0..80)) {
        let text = format!("graph g {{\n{}", toks.join(" "));
        if let Ok(g) = parse(&text) {
            prop_assert_eq!(print(&parse(&print(&g)).map_err(|e| TestCaseError::fail(e.to_string()))?), print(&g));
        }
    }

    #[test]
    fn mutated_text_does_not_panic(
        edits in prop::collection::vec((any::<prop::sample::Index>(), 0u8..4, any::<char>(), 0usize..8), 1..6),
    ) {
        let base = all_ops().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut chars: Vec<char> = print(&base).chars().collect();
        for (at, kind, c, len) in edits {
            let i = at.index(chars.len() + 1);
            match kind {
                0 => chars.insert(i, c),
                1 => { chars.drain(i..(i + len).min(chars.len())); }
                2 => if i < chars.len() { chars[i] = c },
                _ => {
                    // Duplicate a slice: repeats names, attributes, lines.
                    let end = (i + len * 8).min(chars.len());
                    let dup: Vec<char> = chars[i..end].to_vec();
                    chars.splice(i..i, dup);
                }
            }
        }
        let text: String = chars.into_iter().collect();
        if let Ok(g) = parse(&text) {
            let again = parse(&print(&g)).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(print(&again), print(&g));
        }
    }
}

/// Guards the round-trip property against vacuity: the random chains do
/// reach every op (with and without the optional attributes).
#[test]
fn random_graphs_cover_every_op() -> R<()> {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = (
        (1usize..3, 1usize..5, 1usize..10),
        prop::collection::vec(step(), 1..14),
    );
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..300 {
        let tree = strategy
            .new_tree(&mut runner)
            .map_err(|e| IrError::Graph(e.to_string()))?;
        let (dims, steps) = tree.current();
        let g = random_graph(dims, &steps, 1e-5)?;
        for id in g.node_ids() {
            let op = &g.node(id).op;
            seen.insert(op.mnemonic().to_owned());
            if op.prologue().is_some() {
                seen.insert(format!("{}+prologue", op.mnemonic()));
            }
        }
        let text = print(&g);
        if text.contains("bias=@") {
            seen.insert("bias".into());
        }
    }
    let want = [
        "avg_pool2d",
        "avg_pool2d+prologue",
        "batch_norm",
        "bias",
        "channel_affine",
        "concat",
        "conv2d",
        "conv2d+prologue",
        "flatten",
        "global_avg_pool",
        "global_avg_pool+prologue",
        "input",
        "linear",
        "max_pool2d",
        "max_pool2d+prologue",
        "relu",
    ];
    for w in want {
        assert!(seen.contains(w), "{w} never generated: {seen:?}");
    }
    Ok(())
}

/// The example in the `ir::text` module docs parses and prints back.
#[test]
fn module_doc_example_round_trips() -> R<()> {
    let example = "graph tiny {
  const conv.weight: f32[8, 3, 3, 3] = <bound>
  const fc.weight: f32[10, 8]

  %input = input : f32[1, 3, 8, 8]
  %conv = conv2d(%input) {kernel=[3, 3], out_channels=8, padding=[1, 1], relu=true, stride=[1, 1], weight=@conv.weight} : f32[1, 8, 8, 8]
  %pool = global_avg_pool(%conv) : f32[1, 8, 1, 1]
  %flat = flatten(%pool) : f32[1, 8]
  %fc = linear(%flat) {out_features=10, weight=@fc.weight} : f32[1, 10]
  return %fc
}
";
    let doc = include_str!("../src/text/mod.rs");
    let in_doc: String = doc
        .lines()
        .filter_map(|l| l.strip_prefix("//!"))
        .map(|l| l.strip_prefix(' ').unwrap_or(l))
        .skip_while(|l| !l.starts_with("graph tiny"))
        .take(example.lines().count())
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(in_doc, example);
    assert_eq!(print(&parse(example)?), example.replace(" = <bound>", ""));
    Ok(())
}

/// Invalid graphs (a cycle, a dangling output) still print, so the
/// verifier can show them.
#[test]
fn invalid_graphs_print_without_panicking() -> R<()> {
    let mut g = Graph::new("bad");
    let x = g.add_input("x", TensorType::f32([1, 2, 2, 2]))?;
    let a = g.add_node("a", Op::Relu, &[x])?;
    let b = g.add_node("b", Op::Relu, &[a])?;
    g.set_operands(a, &[b]);
    g.set_outputs(vec![b, NodeId::new(99)]);
    let err = verify(&g)
        .err()
        .ok_or(IrError::Graph("verify passed".into()))?;
    let text = print_with_error(&g, &err);
    assert!(
        text.contains("; error: graph: the graph has a cycle; nodes in index order\n"),
        "{text}"
    );
    assert!(
        text.contains("  %a = relu(%b) : f32[1, 2, 2, 2]\n"),
        "{text}"
    );
    assert!(text.contains("  return %b, <dangling 99>\n"), "{text}");
    assert!(parse(&text).is_err());
    Ok(())
}
