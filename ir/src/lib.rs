//! The typed graph IR of densenetc.
//!
//! A [`Graph`] is a DAG of [`Node`]s (petgraph) whose values are tensors in
//! *logical* NCHW layout with PyTorch semantics; weights are named
//! [`Constant`]s referenced by the ops that use them. The crate knows nothing
//! of LLVM or CUDA: it holds the op definitions (one shape rule each), the
//! verifier, the deterministic text form and the reference executor that
//! every pass and backend is checked against.

pub mod constant;
pub mod error;
pub mod graph;
pub mod ops;
pub mod reference;
pub mod stats;
pub mod text;
pub mod types;
pub mod verify;

pub use constant::Constant;
pub use error::IrError;
pub use graph::{Buffer, Graph, Node, NodeId, Placement};
pub use ops::{Conv2d, Head, Linear, Op, Pool2d, Prologue};
pub use types::{DType, TensorType};
