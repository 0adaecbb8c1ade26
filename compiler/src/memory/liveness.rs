//! Stage 2: the lifetime of every buffer over the schedule.

use super::PlanError;
use ir::{Graph, NodeId, Op};
use serde::Serialize;
use std::collections::BTreeMap;

/// Schedule steps `first..=last` during which a buffer holds data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Lifetime {
    pub first: usize,
    pub last: usize,
}

impl Lifetime {
    pub fn overlaps(&self, other: &Lifetime) -> bool {
        self.first <= other.last && other.first <= self.last
    }
}

/// The lifetime of every buffer some node of `order` (a schedule of `g`)
/// is placed in: from the first step that writes it to the last step that
/// reads a value placed in it; to the last step for graph outputs. Every
/// non-input node must be placed.
pub fn lifetimes(g: &Graph, order: &[NodeId]) -> Result<BTreeMap<String, Lifetime>, PlanError> {
    let mut out: BTreeMap<String, Lifetime> = BTreeMap::new();
    let end = order.len().saturating_sub(1);
    // No allocation for a buffer already seen: this runs once per edge, and a dense block's
    // concatenations have quadratically many.
    let mut touch = |buffer: &str, step: usize| match out.get_mut(buffer) {
        Some(l) => {
            l.first = l.first.min(step);
            l.last = l.last.max(step);
        }
        None => {
            out.insert(
                buffer.to_owned(),
                Lifetime {
                    first: step,
                    last: step,
                },
            );
        }
    };
    for (step, &id) in order.iter().enumerate() {
        let node = g.node(id);
        if matches!(node.op, Op::Input) {
            continue;
        }
        let p = node.placement.as_ref().ok_or_else(|| PlanError::Unplaced {
            node: node.name.clone(),
        })?;
        if !g.buffers.contains_key(&p.buffer) {
            return Err(PlanError::UnknownBuffer {
                node: node.name.clone(),
                buffer: p.buffer.clone(),
            });
        }
        touch(&p.buffer, step);
        if g.outputs().contains(&id) {
            touch(&p.buffer, end);
        }
        // The operands of a dense block's concatenation share one buffer: touch it once.
        let mut last: Option<&str> = None;
        for o in g.operands(id) {
            if let Some(q) = &g.node(o).placement {
                if last != Some(q.buffer.as_str()) {
                    touch(&q.buffer, step);
                    last = Some(q.buffer.as_str());
                }
            }
        }
    }
    Ok(out)
}
