//! The lower bound the arena is compared with: the largest total size of
//! the buffers that hold a live value at one schedule step.
//!
//! It is computed on the same optimised graph as the arena — each block
//! buffer counts as one tensor of its full size, zero borders included —
//! but independently of the allocator: it never looks at offsets, and it
//! derives liveness per *value* (defined at its step, live until its last
//! reader, graph outputs until the end) rather than reusing the per-buffer
//! lifetimes the allocator packs. Any arena that keeps live values apart
//! needs at least this many bytes for this schedule.

use super::PlanError;
use ir::{Graph, Op};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LowerBound {
    pub bytes: usize,
    /// The first schedule step where it is attained, and its node.
    pub step: usize,
    pub node: String,
}

/// The lower bound of `g`, whose non-input values must all be placed.
pub fn lower_bound(g: &Graph) -> Result<LowerBound, PlanError> {
    let order = g.schedule()?;
    let step_of: BTreeMap<_, _> = order.iter().enumerate().map(|(i, &n)| (n, i)).collect();
    let end = order.len().saturating_sub(1);
    // Per value: buffer, definition step, last use step.
    let mut values: Vec<(&str, usize, usize)> = Vec::new();
    for &id in &order {
        let node = g.node(id);
        if matches!(node.op, Op::Input) {
            continue;
        }
        let p = node.placement.as_ref().ok_or_else(|| PlanError::Unplaced {
            node: node.name.clone(),
        })?;
        let def = step_of[&id];
        let last = if g.outputs().contains(&id) {
            end
        } else {
            g.users(id).iter().map(|u| step_of[u]).max().unwrap_or(def)
        };
        values.push((p.buffer.as_str(), def, last));
    }
    let mut best = LowerBound {
        bytes: 0,
        step: 0,
        node: String::new(),
    };
    for (step, &id) in order.iter().enumerate() {
        let live: BTreeSet<&str> = values
            .iter()
            .filter(|v| v.1 <= step && step <= v.2)
            .map(|v| v.0)
            .collect();
        let mut bytes = 0usize;
        for b in live {
            let buf = g.buffers.get(b).ok_or_else(|| PlanError::UnknownBuffer {
                node: g.node(id).name.clone(),
                buffer: b.to_owned(),
            })?;
            let size = buf.size_bytes().ok_or_else(|| PlanError::Size {
                buffer: b.to_owned(),
            })?;
            bytes = bytes.saturating_add(size);
        }
        if bytes > best.bytes {
            best = LowerBound {
                bytes,
                step,
                node: g.node(id).name.clone(),
            };
        }
    }
    Ok(best)
}
