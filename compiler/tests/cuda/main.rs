//! The CUDA backend without a GPU, one test binary
//! (`cargo test -p compiler --test cuda`): every kernel kind lowered to PTX
//! and run by the emulator, ptxas and the PTX snapshots in `snapshots/`
//! (`ptx`), the tensor-core precisions (`mma`), shared-memory bank conflicts
//! (`banks`), the artefact's launch table (`artefact`) and the output heads
//! on whole networks and edge rows (`heads`), over the shared
//! `support` (one-op cases, host arenas, the ptxas lookup).

/// The CPU tests' support module, for its `Rng` and `constant` (the rest,
/// loading CPU shared objects, is unused here).
#[allow(dead_code)]
#[path = "../cpu/support.rs"]
mod cpu_support;

mod artefact;
mod banks;
mod heads;
mod mma;
mod ptx;
mod support;
