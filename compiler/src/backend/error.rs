//! The error type of every backend.

use thiserror::Error;

/// Why a backend could not compile a kernel list.
#[derive(Debug, Error)]
pub enum BackendError {
    /// A kernel description is inconsistent (shapes, views, constants).
    #[error("kernel {index} `{name}`: {message}")]
    InvalidKernel {
        index: usize,
        name: String,
        message: String,
    },
    /// A planned graph node that maps to no kernel.
    #[error("node `{node}`: {message}")]
    Graph { node: String, message: String },
    /// The requested target CPU is not one LLVM knows.
    #[error("unknown CPU `{0}` (use `native` or an LLVM x86 CPU name such as `x86-64-v3`, `znver3`, `skylake`)")]
    UnknownCpu(String),
    /// The target cannot be compiled for: a CPU or precision the kernels do not support, or
    /// one LLVM could not be initialised for or rejected.
    #[error("unsupported target: {0}")]
    Target(String),
    /// Building or verifying the LLVM module failed: a bug in the lowering.
    #[error("LLVM code generation failed: {0}")]
    Codegen(String),
    /// No system linker to turn the object file into a shared object.
    #[error("no linker found: tried {tried}; install a C compiler (e.g. `apt-get install gcc`) or set DNC_CC")]
    LinkerNotFound { tried: String },
    /// The linker ran and failed.
    #[error("linking the shared object with `{linker}` failed: {stderr}")]
    LinkFailed { linker: String, stderr: String },
    /// Writing or reading a temporary file failed.
    #[error("I/O error while {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl From<inkwell::builder::BuilderError> for BackendError {
    fn from(e: inkwell::builder::BuilderError) -> Self {
        BackendError::Codegen(e.to_string())
    }
}
