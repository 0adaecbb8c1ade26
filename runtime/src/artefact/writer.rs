//! The artefact writer the compiler uses: a manifest plus sections in, one file out.
//!
//! The writer validates the manifest against the sections it was given with the same check
//! the reader runs, so the compiler cannot emit an artefact this runtime would reject.

use std::path::Path;

use super::format::{
    align_up, Entry, Header, SectionKind, ENTRY_LEN, FORMAT_VERSION, HEADER_LEN, MAX_SECTIONS,
    SECTION_ALIGN,
};
use super::manifest::Manifest;
use crate::error::{ArtefactError, Error, Result};
use crate::hash::xxh64;

/// The most padding before a section.
const SECTION_PAD_MAX: usize = SECTION_ALIGN as usize;

/// Builds an artefact: `ArtefactWriter::new(manifest)`, `add_section` for each payload, then
/// `to_bytes`, `write_to` or `write`.
#[derive(Debug, Clone)]
pub struct ArtefactWriter {
    manifest: Manifest,
    sections: Vec<(SectionKind, Vec<u8>)>,
}

impl ArtefactWriter {
    /// A writer for this manifest (stored as the first section).
    pub fn new(manifest: Manifest) -> Self {
        ArtefactWriter {
            manifest,
            sections: Vec::new(),
        }
    }

    /// The manifest to be written.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Adds a section; each kind at most once, and the manifest is not added by hand.
    pub fn add_section(
        &mut self,
        kind: SectionKind,
        bytes: Vec<u8>,
    ) -> Result<&mut Self, ArtefactError> {
        if kind == SectionKind::Manifest {
            return Err(ArtefactError::Malformed(
                "the manifest section is written from the manifest".into(),
            ));
        }
        if self.sections.iter().any(|(k, _)| *k == kind) {
            return Err(ArtefactError::Malformed(format!(
                "section '{kind}' added twice"
            )));
        }
        self.sections.push((kind, bytes));
        Ok(self)
    }

    /// The artefact's bytes.
    /// Writes the artefact to `out`, section by section; returns its length in bytes.
    pub fn write_to(&self, out: &mut impl std::io::Write) -> Result<u64, WriteError> {
        let mut kinds = vec![SectionKind::Manifest];
        kinds.extend(self.sections.iter().map(|(k, _)| *k));
        self.manifest.validate(&kinds)?;
        let section = |kind| {
            self.sections
                .iter()
                .find(|(k, _)| *k == kind)
                .map(|(_, b)| b.as_slice())
        };
        let weights_len = section(SectionKind::Weights).map_or(0, |w| w.len() as u64);
        self.manifest
            .validate_cuda(weights_len, section(SectionKind::Ptx))?;
        let manifest = self.manifest.to_json()?;
        let mut payloads: Vec<(SectionKind, &[u8])> = vec![(SectionKind::Manifest, &manifest)];
        payloads.extend(self.sections.iter().map(|(k, b)| (*k, b.as_slice())));
        if payloads.len() > MAX_SECTIONS as usize {
            return Err(
                ArtefactError::Malformed(format!("more than {MAX_SECTIONS} sections")).into(),
            );
        }

        let too_big = || ArtefactError::Malformed("artefact larger than 2^64 bytes".into());
        let table_end = (HEADER_LEN + payloads.len() * ENTRY_LEN) as u64;
        let mut entries = Vec::with_capacity(payloads.len());
        let mut cursor = table_end;
        for (kind, bytes) in &payloads {
            let offset = align_up(cursor).ok_or_else(too_big)?;
            let len = bytes.len() as u64;
            entries.push(Entry {
                kind: kind.code(),
                flags: 0,
                offset,
                len,
                checksum: xxh64(bytes),
            });
            cursor = offset.checked_add(len).ok_or_else(too_big)?;
        }
        let file_len = usize::try_from(cursor).map_err(|_| too_big())?;

        let table_checksum = {
            let mut table = Vec::with_capacity(entries.len() * ENTRY_LEN);
            for e in &entries {
                table.extend_from_slice(&e.encode());
            }
            xxh64(&table)
        };
        let header = Header {
            version: FORMAT_VERSION,
            file_len: cursor,
            table_offset: HEADER_LEN as u64,
            section_count: entries.len() as u32,
            table_checksum,
        };
        // Streamed: the sections are not copied into one buffer first (a large model's
        // weights would otherwise be held twice).
        out.write_all(&header.encode())?;
        for e in &entries {
            out.write_all(&e.encode())?;
        }
        let mut written = table_end;
        let zeros = [0u8; SECTION_PAD_MAX];
        for (e, (_, bytes)) in entries.iter().zip(&payloads) {
            out.write_all(&zeros[..(e.offset - written) as usize])?;
            out.write_all(bytes)?;
            written = e.offset + bytes.len() as u64;
        }
        debug_assert_eq!(written as usize, file_len);
        Ok(written)
    }

    /// The artefact's bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, ArtefactError> {
        let mut out = Vec::new();
        self.write_to(&mut out).map_err(|e| match e {
            WriteError::Format(e) => e,
            WriteError::Io(e) => ArtefactError::Malformed(format!("writing to memory: {e}")),
        })?;
        Ok(out)
    }

    /// Writes the artefact to `path` (through a temporary file in the same directory, renamed
    /// into place, so a reader never sees a half-written artefact).
    pub fn write(&self, path: &Path) -> Result<()> {
        let io = |source| Error::Io {
            path: path.to_owned(),
            source,
        };
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
        let mut buffered = std::io::BufWriter::new(tmp);
        self.write_to(&mut buffered).map_err(|e| match e {
            WriteError::Format(e) => Error::Artefact(e),
            WriteError::Io(e) => io(e),
        })?;
        let tmp = buffered.into_inner().map_err(|e| io(e.into_error()))?;
        // A temporary file is created private (0600); an artefact is as readable as any file.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            tmp.as_file()
                .set_permissions(std::fs::Permissions::from_mode(0o644))
                .map_err(io)?;
        }
        tmp.persist(path).map_err(|e| io(e.error))?;
        Ok(())
    }
}

/// Why [`ArtefactWriter::write_to`] failed: the parts are invalid, or the output refused bytes.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Format(#[from] ArtefactError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
