//! The CPU backend, one test binary (`cargo test -p compiler --test cpu`):
//! kernel by kernel against the reference executor (`kernels`), whole
//! memory-planned DenseNets (`kernels_graph`) and the throughput
//! measurements, ignored by default (`kernels_bench`), the bf16 kernels against an emulation of
//! their rounding (`bf16`), over the shared
//! `support` (load a compiled shared object, arenas, parallel-fors).

mod bf16;
mod isa_level;
mod kernels;
mod kernels_bench;
mod kernels_graph;
mod prefetch;
mod spills;
mod support;
