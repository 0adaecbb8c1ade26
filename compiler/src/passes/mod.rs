//! The optimisation pipeline: named passes over an [`ir::Graph`], run in one
//! declared order, with the verifier after each pass.
//!
//! ```text
//! ir::Graph (as built: BN, ReLU and concat nodes, logical NCHW)
//!   → [fold-batchnorm] → [fuse-preactivation] → [fuse-epilogue]
//!   → [reorder-transition] → [concat-in-place] → [plan-memory]
//!   → ir::Graph (fused convs and pools, block buffers, one planned arena)
//! ```
//!
//! A pass is a unit struct in its own file whose `//!` comment is its
//! contract. Local rewrites are [`rewrite::Rule`]s applied by one driver;
//! the two global passes (concat placement, memory planning) walk the graph
//! themselves. [`PASSES`] is the registry of names the command line checks.

mod affine;
mod concat_in_place;
mod fold_batchnorm;
mod fuse_epilogue;
mod fuse_preactivation;
mod plan_memory;
mod reorder_transition;
pub mod rewrite;

pub use concat_in_place::ConcatInPlace;
pub use fold_batchnorm::FoldBatchNorm;
pub use fuse_epilogue::FuseEpilogue;
pub use fuse_preactivation::FusePreactivation;
pub use plan_memory::PlanMemory;
pub use reorder_transition::ReorderTransition;

use crate::memory::{self, MemoryReport, PlanError};
use ir::stats::{stats, GraphStats};
use ir::{Graph, IrError};
use serde::Serialize;
use std::fmt;
use thiserror::Error;

/// One optimisation pass.
pub trait Pass: Sync {
    /// The registry name (`fold-batchnorm`, …), as the command line spells it.
    fn name(&self) -> &'static str;
    /// Rewrite `g`; returns whether anything changed.
    fn run(&self, g: &mut Graph) -> Result<bool, PassError>;
}

/// Declares the pipeline once: the order of [`PIPELINE`] and the names in
/// [`PASSES`] come from the same list.
macro_rules! declare_pipeline {
    ($($pass:ident),* $(,)?) => {
        /// The names of the passes, in pipeline order.
        pub const PASSES: &[&str] = &[$($pass::NAME),*];
        /// The passes, in pipeline order.
        pub static PIPELINE: &[&dyn Pass] = &[$(&$pass),*];
    };
}

declare_pipeline! {
    // First: a BN right after a conv is free once folded into the weights;
    // later passes would otherwise turn it into a prologue.
    FoldBatchNorm,
    // After fold-batchnorm, so the BN(+ReLU) pairs left are pre-activations.
    FusePreactivation,
    // After fold-batchnorm (a conv's ReLU follows its BN until the BN is
    // folded) and after fuse-preactivation (a ReLU after a BN that could not
    // become a prologue then follows a ChannelAffine it can fuse into).
    FuseEpilogue,
    // After both fusions: the transition's BN+ReLU must already be the conv's
    // prologue (it moves onto the pool) and a ReLU epilogue blocks the swap.
    ReorderTransition,
    // After every rewrite: it places the final producers, and the fusions
    // leave each layer reading the block buffer directly.
    ConcatInPlace,
    // Last: it needs the final set of tensors and the block buffers.
    PlanMemory,
}

/// Errors of the pass pipeline.
#[derive(Debug, Error)]
pub enum PassError {
    #[error("unknown pass `{name}`; valid passes: {valid}")]
    UnknownPass { name: String, valid: String },
    #[error("the graph is invalid before the first pass: {error}\n{ir}")]
    InvalidInput { error: IrError, ir: String },
    #[error("the graph is invalid after pass `{pass}`: {error}\n{ir}")]
    Verify {
        pass: &'static str,
        error: IrError,
        ir: String,
    },
    #[error("node `{node}`: {message}")]
    Constants { node: String, message: String },
    #[error("rewrites did not settle after {sweeps} sweeps (still firing: {rules})")]
    NoFixpoint { sweeps: usize, rules: String },
    #[error("pass `{pass}`: {source}")]
    InPass {
        pass: &'static str,
        #[source]
        source: Box<PassError>,
    },
    #[error(transparent)]
    Ir(#[from] IrError),
    #[error(transparent)]
    Plan(#[from] PlanError),
}

/// Check that `name` is a registered pass (for `--stop-after` / `--after`).
pub fn check_pass_name(name: &str) -> Result<usize, PassError> {
    PASSES
        .iter()
        .position(|&p| p == name)
        .ok_or_else(|| PassError::UnknownPass {
            name: name.to_owned(),
            valid: PASSES.join(", "),
        })
}

/// The dump callback: `(index from 1, pass name, graph after the pass)`,
/// e.g. for `NN-after-<pass>.ir` files.
pub type DumpFn<'a> = &'a mut dyn FnMut(usize, &str, &Graph);

/// How to run the pipeline.
pub struct PipelineOptions<'a> {
    /// Stop after this pass (a name from [`PASSES`]).
    pub stop_after: Option<String>,
    /// Called after every pass that ran.
    pub dump: Option<DumpFn<'a>>,
    /// Verify the graph before the first pass and after every pass (and,
    /// after `plan-memory`, that no two live buffers overlap). On by
    /// default: it costs well under 1% of a compile.
    pub verify: bool,
}

impl Default for PipelineOptions<'_> {
    fn default() -> Self {
        PipelineOptions {
            stop_after: None,
            dump: None,
            verify: true,
        }
    }
}

impl fmt::Debug for PipelineOptions<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PipelineOptions")
            .field("stop_after", &self.stop_after)
            .field("dump", &self.dump.is_some())
            .field("verify", &self.verify)
            .finish()
    }
}

/// What one pass did.
#[derive(Debug, Clone, Serialize)]
pub struct PassRun {
    pub name: &'static str,
    pub changed: bool,
    /// Nodes in the graph after the pass.
    pub nodes: usize,
}

/// What the pipeline did.
#[derive(Debug, Clone, Serialize)]
pub struct PipelineReport {
    pub passes: Vec<PassRun>,
    /// Statistics of the graph as given (`macs` there is the model's).
    pub stats_before: GraphStats,
    /// Statistics after the last pass that ran.
    pub stats_after: GraphStats,
    /// Every intermediate of the graph as given kept (see
    /// [`memory::naive_bytes`]).
    pub naive_bytes: usize,
    /// The memory figures, when `plan-memory` ran.
    pub memory: Option<MemoryReport>,
}

impl PipelineReport {
    /// MACs after the passes (the transition reorder shows here).
    pub fn macs_optimized(&self) -> u64 {
        self.stats_after.macs
    }
}

/// Run the pipeline on `g` (in place).
pub fn run_pipeline(
    g: &mut Graph,
    opts: &mut PipelineOptions<'_>,
) -> Result<PipelineReport, PassError> {
    let last = match &opts.stop_after {
        Some(name) => check_pass_name(name)?,
        None => PIPELINE.len() - 1,
    };
    if opts.verify {
        ir::verify::verify(g).map_err(|error| PassError::InvalidInput {
            ir: render_error(g, &error),
            error,
        })?;
    }
    let stats_before = stats(g);
    let naive_bytes = memory::naive_bytes(g);
    let mut passes = Vec::new();
    for (i, pass) in PIPELINE.iter().enumerate().take(last + 1) {
        let changed = pass.run(g).map_err(|e| PassError::InPass {
            pass: pass.name(),
            source: Box::new(e),
        })?;
        if opts.verify {
            verify_after(g, pass.name())?;
        }
        passes.push(PassRun {
            name: pass.name(),
            changed,
            nodes: g.node_count(),
        });
        if let Some(dump) = opts.dump.as_mut() {
            dump(i + 1, pass.name(), g);
        }
    }
    let memory = match g.arena_bytes {
        Some(_) => Some(memory::report(g, naive_bytes)?),
        None => None,
    };
    Ok(PipelineReport {
        passes,
        stats_before,
        stats_after: stats(g),
        naive_bytes,
        memory,
    })
}

/// Run the whole pipeline with default options except `verify`.
pub fn optimize(g: &mut Graph, verify: bool) -> Result<PipelineReport, PassError> {
    run_pipeline(
        g,
        &mut PipelineOptions {
            verify,
            ..Default::default()
        },
    )
}

/// The verifier, plus the arena check once memory is planned.
fn verify_after(g: &Graph, pass: &'static str) -> Result<(), PassError> {
    let error = match ir::verify::verify(g) {
        Ok(()) if g.arena_bytes.is_some() => match memory::check(g) {
            Ok(()) => return Ok(()),
            Err(e) => e.into_ir_error(),
        },
        Ok(()) => return Ok(()),
        Err(e) => e,
    };
    Err(PassError::Verify {
        pass,
        ir: render_error(g, &error),
        error,
    })
}

/// The IR with the node an error names marked.
pub fn render_error(g: &Graph, error: &IrError) -> String {
    ir::text::print_with_error(g, error)
}
