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
    let mut touch = |buffer: &str, step: usize| {
        out.entry(buffer.to_owned())
            .and_modify(|l| {
                l.first = l.first.min(step);
                l.last = l.last.max(step);
            })
            .or_insert(Lifetime {
                first: step,
                last: step,
            });
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
        for o in g.operands(id) {
            if let Some(q) = &g.node(o).placement {
                touch(&q.buffer, step);
            }
        }
    }
    Ok(out)
}
