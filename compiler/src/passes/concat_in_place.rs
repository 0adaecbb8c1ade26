//! `concat-in-place`: every dense block's concatenations become one block
//! buffer that each producer writes its channel slice of directly.
//!
//! torchvision's layer `i` reads `cat(x, f1, …, f(i-1))` and the block
//! returns `cat(x, f1, …, fL)`: every concatenation is a channel prefix of
//! the largest. This pass declares one buffer per such family (named after
//! its largest concatenation, shaped like it), places the block input `x`
//! and each layer's output `fj` at their channel offsets, and places every
//! concatenation at its offset as a *view* ([`ir::Graph::is_view`]): it
//! writes nothing and its consumers read a strided channel prefix of the
//! buffer. Nested forms (`cat(cat(x, f1), f2)`, as in implementations that
//! concatenate inside each layer) land in the same buffer.
//!
//! Algorithm: concatenations in decreasing channel count (then schedule
//! order). One that fits inside the buffer of its first placed operand —
//! every other operand already at its slot there, or its slot still free —
//! joins that buffer; otherwise it gets a new buffer. Then each operand is
//! placed at its slot; an operand that cannot be (a graph input, a value
//! already placed elsewhere, the same value twice) is copied into its slot
//! by a one-operand concatenation `<operand>.copy` — the only copies left,
//! counted by `memory::concat_copies`, and none for any DenseNet preset at
//! any batch size.
//!
//! Guarantees: values unchanged (placement only chooses storage); in each
//! buffer the writers' channel slices are disjoint (the verifier checks).

use super::{Pass, PassError};
use ir::{Buffer, Graph, NodeId, Op, Placement};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy)]
pub struct ConcatInPlace;

impl ConcatInPlace {
    pub const NAME: &'static str = "concat-in-place";
}

impl Pass for ConcatInPlace {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn run(&self, g: &mut Graph) -> Result<bool, PassError> {
        let order = g.schedule()?;
        let position: BTreeMap<NodeId, usize> =
            order.iter().enumerate().map(|(i, &n)| (n, i)).collect();
        let mut concats: Vec<NodeId> = order
            .iter()
            .copied()
            .filter(|&n| matches!(g.node(n).op, Op::Concat) && g.node(n).placement.is_none())
            .collect();
        concats.sort_by_key(|&n| (std::cmp::Reverse(channels(g, n)), position[&n]));
        let mut copies: BTreeMap<(NodeId, Placement), NodeId> = BTreeMap::new();
        let mut changed = false;
        for c in concats {
            if g.node(c).placement.is_some() {
                continue;
            }
            let at = match anchor(g, c, &copies) {
                Some(p) => p,
                None => {
                    let name = g.fresh_buffer_name(&g.node(c).name);
                    g.buffers
                        .insert(name.clone(), Buffer::new(g.node(c).ty.clone()));
                    Placement {
                        buffer: name,
                        channel_offset: 0,
                    }
                }
            };
            g.node_mut(c).placement = Some(at);
            place_operands(g, c, &mut copies)?;
            changed = true;
        }
        Ok(changed)
    }
}

fn channels(g: &Graph, n: NodeId) -> usize {
    g.node(n).ty.nchw().map_or(0, |t| t.1)
}

/// A placement for concat `c` inside an existing buffer, derived from the
/// first operand that is already placed: valid when the concat fits there
/// and every operand either already sits at its slot or can be written to
/// a slot no other value occupies.
fn anchor(
    g: &Graph,
    c: NodeId,
    copies: &BTreeMap<(NodeId, Placement), NodeId>,
) -> Option<Placement> {
    let operands = g.operands(c);
    let mut prefix = 0;
    let mut candidate = None;
    for &o in &operands {
        if let Some(p) = g
            .node(o)
            .placement
            .clone()
            .or_else(|| copies.keys().find(|(k, _)| *k == o).map(|(_, p)| p.clone()))
        {
            candidate = Some(Placement {
                channel_offset: p.channel_offset.checked_sub(prefix)?,
                buffer: p.buffer,
            });
            break;
        }
        prefix += channels(g, o);
    }
    let at = candidate?;
    let buf = g.buffers.get(&at.buffer)?;
    let fits = match (buf.ty.nchw(), g.node(c).ty.nchw()) {
        (Some((bn, bc, bh, bw)), Some((n, total, h, w))) => {
            (bn, bh, bw) == (n, h, w)
                && buf.ty.dtype == g.node(c).ty.dtype
                && at.channel_offset + total <= bc
        }
        _ => false,
    };
    if !fits {
        return None;
    }
    // Compared field by field, not through a `Placement` per operand: a block's
    // concatenations have quadratically many operands in all.
    let mut offset = at.channel_offset;
    for &o in &operands {
        let is_slot = |p: &Placement| p.buffer == at.buffer && p.channel_offset == offset;
        let there = g.node(o).placement.as_ref().is_some_and(is_slot)
            || copies.keys().any(|(k, p)| *k == o && is_slot(p));
        if !there {
            let slot = Placement {
                buffer: at.buffer.clone(),
                channel_offset: offset,
            };
            if !slot_is_free(g, &slot, channels(g, o)) {
                return None;
            }
        }
        offset += channels(g, o);
    }
    Some(at)
}

/// No value is written to `len` channels from `slot` yet.
fn slot_is_free(g: &Graph, slot: &Placement, len: usize) -> bool {
    let end = slot.channel_offset + len;
    g.node_ids()
        .into_iter()
        .all(|id| match &g.node(id).placement {
            Some(p) if p.buffer == slot.buffer && !g.is_view(id) => {
                let c = channels(g, id);
                end <= p.channel_offset || p.channel_offset + c <= slot.channel_offset
            }
            _ => true,
        })
}

/// Place each operand of the placed concat `c` at its slot, recursing into
/// operands that are concatenations; copy what cannot be placed.
fn place_operands(
    g: &mut Graph,
    c: NodeId,
    copies: &mut BTreeMap<(NodeId, Placement), NodeId>,
) -> Result<(), PassError> {
    let mut work = vec![c];
    while let Some(c) = work.pop() {
        let Some(at) = g.node(c).placement.clone() else {
            continue;
        };
        let original = g.operands(c);
        let mut operands = original.clone();
        let mut offset = at.channel_offset;
        let mut rewired = false;
        for (i, &o) in original.iter().enumerate() {
            let here = offset;
            offset += channels(g, o);
            let node = g.node(o);
            if node
                .placement
                .as_ref()
                .is_some_and(|p| p.buffer == at.buffer && p.channel_offset == here)
            {
                continue;
            }
            let slot = Placement {
                buffer: at.buffer.clone(),
                channel_offset: here,
            };
            if let Some(&copy) = copies.get(&(o, slot.clone())) {
                operands[i] = copy;
                rewired = true;
                continue;
            }
            // (A value that appears twice is placed at its first slot by now.)
            if node.placement.is_none() && !matches!(node.op, Op::Input) {
                g.node_mut(o).placement = Some(slot);
                if matches!(g.node(o).op, Op::Concat) {
                    work.push(o);
                }
            } else {
                let name = g.fresh_node_name(&format!("{}.copy", g.node(o).name));
                let copy = g.add_node(name, Op::Concat, &[o])?;
                g.node_mut(copy).placement = Some(slot.clone());
                copies.insert((o, slot), copy);
                operands[i] = copy;
                rewired = true;
            }
        }
        if rewired {
            g.set_operands(c, &operands);
        }
    }
    Ok(())
}
