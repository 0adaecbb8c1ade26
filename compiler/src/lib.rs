//! densenetc, the compiler: DenseNet builder, weight import, pass pipeline,
//! memory planner, backends and the `densenetc` command line.

pub mod backend;
pub mod builder;
