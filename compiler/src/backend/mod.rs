//! Backends: from a list of backend-neutral kernel descriptions
//! ([`kernel::KernelDesc`]) to executable code.
//!
//! The integration layer maps each planned graph node to one kernel
//! description (op, constants, input and output views into the arena); each
//! backend lowers the same descriptions. Today there is one: [`cpu`], native
//! code through LLVM.

pub mod cpu;
pub mod cuda;
mod error;
pub mod graph;
pub mod kernel;
pub mod precision;
mod view;
pub(crate) mod weights;

pub use error::BackendError;
