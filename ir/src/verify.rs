//! The verifier: structural and type invariants every graph must hold
//! between passes. Errors name the offending node or constant.

use crate::error::{IrError, Result};
use crate::graph::{Graph, NodeId};
use crate::ops::Op;
use std::collections::{BTreeMap, BTreeSet};

/// Check `g`:
/// - the graph is acyclic and has at least one output; inputs and outputs exist;
/// - node names are unique; `input` nodes are exactly the graph inputs;
/// - operand positions of each node are `0..n` without gaps;
/// - every node's stored type equals the type its shape rule infers, which
///   also checks operand counts, ranks and the shapes of referenced constants;
/// - bound constants hold exactly `prod(shape)` values;
/// - storage (see [`verify_storage`]) is consistent.
pub fn verify(g: &Graph) -> Result<()> {
    let order = g.schedule()?;
    if g.outputs().is_empty() {
        return Err(IrError::Graph("the graph has no outputs".into()));
    }
    for &o in g.outputs().iter().chain(g.inputs()) {
        if !g.contains(o) {
            return Err(IrError::Graph(format!("input/output {o:?} is not a node")));
        }
    }
    // Names are unique exactly when the graph's name index maps each node's name to it.
    if !g.names_indexed() {
        let mut names = BTreeSet::new();
        for &id in &order {
            let node = g.node(id);
            if !names.insert(node.name.as_str()) {
                return Err(IrError::node(&node.name, "duplicate node name"));
            }
            if g.node_by_name(&node.name) != Some(id) {
                return Err(IrError::node(
                    &node.name,
                    "renamed outside Graph::rename_node (the name index does not know it)",
                ));
            }
        }
    }
    let inputs: BTreeSet<_> = g.inputs().iter().copied().collect();
    for &id in &order {
        let node = g.node(id);
        let operands = g.operands(id);
        let is_input = matches!(node.op, Op::Input);
        if is_input != inputs.contains(&id) {
            return Err(IrError::node(
                &node.name,
                "input ops must be exactly the graph inputs",
            ));
        }
        if is_input {
            if !operands.is_empty() {
                return Err(IrError::node(&node.name, "an input has operands"));
            }
            continue;
        }
        let ty = g.infer(&node.name, &node.op, &operands)?;
        if ty != node.ty {
            return Err(IrError::node(
                &node.name,
                format!("stored type {} but the operands give {ty}", node.ty),
            ));
        }
    }
    for (name, c) in &g.constants {
        if let Some(d) = &c.data {
            if d.len() != c.num_elements() {
                return Err(IrError::constant(
                    name,
                    format!("{} values for shape {:?}", d.len(), c.shape),
                ));
            }
        }
    }
    verify_storage(g, &order)
}

/// Storage invariants:
/// - graph inputs are not placed; a placement names a declared buffer
///   whose N, H, W and dtype are the node's, and its channel slice lies
///   inside the buffer (a value that is not rank 4 fills a buffer of its
///   exact type, without a border);
/// - in each buffer, the nodes that write (every placed node except
///   concatenations that are views, [`Graph::is_view`]) have disjoint
///   channel slices, so no value overwrites another;
/// - once [`Graph::arena_bytes`] is set: every buffer has an offset, lies
///   inside the arena and is placed at a multiple of its element size, and
///   every non-input node is placed. (Whether buffers that share arena
///   bytes are ever live at once is the memory planner's check: it needs
///   the schedule.)
pub fn verify_storage(g: &Graph, order: &[NodeId]) -> Result<()> {
    let mut writers: BTreeMap<&str, Vec<(usize, usize, &str)>> = BTreeMap::new();
    for &id in order {
        let node = g.node(id);
        let Some(p) = &node.placement else {
            if g.arena_bytes.is_some() && !matches!(node.op, Op::Input) {
                return Err(IrError::node(
                    &node.name,
                    "memory is planned but this node has no placement",
                ));
            }
            continue;
        };
        if matches!(node.op, Op::Input) {
            return Err(IrError::node(
                &node.name,
                "graph inputs are caller-owned and cannot be placed",
            ));
        }
        let buf = g.buffers.get(&p.buffer).ok_or_else(|| {
            IrError::node(
                &node.name,
                format!("placed in undeclared buffer `{}`", p.buffer),
            )
        })?;
        let c = match (node.ty.nchw(), buf.ty.nchw()) {
            (Some((n, c, h, w)), Some((bn, bc, bh, bw)))
                if (n, h, w) == (bn, bh, bw)
                    && node.ty.dtype == buf.ty.dtype
                    && p.channel_offset.checked_add(c).is_some_and(|e| e <= bc) =>
            {
                c
            }
            _ if node.ty == buf.ty && p.channel_offset == 0 && buf.border == [0, 0] => 1,
            _ => {
                return Err(IrError::node(
                    &node.name,
                    format!(
                        "{} does not fit at channel {} of buffer `{}` ({}, border {:?})",
                        node.ty, p.channel_offset, p.buffer, buf.ty, buf.border
                    ),
                ))
            }
        };
        if !g.is_view(id) {
            writers.entry(p.buffer.as_str()).or_default().push((
                p.channel_offset,
                p.channel_offset + c,
                node.name.as_str(),
            ));
        }
    }
    for (buffer, mut slices) in writers {
        slices.sort();
        for pair in slices.windows(2) {
            if pair[1].0 < pair[0].1 {
                return Err(IrError::node(
                    pair[1].2,
                    format!(
                        "writes channels {}..{} of buffer `{buffer}`, overlapping `{}` ({}..{})",
                        pair[1].0, pair[1].1, pair[0].2, pair[0].0, pair[0].1
                    ),
                ));
            }
        }
    }
    if let Some(arena) = g.arena_bytes {
        for (name, buf) in &g.buffers {
            let size = buf
                .size_bytes()
                .ok_or_else(|| IrError::Graph(format!("buffer `{name}`: size overflows")))?;
            let Some(offset) = buf.offset else {
                return Err(IrError::Graph(format!(
                    "buffer `{name}`: memory is planned but it has no offset"
                )));
            };
            if offset % buf.ty.dtype.size_bytes() != 0
                || offset.checked_add(size).is_none_or(|e| e > arena)
            {
                return Err(IrError::Graph(format!(
                    "buffer `{name}`: {size} bytes at offset {offset} do not fit an arena of {arena} bytes"
                )));
            }
        }
    }
    Ok(())
}
