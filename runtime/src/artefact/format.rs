//! The binary layout of an artefact: the fixed header, the section table and the section kinds.
//!
//! ```text
//! offset  size  header (64 bytes, little-endian)
//!      0     8  magic  89 'D' 'N' 'C' 0D 0A 1A 0A   (PNG-style: catches text-mode transfers)
//!      8     4  format version (FORMAT_VERSION)
//!     12     4  header length (64)
//!     16     8  file length in bytes (the file ends exactly there)
//!     24     8  section table offset (64: right after the header)
//!     32     4  section count (at most MAX_SECTIONS)
//!     36     4  section table entry length (32)
//!     40     8  XXH64 of the section table
//!     48     8  reserved, zero
//!     56     8  XXH64 of bytes 0..56
//!
//!         32    section table entry, one per section
//!      0     4  kind (SectionKind)
//!      4     4  flags, zero
//!      8     8  offset (a multiple of 64)
//!     16     8  length in bytes
//!     24     8  XXH64 of the section's bytes
//! ```
//!
//! Sections follow the table, each at a 64-byte-aligned offset; the bytes between them are
//! zero padding. The manifest is itself a section (JSON), so one checksum scheme covers
//! everything after the header.

use crate::error::ArtefactError;
use crate::hash::xxh64;

/// The first eight bytes of every artefact.
pub const MAGIC: [u8; 8] = *b"\x89DNC\r\n\x1a\n";
/// The format this runtime writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Length of the fixed header.
pub const HEADER_LEN: usize = 64;
/// Length of one section table entry.
pub const ENTRY_LEN: usize = 32;
/// Alignment of every section's offset.
pub const SECTION_ALIGN: u64 = 64;
/// An upper bound on the section count, so a corrupt count cannot ask for a huge table.
pub const MAX_SECTIONS: u32 = 64;

/// What a section holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum SectionKind {
    /// The manifest, UTF-8 JSON ([`crate::artefact::Manifest`]).
    Manifest = 1,
    /// The weights, packed by the compiler for the kernels' access patterns (f32, little-endian).
    Weights = 2,
    /// The CPU code: a native shared object exporting the entry symbol of the manifest.
    CpuSharedObject = 3,
    /// PTX text for the CUDA executor.
    Ptx = 4,
    /// A cubin assembled from the PTX by ptxas (optional).
    Cubin = 5,
}

impl SectionKind {
    /// Every kind this format version knows.
    pub const ALL: [SectionKind; 5] = [
        SectionKind::Manifest,
        SectionKind::Weights,
        SectionKind::CpuSharedObject,
        SectionKind::Ptx,
        SectionKind::Cubin,
    ];

    /// The kind with this on-disk code.
    pub fn from_code(code: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.code() == code)
    }

    /// The on-disk code.
    pub fn code(self) -> u32 {
        self as u32
    }

    /// The name used in messages and by `densenetc inspect`.
    pub fn name(self) -> &'static str {
        match self {
            SectionKind::Manifest => "manifest",
            SectionKind::Weights => "weights",
            SectionKind::CpuSharedObject => "cpu_so",
            SectionKind::Ptx => "ptx",
            SectionKind::Cubin => "cubin",
        }
    }
}

impl std::fmt::Display for SectionKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The decoded fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub version: u32,
    pub file_len: u64,
    pub table_offset: u64,
    pub section_count: u32,
    pub table_checksum: u64,
}

/// One decoded section table entry (kind still raw: unknown codes are reported by the reader).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    pub kind: u32,
    pub flags: u32,
    pub offset: u64,
    pub len: u64,
    pub checksum: u64,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[12..16].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        b[16..24].copy_from_slice(&self.file_len.to_le_bytes());
        b[24..32].copy_from_slice(&self.table_offset.to_le_bytes());
        b[32..36].copy_from_slice(&self.section_count.to_le_bytes());
        b[36..40].copy_from_slice(&(ENTRY_LEN as u32).to_le_bytes());
        b[40..48].copy_from_slice(&self.table_checksum.to_le_bytes());
        let checksum = xxh64(&b[..56]);
        b[56..64].copy_from_slice(&checksum.to_le_bytes());
        b
    }

    /// Decodes and checks the header: magic first (is this ours at all?), then the version
    /// (can we read the rest?), then length and checksum.
    pub fn decode(bytes: &[u8]) -> Result<Self, ArtefactError> {
        let n = bytes.len();
        let short = || {
            ArtefactError::Truncated(format!(
                "{n} bytes, shorter than the {HEADER_LEN}-byte header"
            ))
        };
        if n < MAGIC.len() {
            return Err(if bytes == &MAGIC[..n] {
                short()
            } else {
                ArtefactError::BadMagic
            });
        }
        if bytes[..8] != MAGIC {
            return Err(ArtefactError::BadMagic);
        }
        if n < 12 {
            return Err(short());
        }
        let version = u32_at(bytes, 8);
        if version != FORMAT_VERSION {
            return Err(ArtefactError::UnsupportedVersion {
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        if n < HEADER_LEN {
            return Err(short());
        }
        if xxh64(&bytes[..56]) != u64_at(bytes, 56) {
            return Err(ArtefactError::HeaderChecksum);
        }
        let header_len = u32_at(bytes, 12);
        let entry_len = u32_at(bytes, 36);
        let reserved = u64_at(bytes, 48);
        if header_len as usize != HEADER_LEN || entry_len as usize != ENTRY_LEN || reserved != 0 {
            return Err(ArtefactError::Malformed(format!(
                "header fields inconsistent with format {version} (header length {header_len}, entry length {entry_len}, reserved {reserved:#x})"
            )));
        }
        Ok(Header {
            version,
            file_len: u64_at(bytes, 16),
            table_offset: u64_at(bytes, 24),
            section_count: u32_at(bytes, 32),
            table_checksum: u64_at(bytes, 40),
        })
    }
}

impl Entry {
    pub fn encode(&self) -> [u8; ENTRY_LEN] {
        let mut b = [0u8; ENTRY_LEN];
        b[0..4].copy_from_slice(&self.kind.to_le_bytes());
        b[4..8].copy_from_slice(&self.flags.to_le_bytes());
        b[8..16].copy_from_slice(&self.offset.to_le_bytes());
        b[16..24].copy_from_slice(&self.len.to_le_bytes());
        b[24..32].copy_from_slice(&self.checksum.to_le_bytes());
        b
    }

    /// Decodes one entry from exactly `ENTRY_LEN` bytes.
    pub fn decode(b: &[u8]) -> Self {
        Entry {
            kind: u32_at(b, 0),
            flags: u32_at(b, 4),
            offset: u64_at(b, 8),
            len: u64_at(b, 16),
            checksum: u64_at(b, 24),
        }
    }
}

/// `x` rounded up to the next multiple of [`SECTION_ALIGN`], or `None` on overflow.
pub(crate) fn align_up(x: u64) -> Option<u64> {
    x.checked_add(SECTION_ALIGN - 1)
        .map(|v| v / SECTION_ALIGN * SECTION_ALIGN)
}
