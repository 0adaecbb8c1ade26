//! The generated-code ABI: the contract between the CPU shared object in an artefact and the
//! runtime that calls it. `include/densenetc_abi.h` is generated from this file.
//!
//! The shared object exports one entry symbol (named by the manifest's `cpu.entry`, by
//! convention `dnc_entry`) of type [`DncEntryFn`]:
//!
//! ```c
//! int32_t dnc_entry(const DncContext *ctx);
//! ```
//!
//! * It computes the whole network for one batch: reads `ctx->input` (the manifest's input
//!   shape, NCHW, f32), writes `ctx->output` (the manifest's output shape), and returns 0; a
//!   non-zero return is reported to the caller as a failure with that status.
//! * `weights` is the weights section (64-byte aligned, read-only, shared by every session of
//!   the model). `arena` is the session's arena of `memory.arena_bytes` bytes (64-byte
//!   aligned, zeroed when the session is created, then left as the previous run left it; only
//!   one run uses it at a time). `input` and `output` belong to the caller: only 4-byte
//!   aligned, and they may not be used after the entry returns.
//! * Parallelism: `parallel_for(pool, task, task_ctx, n)` calls `task(task_ctx, begin, end)` on
//!   disjoint ranges covering `[0, n)` exactly once, on the session's threads (the calling
//!   thread included), and returns when all have finished, with their writes visible. It may
//!   split the range into any number of contiguous pieces: a task must not assume one call
//!   per thread. `n <= 0` calls nothing. A `parallel_for` called from inside a task runs the
//!   inner range on the calling thread. `task` must not unwind.
//! * The shared object must have no undefined symbols other than libc/libm: everything it
//!   needs from the runtime comes through the context.
//!
//! [`DNC_ABI_VERSION`] is recorded in the manifest (`cpu.abi_version`); the runtime refuses
//! code built for another version. Any change to this file's types is a new version.

use std::ffi::c_void;

/// The version of this ABI; bump it whenever a type below changes.
pub const DNC_ABI_VERSION: u32 = 1;

/// One parallel task: runs the items `[begin, end)` of a parallel loop.
pub type DncTaskFn = unsafe extern "C" fn(task_ctx: *const c_void, begin: i64, end: i64);

/// The runtime's parallel-for: runs `task` over `[0, n)` on the pool `pool` and returns when
/// every item is done.
pub type DncParallelForFn =
    unsafe extern "C" fn(pool: *mut c_void, task: DncTaskFn, task_ctx: *const c_void, n: i64);

/// Everything one run of the generated code gets from the runtime.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct DncContext {
    /// The weights section (64-byte aligned, read-only).
    pub weights: *const f32,
    /// The session's activation arena (64-byte aligned, `memory.arena_bytes` bytes).
    pub arena: *mut f32,
    /// The input tensor (manifest shape, NCHW, f32; 4-byte aligned).
    pub input: *const f32,
    /// The output tensor (manifest shape, f32; 4-byte aligned).
    pub output: *mut f32,
    /// The session's thread pool; opaque, passed back to `parallel_for`.
    pub pool: *mut c_void,
    /// The runtime's parallel-for.
    pub parallel_for: DncParallelForFn,
}

/// The entry point of the generated code: 0 on success.
pub type DncEntryFn = unsafe extern "C" fn(ctx: *const DncContext) -> i32;

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{align_of, offset_of, size_of};

    /// Pins the layout the generated code relies on (x86-64 / any LP64 target).
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn context_layout_is_six_pointers() {
        assert_eq!(size_of::<DncContext>(), 48);
        assert_eq!(align_of::<DncContext>(), 8);
        assert_eq!(offset_of!(DncContext, weights), 0);
        assert_eq!(offset_of!(DncContext, arena), 8);
        assert_eq!(offset_of!(DncContext, input), 16);
        assert_eq!(offset_of!(DncContext, output), 24);
        assert_eq!(offset_of!(DncContext, pool), 32);
        assert_eq!(offset_of!(DncContext, parallel_for), 40);
    }
}
