//! The runtime's error types: [`ArtefactError`] for everything wrong with the bytes of an
//! artefact, [`Error`] for everything else (I/O, devices, shapes, execution).

use std::path::PathBuf;

use thiserror::Error;

/// Why the bytes of an artefact were rejected. Every check runs before anything is mapped or
/// executed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ArtefactError {
    /// The file ends before the header, the section table or a section does.
    #[error("truncated artefact: {0}")]
    Truncated(String),
    /// The first eight bytes are not the densenetc magic.
    #[error("not a densenetc artefact (bad magic)")]
    BadMagic,
    /// A format this runtime does not read (older or newer than it).
    #[error("unsupported format version {found} (this runtime reads {supported})")]
    UnsupportedVersion { found: u32, supported: u32 },
    /// The header's own checksum does not match its bytes.
    #[error("header checksum mismatch")]
    HeaderChecksum,
    /// The section table's checksum (stored in the header) does not match it.
    #[error("section table checksum mismatch")]
    TableChecksum,
    /// A section's bytes do not match the checksum in the section table.
    #[error("section '{0}' checksum mismatch")]
    SectionChecksum(&'static str),
    /// The layout is inconsistent: a section out of bounds, misaligned, overlapping another,
    /// of an unknown kind, repeated, non-zero padding, bytes after the last section.
    #[error("malformed artefact: {0}")]
    Malformed(String),
    /// A section the manifest requires is absent.
    #[error("section '{0}' missing")]
    MissingSection(&'static str),
    /// The manifest is not valid JSON for this format, or contradicts itself or the sections.
    #[error("manifest invalid: {0}")]
    ManifestInvalid(String),
}

/// Everything that can go wrong loading a model, creating a session or running it.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// The artefact file could not be read (or written, for the writer).
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The artefact's bytes were rejected.
    #[error(transparent)]
    Artefact(#[from] ArtefactError),
    /// A tensor's shape differs from the one the model was compiled for.
    #[error("{what} shape mismatch: expected {expected:?}, found {found:?}")]
    ShapeMismatch {
        what: &'static str,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// A buffer's length differs from the element count of the model's shape.
    #[error("{what} has {found} elements, expected {expected} (shape {shape:?})")]
    LengthMismatch {
        what: &'static str,
        expected: usize,
        found: usize,
        shape: Vec<usize>,
    },
    /// The device asked for cannot be used (no support compiled in, no driver, no code for it).
    #[error("device unavailable: {0}")]
    DeviceUnavailable(String),
    /// The artefact's CPU shared object could not be loaded or lacks its entry symbol.
    #[error("cannot load the artefact's CPU code: {0}")]
    Library(String),
    /// The artefact's CPU code speaks another version of the generated-code ABI.
    #[error("the artefact's CPU code uses ABI version {found}; this runtime speaks {supported}")]
    AbiVersion { found: u32, supported: u32 },
    /// A CUDA driver call failed (`what` the runtime was doing).
    #[error("CUDA: {what}: {message}")]
    Cuda { what: &'static str, message: String },
    /// The generated code reported a failure.
    #[error("generated code returned status {0}")]
    Execution(i32),
    /// A buffer (the session arena, the artefact) could not be allocated.
    #[error("cannot allocate {bytes} bytes for the {what}")]
    OutOfMemory { what: &'static str, bytes: usize },
    /// An argument is out of range (e.g. an absurd thread count).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// An input file (a `.npy` tensor, an image) could not be decoded or does not fit the model.
    #[error("{path}: {reason}")]
    Input { path: PathBuf, reason: String },
    /// The session's worker threads could not be started.
    #[error("cannot start the thread pool: {0}")]
    ThreadPool(#[source] std::io::Error),
}

/// The runtime's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
