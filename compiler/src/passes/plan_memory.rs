//! `plan-memory`: one arena for every activation, each buffer at a byte
//! offset (stages in [`crate::memory`]).
//!
//! Gives every value not in a block buffer a buffer of its own (zero
//! bordered when only padded convs without a prologue read it), computes
//! lifetimes over the schedule, packs buffers greedily by size with best
//! fit, writes the offsets and `arena_bytes` into the graph, and checks that
//! no two buffers live at one step overlap.
//!
//! Guarantees: values unchanged; afterwards every non-input node is placed
//! and the plan is valid for `Graph::schedule`. Re-running on a planned
//! graph re-packs the same buffers to the same offsets (reports no change).

use super::{Pass, PassError};
use ir::Graph;

#[derive(Debug, Clone, Copy)]
pub struct PlanMemory;

impl PlanMemory {
    pub const NAME: &'static str = "plan-memory";
}

impl Pass for PlanMemory {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn run(&self, g: &mut Graph) -> Result<bool, PassError> {
        let before = (g.buffers.clone(), g.arena_bytes);
        crate::memory::plan(g)?;
        Ok((g.buffers.clone(), g.arena_bytes) != before)
    }
}
