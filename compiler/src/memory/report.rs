//! The plan as data ([`MemoryPlan`], drawn by [`super::svg()`]) and the
//! figures `densenetc inspect --memory` prints ([`MemoryReport`]).

use super::{lifetimes, lower_bound, LowerBound, PlanError};
use ir::{Graph, Op};
use serde::Serialize;
use std::collections::BTreeMap;

/// What a buffer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BufferKind {
    /// Several values by channel slices (a dense block's in-place concat).
    Block,
    /// One value stored with a zero border.
    Bordered,
    /// One value.
    Single,
}

/// One buffer of a planned arena.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedBuffer {
    pub name: String,
    pub kind: BufferKind,
    pub offset: usize,
    pub bytes: usize,
    /// Schedule steps `first..=last`.
    pub first: usize,
    pub last: usize,
}

/// A planned arena: the schedule and every buffer's place in time and bytes.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryPlan {
    /// Node names in schedule order.
    pub schedule: Vec<String>,
    pub buffers: Vec<PlannedBuffer>,
    pub arena_bytes: usize,
    pub lower_bound_bytes: usize,
}

impl MemoryPlan {
    /// Read the plan of a graph after `plan-memory`.
    pub fn of(g: &Graph) -> Result<MemoryPlan, PlanError> {
        Ok(Self::with_bound(g)?.0)
    }

    /// [`MemoryPlan::of`] and the lower bound it quotes (computed once for both).
    fn with_bound(g: &Graph) -> Result<(MemoryPlan, LowerBound), PlanError> {
        let arena_bytes = g.arena_bytes.ok_or(PlanError::NotPlanned)?;
        let order = g.schedule()?;
        let lives = lifetimes(g, &order)?;
        // Writers per buffer, counted in one walk (not one walk per buffer).
        let mut writers_of: BTreeMap<&str, usize> = BTreeMap::new();
        for &id in &order {
            if let Some(p) = &g.node(id).placement {
                if !g.is_view(id) {
                    *writers_of.entry(p.buffer.as_str()).or_default() += 1;
                }
            }
        }
        let mut buffers = Vec::with_capacity(lives.len());
        for (name, life) in lives {
            let buf = &g.buffers[&name];
            let writers = writers_of.get(name.as_str()).copied().unwrap_or(0);
            let kind = if writers > 1 {
                BufferKind::Block
            } else if buf.border != [0, 0] {
                BufferKind::Bordered
            } else {
                BufferKind::Single
            };
            buffers.push(PlannedBuffer {
                offset: buf.offset.ok_or_else(|| PlanError::NoOffset {
                    buffer: name.clone(),
                })?,
                bytes: buf.size_bytes().ok_or_else(|| PlanError::Size {
                    buffer: name.clone(),
                })?,
                name,
                kind,
                first: life.first,
                last: life.last,
            });
        }
        buffers.sort_by(|a, b| (a.first, a.offset, &a.name).cmp(&(b.first, b.offset, &b.name)));
        let lb = lower_bound(g)?;
        let plan = MemoryPlan {
            schedule: order.iter().map(|&id| g.node(id).name.clone()).collect(),
            buffers,
            arena_bytes,
            lower_bound_bytes: lb.bytes,
        };
        Ok((plan, lb))
    }
}

/// The figures of `densenetc inspect --memory [--json]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemoryReport {
    /// Size of the one activation arena (graph inputs excluded: the caller
    /// owns them).
    pub arena_bytes: usize,
    /// Every intermediate of the unoptimised graph kept.
    pub naive_bytes: usize,
    /// Largest total of simultaneously live bytes (see
    /// [`super::lower_bound()`]); `arena_bytes >= lower_bound_bytes`.
    pub lower_bound_bytes: usize,
    /// Concatenations that copy (not views of a block buffer).
    pub concat_copies: usize,
    pub buffers: usize,
    /// Buffers written by several nodes (the in-place dense blocks).
    pub block_buffers: usize,
    /// Buffers stored with a zero border.
    pub bordered_buffers: usize,
    /// Where the lower bound is attained.
    pub peak_step: usize,
    pub peak_node: String,
}

/// The report of a planned graph; `naive_bytes` comes from the graph
/// before the passes ([`super::naive_bytes`]).
pub fn report(g: &Graph, naive_bytes: usize) -> Result<MemoryReport, PlanError> {
    let (plan, lb) = MemoryPlan::with_bound(g)?;
    let count = |k| plan.buffers.iter().filter(|b| b.kind == k).count();
    Ok(MemoryReport {
        arena_bytes: plan.arena_bytes,
        naive_bytes,
        lower_bound_bytes: lb.bytes,
        concat_copies: concat_copies(g),
        buffers: plan.buffers.len(),
        block_buffers: count(BufferKind::Block),
        bordered_buffers: count(BufferKind::Bordered),
        peak_step: lb.step,
        peak_node: lb.node,
    })
}

/// Concatenations of `g` that are not views, i.e. that copy data.
pub fn concat_copies(g: &Graph) -> usize {
    g.node_ids()
        .into_iter()
        .filter(|&id| matches!(g.node(id).op, Op::Concat) && !g.is_view(id))
        .count()
}
