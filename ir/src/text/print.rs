//! The printer, and the marked variants used to report verifier failures.

use super::lex::push_name;
use crate::error::IrError;
use crate::graph::{Graph, NodeId};
use crate::ops::{ChannelAffine, Op, Pool2d};
use std::fmt::Write as _;

/// What a printed line declares, so an error can be placed under it.
#[derive(Debug, PartialEq)]
enum Subject<'a> {
    None,
    Node(&'a str),
    Constant(&'a str),
}

/// One printed line.
#[derive(Debug)]
struct Line<'a> {
    text: String,
    subject: Subject<'a>,
    /// Column and width (in chars) of the declared name, for the marker.
    name_span: (usize, usize),
}

/// The text form of `g` (see the [module docs](super) for the format).
///
/// Deterministic: constants by name, nodes in [`Graph::schedule`] order,
/// attributes sorted by key. A graph with a cycle (which no valid graph
/// has) prints its nodes in index order under an `; error:` comment.
pub fn print(g: &Graph) -> String {
    join(&render(g))
}

/// [`print()`] with an error marked under the line that declares the node
/// `node_name` (or, failing that, the constant of that name), in the
/// style of cranelift's `print_errors`:
///
/// ```text
///   %relu1 = relu(%conv1) : f32[1, 8, 4, 4]
/// ; ^~~~~~ error: stored type f32[1, 8, 4, 4] but the operands give ...
/// ```
///
/// Marker lines are comments, so the result still parses. When no line
/// declares `node_name`, the message goes right after the `graph` line.
pub fn print_with_marker(g: &Graph, node_name: &str, message: &str) -> String {
    let mut lines = render(g);
    let find = |want: &Subject<'_>| lines.iter().position(|l| &l.subject == want);
    match find(&Subject::Node(node_name)).or_else(|| find(&Subject::Constant(node_name))) {
        Some(i) => {
            let (col, width) = lines[i].name_span;
            let mut m = format!(
                "; {}^{}",
                " ".repeat(col.saturating_sub(2)),
                "~".repeat(width.saturating_sub(1))
            );
            push_message(&mut m, message, col + width);
            insert_comment(&mut lines, i + 1, m);
        }
        None => {
            let mut m = String::from(";");
            let message = format!("{message}\n(no node or constant named `{node_name}`)");
            push_message(&mut m, &message, 1);
            insert_comment(&mut lines, 1, m);
        }
    }
    join(&lines)
}

/// [`print()`] with `error` marked where it belongs: under the node or
/// constant it names, or after the `graph` line for errors about the
/// whole graph.
pub fn print_with_error(g: &Graph, error: &IrError) -> String {
    let message = error.to_string();
    match error {
        IrError::Node { node, .. } => print_with_marker(g, node, &message),
        IrError::Constant { name, .. } => print_with_marker(g, name, &message),
        _ => {
            let mut lines = render(g);
            let mut m = String::from(";");
            push_message(&mut m, &message, 1);
            insert_comment(&mut lines, 1, m);
            join(&lines)
        }
    }
}

fn insert_comment(lines: &mut Vec<Line<'_>>, at: usize, text: String) {
    lines.insert(at.min(lines.len()), plain(text));
}

/// Append ` error: <first line>` to `out` (which ends at column `col`);
/// further lines of `message` become comment lines aligned with the first.
fn push_message(out: &mut String, message: &str, col: usize) {
    let mut lines = message.lines();
    let _ = write!(out, " error: {}", lines.next().unwrap_or(""));
    let indent = " ".repeat(col + " error: ".len() - 1);
    for l in lines {
        let _ = write!(out, "\n;{indent}{l}");
    }
}

fn join(lines: &[Line<'_>]) -> String {
    let mut out = String::new();
    for l in lines {
        out.push_str(&l.text);
        out.push('\n');
    }
    out
}

fn render(g: &Graph) -> Vec<Line<'_>> {
    let mut lines = Vec::new();
    let mut header = String::from("graph ");
    push_name(&mut header, &g.name);
    header.push_str(" {");
    lines.push(plain(header));
    let order = match g.schedule() {
        Ok(order) => order,
        Err(e) => {
            lines.push(plain(format!("; error: {e}; nodes in index order")));
            g.node_ids()
        }
    };
    for (name, c) in &g.constants {
        let mut t = String::from("  const ");
        push_name(&mut t, name);
        let name_span = (8, t.chars().count() - 8);
        t.push_str(": f32");
        push_dims(&mut t, &c.shape);
        if c.data.is_some() {
            t.push_str(" = <bound>");
        }
        lines.push(Line {
            text: t,
            subject: Subject::Constant(name),
            name_span,
        });
    }
    if !g.constants.is_empty() && !order.is_empty() {
        lines.push(plain(String::new()));
    }
    if let Some(arena) = g.arena_bytes {
        lines.push(plain(format!("  arena {arena}")));
    }
    for (name, b) in &g.buffers {
        let mut t = String::from("  buffer ");
        push_name(&mut t, name);
        let _ = write!(t, ": {}", b.ty);
        let mut attrs = Vec::new();
        if b.border != [0, 0] {
            attrs.push(("border", dims(&b.border)));
        }
        if let Some(o) = b.offset {
            attrs.push(("offset", o.to_string()));
        }
        if !attrs.is_empty() {
            t.push_str(" {");
            push_attrs(&mut t, attrs);
            t.push('}');
        }
        lines.push(plain(t));
    }
    if (g.arena_bytes.is_some() || !g.buffers.is_empty()) && !order.is_empty() {
        lines.push(plain(String::new()));
    }
    for id in order {
        let node = g.node(id);
        let mut t = String::from("  ");
        push_ref(&mut t, g, id);
        let name_span = (2, t.chars().count() - 2);
        t.push_str(" = ");
        t.push_str(node.op.mnemonic());
        if !matches!(node.op, Op::Input) {
            t.push('(');
            for (i, o) in g.operands(id).into_iter().enumerate() {
                if i > 0 {
                    t.push_str(", ");
                }
                push_ref(&mut t, g, o);
            }
            t.push(')');
        }
        let attrs = attributes(&node.op);
        if !attrs.is_empty() {
            t.push_str(" {");
            push_attrs(&mut t, attrs);
            t.push('}');
        }
        let _ = write!(t, " : {}", node.ty);
        if let Some(p) = &node.placement {
            t.push_str(" in ");
            push_name(&mut t, &p.buffer);
            let _ = write!(t, "[{}]", p.channel_offset);
        }
        lines.push(Line {
            text: t,
            subject: Subject::Node(&node.name),
            name_span,
        });
    }
    let mut ret = String::from("  return");
    for (i, &o) in g.outputs().iter().enumerate() {
        ret.push_str(if i == 0 { " " } else { ", " });
        push_ref(&mut ret, g, o);
    }
    lines.push(plain(ret));
    lines.push(plain("}".into()));
    lines
}

fn plain(text: String) -> Line<'static> {
    Line {
        text,
        subject: Subject::None,
        name_span: (0, 0),
    }
}

/// `%name` of a node; an id that is not in the graph (only an invalid
/// graph has one) prints as `<dangling N>`, which does not parse.
fn push_ref(out: &mut String, g: &Graph, id: NodeId) {
    if g.contains(id) {
        out.push('%');
        push_name(out, &g.node(id).name);
    } else {
        let _ = write!(out, "<dangling {}>", id.index());
    }
}

fn push_dims(out: &mut String, dims: &[usize]) {
    out.push('[');
    for (i, d) in dims.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "{d}");
    }
    out.push(']');
}

fn push_attrs(out: &mut String, mut attrs: Vec<(&'static str, String)>) {
    attrs.sort_by(|a, b| a.0.cmp(b.0));
    for (i, (k, v)) in attrs.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "{k}={v}");
    }
}

fn const_ref(name: &str) -> String {
    let mut s = String::from("@");
    push_name(&mut s, name);
    s
}

fn dims(d: &[usize]) -> String {
    let mut s = String::new();
    push_dims(&mut s, d);
    s
}

fn affine(a: &ChannelAffine) -> Vec<(&'static str, String)> {
    vec![
        ("scale", const_ref(&a.scale)),
        ("shift", const_ref(&a.shift)),
        ("relu", a.relu.to_string()),
    ]
}

fn prologue(attrs: &mut Vec<(&'static str, String)>, p: Option<&ChannelAffine>) {
    if let Some(a) = p {
        let mut v = String::from("affine(");
        push_attrs(&mut v, affine(a));
        v.push(')');
        attrs.push(("prologue", v));
    }
}

fn pool(p: &Pool2d) -> Vec<(&'static str, String)> {
    let mut attrs = vec![
        ("kernel", dims(&p.kernel)),
        ("stride", dims(&p.stride)),
        ("padding", dims(&p.padding)),
    ];
    prologue(&mut attrs, p.prologue.as_ref());
    attrs
}

/// Every attribute of `op` as `(key, printed value)`; `None` optionals are
/// left out. Sorted later by [`push_attrs`].
fn attributes(op: &Op) -> Vec<(&'static str, String)> {
    match op {
        Op::Input | Op::Relu | Op::Concat | Op::Flatten => Vec::new(),
        Op::Head(ir_head) => match ir_head {
            crate::ops::Head::SigmoidOpNorm { thresholds } => {
                vec![("thresholds", const_ref(thresholds))]
            }
            _ => Vec::new(),
        },
        Op::Conv2d(c) => {
            let mut attrs = vec![
                ("weight", const_ref(&c.weight)),
                ("out_channels", c.out_channels.to_string()),
                ("kernel", dims(&c.kernel)),
                ("stride", dims(&c.stride)),
                ("padding", dims(&c.padding)),
                ("relu", c.relu.to_string()),
            ];
            if let Some(b) = &c.bias {
                attrs.push(("bias", const_ref(b)));
            }
            prologue(&mut attrs, c.prologue.as_ref());
            attrs
        }
        Op::BatchNorm(b) => vec![
            ("weight", const_ref(&b.weight)),
            ("bias", const_ref(&b.bias)),
            ("running_mean", const_ref(&b.running_mean)),
            ("running_var", const_ref(&b.running_var)),
            // `{:?}` is the shortest text that parses back to the same f32.
            ("eps", format!("{:?}", b.eps)),
        ],
        Op::ChannelAffine(a) => affine(a),
        Op::AvgPool2d(p) | Op::MaxPool2d(p) => pool(p),
        Op::GlobalAvgPool { prologue: p } => {
            let mut attrs = Vec::new();
            prologue(&mut attrs, p.as_ref());
            attrs
        }
        Op::Linear(l) => {
            let mut attrs = vec![
                ("weight", const_ref(&l.weight)),
                ("out_features", l.out_features.to_string()),
            ];
            if let Some(b) = &l.bias {
                attrs.push(("bias", const_ref(b)));
            }
            attrs
        }
    }
}
