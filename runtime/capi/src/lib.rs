//! `libdensenetc`: the C library (`-ldensenetc`; cdylib and staticlib) of the densenetc
//! runtime. The C API itself, `dnc_*`, lives in the runtime (`runtime::ffi`, header
//! `runtime/include/densenetc.h`); this crate only links it into a C library under that name,
//! so that the Rust crate keeps its own (`runtime`).
//!
//! Re-exporting the module makes the runtime a linked dependency; rustc then exports every
//! upstream `#[no_mangle] extern "C"` function from the cdylib (and keeps it in the staticlib).
//! `runtime/tests/c_api.rs` checks that each function of the header is exported.

pub use runtime::ffi::*;
