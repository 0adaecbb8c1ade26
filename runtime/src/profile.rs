//! Per-kernel timings: the vocabulary [`crate::Session::run_profiled`] shares with both
//! executors (the CPU one in `model`, the CUDA one in `cuda`), kept here so that neither has
//! to import the other.

/// The time one kernel took in [`crate::Session::run_profiled`].
#[derive(Debug, Clone, PartialEq)]
pub struct KernelTime {
    /// The kernel's index in the schedule (`manifest.schedule[index]` names it).
    pub index: usize,
    /// The tasks it was split into (thread blocks on CUDA).
    pub tasks: i64,
    /// Wall time in seconds.
    pub seconds: f64,
}
