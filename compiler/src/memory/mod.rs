//! Static memory planning: every activation of the optimised graph in one
//! arena, each buffer at a byte offset.
//!
//! Stages (after TVM's `static_plan_block_memory`), run by the
//! `plan-memory` pass through [`plan`]:
//! 1. **Storage** ([`storage`]): every non-input value gets a buffer — the
//!    block buffer `concat-in-place` put it in, or one of its own. A value
//!    read only by padded convs without a prologue (the bottleneck output
//!    before the 3x3 conv) gets a zero border as wide as that padding.
//! 2. **Lifetimes** ([`liveness`]): over the schedule
//!    ([`ir::Graph::schedule`]), a buffer is live from the step of its first
//!    writer to the step of its last reader, both inclusive (an op's
//!    operands and result are live together); graph outputs to the end.
//!    A block buffer is one allocation live for its whole block.
//! 3. **Assignment** ([`assign`]): greedy by size with best fit — largest
//!    buffer first, into the smallest gap left by the already placed
//!    buffers whose lifetimes overlap it, else on top — with offsets and
//!    sizes rounded up to [`ALIGN`] bytes.
//! 4. **Rewrite**: offsets into [`ir::Graph::buffers`], the arena size into
//!    [`ir::Graph::arena_bytes`].
//!
//! [`check`] then proves no two buffers live at one step share a byte, and
//! [`lower_bound()`] — the largest total of bytes live at one step, computed
//! per value without looking at offsets — is what the arena is compared
//! with. Graph inputs are the caller's and take no arena space (nor count
//! in the bound); graph outputs live in the arena.

pub mod assign;
pub mod liveness;
pub mod lower_bound;
pub mod report;
pub mod storage;
pub mod svg;

pub use liveness::{lifetimes, Lifetime};
pub use lower_bound::{lower_bound, LowerBound};
pub use report::{concat_copies, report, MemoryPlan, MemoryReport, PlannedBuffer};
pub use svg::{svg, svg_of};

use ir::{Graph, IrError, Op};
use thiserror::Error;

/// Alignment of every buffer in the arena, in bytes (a cache line, and a
/// full AVX-512 vector).
pub const ALIGN: usize = 64;

#[derive(Debug, Error, Clone, PartialEq)]
pub enum PlanError {
    #[error("node `{node}` has no placement (run storage assignment first)")]
    Unplaced { node: String },
    #[error("node `{node}` is placed in undeclared buffer `{buffer}`")]
    UnknownBuffer { node: String, buffer: String },
    #[error("buffer `{buffer}`: its size overflows")]
    Size { buffer: String },
    #[error("memory is not planned: the graph has no arena")]
    NotPlanned,
    #[error("buffer `{buffer}` has no arena offset")]
    NoOffset { buffer: String },
    #[error(
        "buffers `{a}` and `{b}` are both live at step {step} (node `{node}`) \
         and share arena bytes {start}..{end}"
    )]
    Overlap {
        a: String,
        b: String,
        step: usize,
        node: String,
        start: usize,
        end: usize,
    },
    #[error("buffer `{buffer}` ({bytes} bytes at {offset}) exceeds the {arena}-byte arena")]
    OutOfArena {
        buffer: String,
        offset: usize,
        bytes: usize,
        arena: usize,
    },
    #[error(transparent)]
    Ir(#[from] IrError),
}

impl PlanError {
    /// The error as an IR error naming the node it is about, so the
    /// pipeline can print the IR with that node marked.
    pub fn into_ir_error(self) -> IrError {
        match self {
            PlanError::Ir(e) => e,
            PlanError::Unplaced { ref node }
            | PlanError::UnknownBuffer { ref node, .. }
            | PlanError::Overlap { ref node, .. } => IrError::node(node.clone(), self.to_string()),
            other => IrError::Graph(other.to_string()),
        }
    }
}

/// Bytes of every intermediate kept: the sum of the sizes of all non-input
/// node values of `g` (call it on the graph before the passes).
pub fn naive_bytes(g: &Graph) -> usize {
    g.node_ids()
        .into_iter()
        .map(|id| g.node(id))
        .filter(|n| !matches!(n.op, Op::Input))
        .map(|n| n.ty.size_bytes().unwrap_or(usize::MAX))
        .fold(0usize, usize::saturating_add)
}

/// Plan `g`'s memory (stages 1–4 above) and check the result.
pub fn plan(g: &mut Graph) -> Result<(), PlanError> {
    storage::assign_storage(g);
    let order = g.schedule()?;
    let lives = lifetimes(g, &order)?;
    let mut items = Vec::with_capacity(lives.len());
    for (name, life) in &lives {
        let buf = &g.buffers[name];
        let bytes = buf.size_bytes().ok_or_else(|| PlanError::Size {
            buffer: name.clone(),
        })?;
        items.push(assign::Item {
            name: name.clone(),
            bytes,
            life: *life,
        });
    }
    let (offsets, arena) = assign::greedy_by_size(&items);
    for (name, offset) in offsets {
        if let Some(b) = g.buffers.get_mut(&name) {
            b.offset = Some(offset);
        }
    }
    g.arena_bytes = Some(arena);
    check(g)
}

/// Check a planned graph: every buffer has an offset inside the arena, and
/// no two buffers that are live at the same step share a byte.
pub fn check(g: &Graph) -> Result<(), PlanError> {
    let arena = g.arena_bytes.ok_or(PlanError::NotPlanned)?;
    let order = g.schedule()?;
    let lives = lifetimes(g, &order)?;
    let mut spans = Vec::with_capacity(lives.len());
    for (name, life) in &lives {
        let buf = &g.buffers[name];
        let offset = buf.offset.ok_or_else(|| PlanError::NoOffset {
            buffer: name.clone(),
        })?;
        let bytes = buf.size_bytes().ok_or_else(|| PlanError::Size {
            buffer: name.clone(),
        })?;
        if offset.checked_add(bytes).is_none_or(|e| e > arena) {
            return Err(PlanError::OutOfArena {
                buffer: name.clone(),
                offset,
                bytes,
                arena,
            });
        }
        spans.push((name, *life, offset, offset + bytes));
    }
    for (i, a) in spans.iter().enumerate() {
        for b in &spans[i + 1..] {
            let start = a.2.max(b.2);
            let end = a.3.min(b.3);
            if a.1.overlaps(&b.1) && start < end {
                let step = a.1.first.max(b.1.first);
                return Err(PlanError::Overlap {
                    a: a.0.clone(),
                    b: b.0.clone(),
                    step,
                    node: g.node(order[step]).name.clone(),
                    start,
                    end,
                });
            }
        }
    }
    Ok(())
}
