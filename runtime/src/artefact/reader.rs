//! Validation of an artefact's bytes, in an order that never trusts a field before it is
//! checked: header (magic, version, checksum, length), section table (bounds with checked
//! arithmetic against the file length, then checksum), section layout (alignment, bounds,
//! overlap, zero padding), every section checksum, and finally the manifest.
//!
//! Nothing here allocates more than a small multiple of the input: the section table is at
//! most [`MAX_SECTIONS`] entries and is bounds-checked before it is decoded.

use super::format::{
    align_up, Entry, Header, SectionKind, ENTRY_LEN, HEADER_LEN, MAX_SECTIONS, SECTION_ALIGN,
};
use super::manifest::Manifest;
use crate::error::ArtefactError;
use crate::hash::xxh64;

/// Where a section lies in the file, and its checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SectionInfo {
    /// What it holds.
    pub kind: SectionKind,
    /// Byte offset in the file (a multiple of 64).
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// XXH64 of its bytes.
    pub checksum: u64,
}

impl SectionInfo {
    /// The section's byte range, valid for the bytes it was parsed from.
    pub fn range(&self) -> std::ops::Range<usize> {
        // Both fit in usize: the reader checked offset + len <= the input's length.
        self.offset as usize..(self.offset + self.len) as usize
    }
}

/// What [`parse`] found in valid bytes.
#[derive(Debug)]
pub(crate) struct Parsed {
    pub version: u32,
    pub sections: Vec<SectionInfo>,
    pub manifest: Manifest,
}

fn malformed(msg: String) -> ArtefactError {
    ArtefactError::Malformed(msg)
}

/// Validates `bytes` as a whole artefact.
pub(crate) fn parse(bytes: &[u8]) -> Result<Parsed, ArtefactError> {
    let header = Header::decode(bytes)?;
    let actual = bytes.len() as u64;
    if header.file_len > actual {
        return Err(ArtefactError::Truncated(format!(
            "the file has {actual} bytes, its header says {}",
            header.file_len
        )));
    }
    if header.file_len < actual {
        return Err(malformed(format!(
            "{} unexpected bytes after the end of the artefact",
            actual - header.file_len
        )));
    }

    let table = table_bytes(&header, bytes)?;
    if xxh64(table) != header.table_checksum {
        return Err(ArtefactError::TableChecksum);
    }
    let table_end = HEADER_LEN as u64 + table.len() as u64;
    let sections = check_layout(table, table_end, bytes)?;

    for s in &sections {
        if xxh64(&bytes[s.range()]) != s.checksum {
            return Err(ArtefactError::SectionChecksum(s.kind.name()));
        }
    }

    let manifest_section = sections
        .iter()
        .find(|s| s.kind == SectionKind::Manifest)
        .ok_or(ArtefactError::MissingSection(SectionKind::Manifest.name()))?;
    let manifest = Manifest::from_json(&bytes[manifest_section.range()])?;
    let kinds: Vec<SectionKind> = sections.iter().map(|s| s.kind).collect();
    manifest.validate(&kinds)?;
    let section = |kind| {
        sections
            .iter()
            .find(|s| s.kind == kind)
            .map(|s| &bytes[s.range()])
    };
    let weights_len = section(SectionKind::Weights).map_or(0, |w| w.len() as u64);
    manifest.validate_cuda(weights_len, section(SectionKind::Ptx))?;
    if let Some(cpu) = &manifest.cpu {
        let code_len = section(SectionKind::CpuSharedObject).map_or(0, |c| c.len() as u64);
        cpu.validate_variants(code_len, weights_len)?;
    }
    Ok(Parsed {
        version: header.version,
        sections,
        manifest,
    })
}

/// The section table's bytes, after bounds checks on its offset and count.
fn table_bytes<'a>(header: &Header, bytes: &'a [u8]) -> Result<&'a [u8], ArtefactError> {
    if header.table_offset != HEADER_LEN as u64 {
        return Err(malformed(format!(
            "section table at offset {}, expected {HEADER_LEN}",
            header.table_offset
        )));
    }
    if header.section_count > MAX_SECTIONS {
        return Err(malformed(format!(
            "{} sections, at most {MAX_SECTIONS} allowed",
            header.section_count
        )));
    }
    // Cannot overflow: count <= MAX_SECTIONS.
    let end = HEADER_LEN + header.section_count as usize * ENTRY_LEN;
    bytes.get(HEADER_LEN..end).ok_or_else(|| {
        malformed(format!(
            "section table of {} entries ends at byte {end}, past the end of the file ({})",
            header.section_count,
            bytes.len()
        ))
    })
}

/// Decodes the entries and checks kinds, flags, alignment, bounds, overlap and padding.
fn check_layout(
    table: &[u8],
    table_end: u64,
    bytes: &[u8],
) -> Result<Vec<SectionInfo>, ArtefactError> {
    let file_len = bytes.len() as u64;
    let mut sections = Vec::with_capacity(table.len() / ENTRY_LEN);
    for (i, raw) in table.chunks_exact(ENTRY_LEN).enumerate() {
        let e = Entry::decode(raw);
        let kind = SectionKind::from_code(e.kind)
            .ok_or_else(|| malformed(format!("section {i} has unknown kind {}", e.kind)))?;
        if e.flags != 0 {
            return Err(malformed(format!(
                "section '{kind}' has unknown flags {:#x}",
                e.flags
            )));
        }
        if sections.iter().any(|s: &SectionInfo| s.kind == kind) {
            return Err(malformed(format!("section '{kind}' appears twice")));
        }
        if !e.offset.is_multiple_of(SECTION_ALIGN) {
            return Err(malformed(format!(
                "section '{kind}' at offset {} is not {SECTION_ALIGN}-byte aligned",
                e.offset
            )));
        }
        let end = e.offset.checked_add(e.len).filter(|&end| end <= file_len).ok_or_else(|| {
            malformed(format!(
                "section '{kind}' ({} bytes at offset {}) extends past the end of the file ({file_len} bytes)",
                e.len, e.offset
            ))
        })?;
        debug_assert!(end <= file_len);
        sections.push(SectionInfo {
            kind,
            offset: e.offset,
            len: e.len,
            checksum: e.checksum,
        });
    }

    let mut by_offset: Vec<&SectionInfo> = sections.iter().collect();
    by_offset.sort_by_key(|s| (s.offset, s.len));
    let mut cursor = table_end;
    for s in by_offset {
        if s.offset < cursor {
            return Err(malformed(format!(
                "section '{}' at offset {} overlaps the header, the section table or another section",
                s.kind, s.offset
            )));
        }
        check_padding(bytes, cursor, s.offset)?;
        cursor = s.offset + s.len;
    }
    check_padding(bytes, cursor, file_len)?;
    // Padding after the last section never exceeds one alignment step.
    if align_up(cursor).is_some_and(|a| file_len > a) {
        return Err(malformed(format!(
            "{} bytes of padding after the last section",
            file_len - cursor
        )));
    }
    Ok(sections)
}

fn check_padding(bytes: &[u8], from: u64, to: u64) -> Result<(), ArtefactError> {
    // from <= to <= bytes.len() is established by the caller.
    let gap = &bytes[from as usize..to as usize];
    if let Some(i) = gap.iter().position(|&b| b != 0) {
        return Err(malformed(format!(
            "non-zero padding byte at offset {}",
            from as usize + i
        )));
    }
    Ok(())
}
