//! The CUDA executor: replays an artefact's launch table ([`crate::artefact::CudaTarget`]) on a
//! CUDA device through cudarc's driver API, loaded at run time.
//!
//! ```text
//! Model ──(first session on device d)──▶ DeviceModel: context, module (cubin if it matches
//!                                        the device, else the PTX, JIT-compiled), functions,
//!                                        device weights uploaded once, shared by sessions
//! Session ──▶ CudaSession: own stream, own device arena (memory.arena_bytes, zeroed once)
//!   run: input (NCHW) ─host NHWC staging─▶ arena view ─▶ launches in table order ─▶
//!        output view ─▶ host ─▶ NC logits
//! ```
//!
//! The first run launches the table one kernel at a time; the second captures the launches
//! into a CUDA graph and every run from then on replays it (the pointers and every offset are
//! fixed per session, so the graph stays valid). `DNC_CUDA_GRAPHS=0` in the environment, or
//! [`crate::Session::set_cuda_graphs`], turns that off.
//!
//! Nothing here runs unless [`driver::probe`] found the driver library first: cudarc panics
//! when it is missing. Every cudarc call also runs under [`driver::guarded`].
//!
//! The executor (`executor.rs`) is the default-on `cuda` cargo feature, the only user of
//! cudarc. Without it (`--no-default-features`) `stub.rs` stands in with the same
//! crate-internal types, uninhabited, so `Model` and `Session` keep one code path and the same
//! public API, and [`driver::probe`] (which a CUDA session calls before the executor) reports
//! [`crate::Error::DeviceUnavailable`]: the runtime was built without CUDA support.

pub mod driver;

#[cfg(feature = "cuda")]
mod executor;
#[cfg(not(feature = "cuda"))]
mod stub;

#[cfg(feature = "cuda")]
pub(crate) use executor::{CudaSession, DeviceModel};
#[cfg(not(feature = "cuda"))]
pub(crate) use stub::{CudaSession, DeviceModel};
