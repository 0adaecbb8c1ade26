//! densenetc, the compiler: DenseNet builder, weight import, pass pipeline,
//! memory planner, backends and the `densenetc` command line.

pub mod artefact;
pub mod backend;
pub mod builder;
pub mod dot;
pub mod memory;
pub mod passes;
pub mod plan_exec;
pub mod targets;
pub mod weights;
