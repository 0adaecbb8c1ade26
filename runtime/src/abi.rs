//! The generated-code ABI: the contract between the CPU shared object in an artefact and the
//! runtime that calls it. It mirrors the compiler's CPU backend (`compiler::backend::cpu`,
//! "Generated-code ABI"); `include/densenetc_abi.h` is generated from this file.
//!
//! ```c
//! void    dnc_run(const DncContext *ctx);                    /* every kernel, in order       */
//! int32_t dnc_run_kernel(const DncContext *ctx, int64_t i);  /* one kernel: 0, or -1: bad i  */
//! int32_t dnc_abi_version(void);                             /* DNC_ABI_VERSION              */
//! int64_t dnc_kernel_count(void);
//! int64_t dnc_kernel_tasks(int64_t i);                       /* -1: bad i                    */
//! ```
//!
//! * The code reads and writes only the weights and the arena. The model's input and output
//!   live in the arena, at the NHWC views the manifest records (`input.view`, `output.view`):
//!   the runtime copies the caller's NCHW input into the input view before `dnc_run` and the
//!   output view out afterwards.
//! * `weights` is the weights section (64-byte aligned, read-only, shared by every session of
//!   the model). `arena` is the session's arena of `memory.arena_bytes` bytes (64-byte aligned,
//!   zeroed when the session is created, then left as the previous run left it).
//! * Parallelism: for each kernel the code calls `parallel_for(pool, task, ctx, n)` once. The
//!   runtime calls `task(ctx, begin, end)` on ranges that together cover `[0, n)` exactly
//!   once, in any order, from any of the session's threads (the caller's included), possibly
//!   concurrently, and returns only when all calls have returned. It may split the range into
//!   any number of pieces: a task must not assume one call per thread. `n <= 0` calls nothing;
//!   a `parallel_for` from inside a task runs inline. Worker threads have 8 MiB of stack (the
//!   backend's tasks need at most 384 KiB of scratch). `task` must not unwind.
//! * The object references nothing of the runtime (it is linked with `-z defs`; libc only).
//!
//! [`DNC_ABI_VERSION`] is recorded in the manifest (`cpu.abi_version`) and returned by
//! `dnc_abi_version()`; the runtime refuses code for another version. Any change to the types
//! or symbols below is a new version.

use std::ffi::c_void;

/// The version of this ABI; bump it whenever a type or symbol below changes.
pub const DNC_ABI_VERSION: u32 = 1;

/// The symbols the shared object exports.
pub mod symbols {
    /// `void dnc_run(const DncContext *ctx)`: [`super::DncRunFn`].
    pub const RUN: &str = "dnc_run";
    /// `int32_t dnc_run_kernel(const DncContext *ctx, int64_t i)`: [`super::DncRunKernelFn`].
    pub const RUN_KERNEL: &str = "dnc_run_kernel";
    /// `int32_t dnc_abi_version(void)`: [`super::DncAbiVersionFn`].
    pub const ABI_VERSION: &str = "dnc_abi_version";
    /// `int64_t dnc_kernel_count(void)`: [`super::DncKernelCountFn`].
    pub const KERNEL_COUNT: &str = "dnc_kernel_count";
    /// `int64_t dnc_kernel_tasks(int64_t i)`: [`super::DncKernelTasksFn`].
    pub const KERNEL_TASKS: &str = "dnc_kernel_tasks";
}

/// The index of each [`DncContext`] field, for code generators that address the context as a
/// struct of pointer-sized fields (the CPU backend's LLVM `struct dnc_ctx`). C code uses the
/// struct's field names instead.
///
/// cbindgen:ignore
pub mod context_field {
    /// [`super::DncContext::weights`].
    pub const WEIGHTS: u32 = 0;
    /// [`super::DncContext::arena`].
    pub const ARENA: u32 = 1;
    /// [`super::DncContext::parallel_for`].
    pub const PARALLEL_FOR: u32 = 2;
    /// [`super::DncContext::pool`].
    pub const POOL: u32 = 3;
    /// The number of fields; every field is one pointer.
    pub const COUNT: u32 = 4;
}

/// One kernel's task function: runs its tasks `[begin, end)`.
pub type DncTaskFn = unsafe extern "C" fn(ctx: *const DncContext, begin: i64, end: i64);

/// The runtime's parallel-for: runs `task(ctx, ·, ·)` over `[0, n)` on the pool `pool` and
/// returns when every task is done.
pub type DncParallelForFn =
    unsafe extern "C" fn(pool: *mut c_void, task: DncTaskFn, ctx: *const DncContext, n: i64);

/// Everything the generated code gets from the runtime.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct DncContext {
    /// The weights section (64-byte aligned, read-only).
    pub weights: *const f32,
    /// The session's activation arena (64-byte aligned, `memory.arena_bytes` bytes).
    pub arena: *mut f32,
    /// The runtime's parallel-for.
    pub parallel_for: DncParallelForFn,
    /// The session's thread pool; opaque, passed back to `parallel_for`.
    pub pool: *mut c_void,
}

/// `dnc_run`: every kernel, in order.
pub type DncRunFn = unsafe extern "C" fn(ctx: *const DncContext);
/// `dnc_run_kernel`: kernel `index` alone; 0, or -1 for a bad index.
pub type DncRunKernelFn = unsafe extern "C" fn(ctx: *const DncContext, index: i64) -> i32;
/// `dnc_abi_version`: the ABI version the code was generated for.
pub type DncAbiVersionFn = unsafe extern "C" fn() -> i32;
/// `dnc_kernel_count`: the number of kernels `dnc_run` runs.
pub type DncKernelCountFn = unsafe extern "C" fn() -> i64;
/// `dnc_kernel_tasks`: the task count of kernel `index`, or -1 for a bad index.
pub type DncKernelTasksFn = unsafe extern "C" fn(index: i64) -> i64;

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{align_of, offset_of, size_of};

    /// Pins the layout the generated code relies on (x86-64 / any LP64 target): pointers, at
    /// the indices of [`context_field`], which the backend's `struct dnc_ctx` is built from.
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn context_layout_is_four_pointers_at_their_field_indices() {
        let at = |field: u32| field as usize * size_of::<*const f32>();
        assert_eq!(size_of::<DncContext>(), at(context_field::COUNT));
        assert_eq!(align_of::<DncContext>(), 8);
        assert_eq!(offset_of!(DncContext, weights), at(context_field::WEIGHTS));
        assert_eq!(offset_of!(DncContext, arena), at(context_field::ARENA));
        assert_eq!(
            offset_of!(DncContext, parallel_for),
            at(context_field::PARALLEL_FOR)
        );
        assert_eq!(offset_of!(DncContext, pool), at(context_field::POOL));
    }
}
