//! The densenetc runtime: loads an artefact written by `densenetc compile` and runs it.
//!
//! ```no_run
//! use runtime::{Device, Model};
//! # fn main() -> Result<(), runtime::Error> {
//! let model = Model::load("densenet121.dnc")?;
//! let mut session = model.session(Device::Cpu { threads: 2 })?;
//! let input = vec![0.0f32; model.input_shape().iter().product()];
//! let logits = session.run(&input, model.input_shape())?;
//! # let _ = logits; Ok(()) }
//! ```
//!
//! * [`artefact`]: the file format, its reader ([`Artefact`]) and writer ([`ArtefactWriter`]).
//! * [`Model`], [`Session`], [`Device`]: the Rust API.
//! * [`abi`]: the contract with the generated code (context struct, parallel-for).
//! * [`ffi`]: the C API (`include/densenetc.h`), which the `densenetc-capi` package (`capi/`)
//!   builds into the C library `libdensenetc` (`-ldensenetc`).
//! * [`cuda`]: the CUDA executor, the default-on `cuda` cargo feature (without it CUDA sessions
//!   report [`Error::DeviceUnavailable`]: built without CUDA support).
//! * [`preprocess`]: model inputs from files: `.npy` tensors ([`npy`]) and, with the default
//!   `image` feature, PNG/JPEG images preprocessed as torchvision's ImageNet eval transform.
//!
//! # Trust
//!
//! An artefact contains native code that runs in the calling process with its full rights:
//! trust an artefact exactly as you would trust a shared library you `dlopen`. The loader
//! checks the magic, the format version, every offset and length, and an XXH64 checksum of the
//! header, the section table and every section before anything is mapped or executed, so a
//! truncated, corrupted or foreign file is an error, never a crash. Those checksums detect
//! accidents, not an adversary, who can simply recompute them.
//!
//! The runtime never links LLVM and needs no CUDA installation to build or run.

#[cfg(not(unix))]
compile_error!("the densenetc runtime needs a Unix dynamic loader (dlopen)");

pub mod abi;
mod aligned;
pub mod artefact;
mod binding;
mod cpu_features;
pub use cpu_features::{host_has_amx, level_extensions};
pub mod cuda;
mod error;
pub mod ffi;
pub mod hash;
mod library;
mod model;
pub mod npy;
mod pool;
pub mod preprocess;
mod profile;
pub mod system;

pub use aligned::ALIGN;
pub use artefact::{Artefact, ArtefactWriter, Manifest, SectionKind};
pub use error::{ArtefactError, Error, Result};
pub use model::{Device, Model, Session};
pub use pool::MAX_THREADS;
pub use profile::KernelTime;
