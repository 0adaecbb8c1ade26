//! The graph in Graphviz `dot` form (`densenetc inspect --dot FILE`).
//!
//! One box per node: name, op, fused prologue (`affine+relu ▸`) and ReLU
//! epilogue, result type and placement; nodes placed in the same block
//! buffer are drawn in one cluster, concatenation views dashed.

use ir::{Graph, Op};
use std::collections::BTreeMap;
use std::fmt::Write;

/// `g` as a `digraph` in schedule order (deterministic).
pub fn to_dot(g: &Graph) -> String {
    let order = g.schedule().unwrap_or_else(|_| g.node_ids());
    let mut s = String::new();
    let _ = writeln!(s, "digraph \"{}\" {{", escape(&g.name));
    let _ = writeln!(
        s,
        "  rankdir=TB;\n  node [shape=box, fontname=\"monospace\", fontsize=10];"
    );
    let mut clusters: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut writers: BTreeMap<&str, usize> = BTreeMap::new();
    for &id in &order {
        if let Some(p) = &g.node(id).placement {
            if !g.is_view(id) {
                *writers.entry(p.buffer.as_str()).or_default() += 1;
            }
        }
    }
    for (i, &id) in order.iter().enumerate() {
        let n = g.node(id);
        let mut label = format!("{}\\n{}", escape(&n.name), n.op.mnemonic());
        if let Some(p) = n.op.prologue() {
            label += if p.relu {
                " [affine+relu ▸]"
            } else {
                " [affine ▸]"
            };
        }
        let relu = match &n.op {
            Op::Conv2d(c) => c.relu,
            Op::ChannelAffine(a) => a.relu,
            _ => false,
        };
        if relu {
            label += " [▸ relu]";
        }
        label += &format!("\\n{}", n.ty);
        if let Some(p) = &n.placement {
            label += &format!("\\n@ {}[{}..]", escape(&p.buffer), p.channel_offset);
        }
        let style = if g.is_view(id) {
            ", style=dashed"
        } else if matches!(n.op, Op::Input) {
            ", style=rounded"
        } else {
            ""
        };
        let line = format!("n{i} [label=\"{label}\"{style}];");
        match &n.placement {
            Some(p) if writers.get(p.buffer.as_str()).copied().unwrap_or(0) > 1 => {
                clusters.entry(p.buffer.as_str()).or_default().push(line)
            }
            _ => {
                let _ = writeln!(s, "  {line}");
            }
        }
    }
    for (k, (buffer, lines)) in clusters.into_iter().enumerate() {
        let _ = writeln!(
            s,
            "  subgraph cluster_{k} {{\n    label=\"buffer {}\"; style=filled; color=\"#deebf7\";",
            escape(buffer)
        );
        for l in lines {
            let _ = writeln!(s, "    {l}");
        }
        let _ = writeln!(s, "  }}");
    }
    let index: BTreeMap<_, _> = order.iter().enumerate().map(|(i, &n)| (n, i)).collect();
    for (i, &id) in order.iter().enumerate() {
        for o in g.operands(id) {
            if let Some(j) = index.get(&o) {
                let _ = writeln!(s, "  n{j} -> n{i};");
            }
        }
    }
    s.push_str("}\n");
    s
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}
