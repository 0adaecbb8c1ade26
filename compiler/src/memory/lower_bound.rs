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
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LowerBound {
    pub bytes: usize,
    /// The first schedule step where it is attained, and its node.
    pub step: usize,
    pub node: String,
}

/// The lower bound of `g`, whose non-input values must all be placed.
///
/// One sweep over the schedule: a value enters at its definition step and leaves after its
/// last use; a buffer counts while at least one of its values is live (O(values), not
/// O(values × steps)).
pub fn lower_bound(g: &Graph) -> Result<LowerBound, PlanError> {
    let order = g.schedule()?;
    let mut step_of = vec![usize::MAX; order.iter().map(|n| n.index() + 1).max().unwrap_or(0)];
    for (i, &n) in order.iter().enumerate() {
        step_of[n.index()] = i;
    }
    let end = order.len().saturating_sub(1);
    // Buffers by first appearance; per value: buffer index, definition step, last use step.
    let mut index: BTreeMap<&str, usize> = BTreeMap::new();
    let mut names: Vec<&str> = Vec::new();
    let mut values: Vec<(usize, usize, usize)> = Vec::new();
    for &id in &order {
        let node = g.node(id);
        if matches!(node.op, Op::Input) {
            continue;
        }
        let p = node.placement.as_ref().ok_or_else(|| PlanError::Unplaced {
            node: node.name.clone(),
        })?;
        let def = step_of[id.index()];
        let last = if g.outputs().contains(&id) {
            end
        } else {
            g.user_edges(id)
                .map(|u| step_of[u.index()])
                .max()
                .unwrap_or(def)
                .max(def)
        };
        let b = *index.entry(p.buffer.as_str()).or_insert_with(|| {
            names.push(p.buffer.as_str());
            names.len() - 1
        });
        values.push((b, def, last));
    }
    // Values entering at each step, and leaving after each step.
    let mut enter: Vec<Vec<usize>> = vec![Vec::new(); order.len()];
    let mut leave: Vec<Vec<usize>> = vec![Vec::new(); order.len()];
    for &(b, def, last) in &values {
        enter[def].push(b);
        leave[last].push(b);
    }
    let mut live = vec![0usize; names.len()];
    let mut size: Vec<Option<usize>> = vec![None; names.len()];
    let mut bytes = 0usize;
    let mut best = LowerBound {
        bytes: 0,
        step: 0,
        node: String::new(),
    };
    for (step, &id) in order.iter().enumerate() {
        for &b in &enter[step] {
            live[b] += 1;
            if live[b] == 1 {
                let s = match size[b] {
                    Some(s) => s,
                    None => {
                        let buf =
                            g.buffers
                                .get(names[b])
                                .ok_or_else(|| PlanError::UnknownBuffer {
                                    node: g.node(id).name.clone(),
                                    buffer: names[b].to_owned(),
                                })?;
                        let s = buf.size_bytes().ok_or_else(|| PlanError::Size {
                            buffer: names[b].to_owned(),
                        })?;
                        size[b] = Some(s);
                        s
                    }
                };
                bytes = bytes.saturating_add(s);
            }
        }
        if bytes > best.bytes {
            best = LowerBound {
                bytes,
                step,
                node: g.node(id).name.clone(),
            };
        }
        for &b in &leave[step] {
            live[b] -= 1;
            if live[b] == 0 {
                bytes = bytes.saturating_sub(size[b].unwrap_or(0));
            }
        }
    }
    Ok(best)
}
