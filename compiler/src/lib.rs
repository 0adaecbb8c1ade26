//! densenetc, the compiler: DenseNet builder, weight import, pass pipeline,
//! memory planner, backends and the `densenetc` command line.
//!
//! [`compile`] is the entry point every front end calls (see [`driver`]).

pub mod artefact;
pub mod backend;
pub mod builder;
pub mod dot;
pub mod driver;
pub mod error;
pub mod head;
pub mod limits;
pub mod memory;
pub mod passes;
pub mod plan_exec;
pub mod targets;
pub mod weights;

pub use driver::{
    compile, compile_graph, CompileError, CompileOptions, Compiled, OptimizeOptions, Target,
    Weights,
};
