//! The artefact: one file holding everything needed to run a compiled DenseNet.
//!
//! A fixed header (magic, format version, file length, header checksum), a section table, and
//! 64-byte-aligned sections, each with a kind, offset, length and XXH64 checksum: the manifest
//! (JSON, [`Manifest`]), the packed weights, the CPU shared object, PTX, an optional cubin. The
//! byte layout is drawn in [`mod@format`].
//!
//! [`Artefact::read`] and [`Artefact::open`] validate the magic, the version, every offset and
//! length (checked arithmetic against the file length, before any allocation that depends on
//! them) and every checksum before returning; nothing in an artefact is mapped or executed
//! before that. The checksums detect corruption, not tampering: an artefact holds native code
//! and must be trusted like a shared library.
//!
//! [`ArtefactWriter`] (used by the compiler) writes the same format.

mod cuda;
pub mod format;
mod manifest;
mod reader;
mod writer;

use std::io::Read;
use std::path::Path;

pub use cuda::{
    ptx_entries, ByteRange, CudaArg, CudaLaunch, CUDA_LAUNCH_VERSION, CUDA_MAX_SCALAR,
    CUDA_PRECISIONS, CUDA_WEIGHTS_ALIGN, MAX_SHARED, MAX_STATIC_SHARED,
};
pub use format::{SectionKind, FORMAT_VERSION, MAGIC};
pub use manifest::{
    ArenaView, CpuTarget, CpuVariant, CudaTarget, HeadInfo, KernelInfo, Manifest, MemoryPlan,
    TensorSpec, DTYPE_F32,
};
pub use reader::SectionInfo;
pub use writer::{ArtefactWriter, WriteError};

use crate::aligned::AlignedBuf;
use crate::error::{ArtefactError, Error, Result};

/// A validated artefact, held in a 64-byte-aligned buffer so every section keeps the alignment
/// it has in the file.
#[derive(Debug)]
pub struct Artefact {
    bytes: AlignedBuf,
    version: u32,
    sections: Vec<SectionInfo>,
    manifest: Manifest,
}

impl Artefact {
    /// Validates `bytes` and copies them into an aligned buffer.
    pub fn read(bytes: &[u8]) -> Result<Self> {
        let parsed = reader::parse(bytes)?;
        let bytes = AlignedBuf::copy_from(bytes, "artefact")?;
        Ok(Self::from_parts(bytes, parsed))
    }

    /// Reads and validates the artefact at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let io = |source| Error::Io {
            path: path.to_owned(),
            source,
        };
        let mut file = std::fs::File::open(path).map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        if !meta.is_file() {
            return Err(io(std::io::Error::other("not a regular file")));
        }
        let len = usize::try_from(meta.len())
            .map_err(|_| io(std::io::Error::other("file too large for this machine")))?;
        let mut bytes = AlignedBuf::zeroed(len, "artefact")?;
        file.read_exact(bytes.as_mut_slice()).map_err(io)?;
        let parsed = reader::parse(bytes.as_slice())?;
        Ok(Self::from_parts(bytes, parsed))
    }

    fn from_parts(bytes: AlignedBuf, parsed: reader::Parsed) -> Self {
        Artefact {
            bytes,
            version: parsed.version,
            sections: parsed.sections,
            manifest: parsed.manifest,
        }
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The format version of the file.
    pub fn format_version(&self) -> u32 {
        self.version
    }

    /// The section table, in file order of the table.
    pub fn sections(&self) -> &[SectionInfo] {
        &self.sections
    }

    /// A section's bytes (64-byte aligned in memory), if the artefact has that section.
    pub fn section(&self, kind: SectionKind) -> Option<&[u8]> {
        let s = self.sections.iter().find(|s| s.kind == kind)?;
        self.bytes.as_slice().get(s.range())
    }

    /// The artefact's total length in bytes.
    pub fn file_len(&self) -> usize {
        self.bytes.len()
    }

    /// A section that must be present.
    pub(crate) fn require(&self, kind: SectionKind) -> Result<&[u8], ArtefactError> {
        self.section(kind)
            .ok_or(ArtefactError::MissingSection(kind.name()))
    }
}
