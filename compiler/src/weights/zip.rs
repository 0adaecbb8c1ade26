//! A minimal reader for the zip archives `torch.save` writes.
//!
//! It reads the central directory (ZIP64 included) of an archive held in
//! memory and hands out the bytes of *stored* (uncompressed) entries, which
//! is all `torch.save` produces. Every offset and length is checked against
//! the buffer before use; nothing is allocated in proportion to a length the
//! file declares. CRC-32 is verified when the archive records one (torch
//! writes 0 when told not to compute it).

use super::error::{ParseError, ParseResult};
use std::collections::HashMap;

const EOCD_SIG: u32 = 0x0605_4b50;
const EOCD_LEN: usize = 22;
const ZIP64_LOCATOR_SIG: u32 = 0x0706_4b50;
const ZIP64_LOCATOR_LEN: usize = 20;
const ZIP64_EOCD_SIG: u32 = 0x0606_4b50;
const CENTRAL_SIG: u32 = 0x0201_4b50;
const CENTRAL_LEN: usize = 46;
const LOCAL_SIG: u32 = 0x0403_4b50;
const LOCAL_LEN: usize = 30;
const ZIP64_EXTRA_ID: u16 = 0x0001;

/// One entry of the central directory.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub name: String,
    flags: u16,
    method: u16,
    crc: u32,
    compressed_size: u64,
    size: u64,
    local_offset: u64,
}

/// A parsed archive borrowing the file's bytes.
#[derive(Debug)]
pub(crate) struct Archive<'a> {
    data: &'a [u8],
    entries: Vec<Entry>,
    by_name: HashMap<String, usize>,
}

fn corrupt(message: impl Into<String>) -> ParseError {
    ParseError::corrupt(format!("zip: {}", message.into()))
}

fn bytes_at(data: &[u8], offset: usize, len: usize) -> ParseResult<&[u8]> {
    offset
        .checked_add(len)
        .and_then(|end| data.get(offset..end))
        .ok_or_else(|| corrupt(format!("{len} bytes at offset {offset} are past the end")))
}

fn u16_at(data: &[u8], offset: usize) -> ParseResult<u16> {
    let b = bytes_at(data, offset, 2)?;
    Ok(u16::from_le_bytes([b[0], b[1]]))
}

fn u32_at(data: &[u8], offset: usize) -> ParseResult<u32> {
    let b = bytes_at(data, offset, 4)?;
    Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn u64_at(data: &[u8], offset: usize) -> ParseResult<u64> {
    let b = bytes_at(data, offset, 8)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    Ok(u64::from_le_bytes(a))
}

/// A file offset or length, which must lie within the buffer (so adding a
/// header-sized constant to it cannot overflow).
fn within(data: &[u8], v: u64, what: &str) -> ParseResult<usize> {
    usize::try_from(v)
        .ok()
        .filter(|&v| v <= data.len())
        .ok_or_else(|| corrupt(format!("{what} {v} is past the end of the file")))
}

/// Where the central directory is and how many entries it holds.
struct Directory {
    offset: usize,
    size: usize,
    count: u64,
}

fn find_eocd(data: &[u8]) -> ParseResult<usize> {
    if data.len() < EOCD_LEN {
        return Err(corrupt("file too short for an end of central directory"));
    }
    let last = data.len() - EOCD_LEN;
    let first = last.saturating_sub(usize::from(u16::MAX));
    for pos in (first..=last).rev() {
        if u32_at(data, pos)? == EOCD_SIG {
            let comment = usize::from(u16_at(data, pos + 20)?);
            if pos + EOCD_LEN + comment == data.len() {
                return Ok(pos);
            }
        }
    }
    Err(corrupt("no end of central directory record"))
}

fn read_directory(data: &[u8]) -> ParseResult<Directory> {
    let eocd = find_eocd(data)?;
    let disk = u16_at(data, eocd + 4)?;
    let cd_disk = u16_at(data, eocd + 6)?;
    let count16 = u16_at(data, eocd + 10)?;
    let size32 = u32_at(data, eocd + 12)?;
    let offset32 = u32_at(data, eocd + 16)?;
    let mut dir = (u64::from(count16), u64::from(size32), u64::from(offset32));
    let saturated = count16 == u16::MAX || size32 == u32::MAX || offset32 == u32::MAX;
    let has_locator =
        eocd >= ZIP64_LOCATOR_LEN && u32_at(data, eocd - ZIP64_LOCATOR_LEN)? == ZIP64_LOCATOR_SIG;
    if has_locator {
        let at = within(
            data,
            u64_at(data, eocd - ZIP64_LOCATOR_LEN + 8)?,
            "ZIP64 record offset",
        )?;
        if u32_at(data, at)? != ZIP64_EOCD_SIG {
            return Err(corrupt("bad ZIP64 end of central directory signature"));
        }
        if u32_at(data, at + 16)? != 0 || u32_at(data, at + 20)? != 0 {
            return Err(ParseError::unsupported("multi-disk zip archives"));
        }
        dir = (
            u64_at(data, at + 32)?,
            u64_at(data, at + 40)?,
            u64_at(data, at + 48)?,
        );
    } else if saturated {
        return Err(corrupt("ZIP64 archive without a ZIP64 locator"));
    } else if disk != 0 || cd_disk != 0 {
        return Err(ParseError::unsupported("multi-disk zip archives"));
    }
    let (count, size, offset) = dir;
    let offset = within(data, offset, "central directory offset")?;
    let size = within(data, size, "central directory size")?;
    bytes_at(data, offset, size)?;
    if count > (size / CENTRAL_LEN) as u64 {
        return Err(corrupt(format!(
            "{count} entries cannot fit a {size}-byte central directory"
        )));
    }
    Ok(Directory {
        offset,
        size,
        count,
    })
}

/// Apply the ZIP64 extended-information extra field to the saturated fields.
fn apply_zip64_extra(
    extra: &[u8],
    size: &mut u64,
    compressed: &mut u64,
    offset: &mut u64,
) -> ParseResult<()> {
    let mut pos = 0;
    while pos + 4 <= extra.len() {
        let id = u16_at(extra, pos)?;
        let len = usize::from(u16_at(extra, pos + 2)?);
        let body = bytes_at(extra, pos + 4, len)?;
        if id == ZIP64_EXTRA_ID {
            let mut at = 0;
            for field in [size, compressed, offset] {
                if *field == u64::from(u32::MAX) {
                    *field = u64_at(body, at)?;
                    at += 8;
                }
            }
            return Ok(());
        }
        pos += 4 + len;
    }
    Ok(())
}

impl<'a> Archive<'a> {
    pub(crate) fn parse(data: &'a [u8]) -> ParseResult<Self> {
        let dir = read_directory(data)?;
        let end = dir.offset + dir.size;
        let mut pos = dir.offset;
        let mut entries = Vec::new();
        let mut by_name = HashMap::new();
        for _ in 0..dir.count {
            if pos + CENTRAL_LEN > end || u32_at(data, pos)? != CENTRAL_SIG {
                return Err(corrupt("bad central directory entry"));
            }
            let flags = u16_at(data, pos + 8)?;
            let method = u16_at(data, pos + 10)?;
            let crc = u32_at(data, pos + 16)?;
            let mut compressed_size = u64::from(u32_at(data, pos + 20)?);
            let mut size = u64::from(u32_at(data, pos + 24)?);
            let name_len = usize::from(u16_at(data, pos + 28)?);
            let extra_len = usize::from(u16_at(data, pos + 30)?);
            let comment_len = usize::from(u16_at(data, pos + 32)?);
            let mut local_offset = u64::from(u32_at(data, pos + 42)?);
            let name = bytes_at(data, pos + CENTRAL_LEN, name_len)?;
            let extra = bytes_at(data, pos + CENTRAL_LEN + name_len, extra_len)?;
            apply_zip64_extra(extra, &mut size, &mut compressed_size, &mut local_offset)?;
            pos += CENTRAL_LEN + name_len + extra_len + comment_len;
            if pos > end {
                return Err(corrupt("central directory entry overruns the directory"));
            }
            let name = String::from_utf8_lossy(name).into_owned();
            if by_name.insert(name.clone(), entries.len()).is_some() {
                return Err(corrupt(format!("entry `{name}` appears twice")));
            }
            entries.push(Entry {
                name,
                flags,
                method,
                crc,
                compressed_size,
                size,
                local_offset,
            });
        }
        Ok(Archive {
            data,
            entries,
            by_name,
        })
    }

    pub(crate) fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The bytes of entry `name`, or `None` if the archive has no such entry.
    pub(crate) fn read(&self, name: &str) -> ParseResult<Option<&'a [u8]>> {
        let Some(&i) = self.by_name.get(name) else {
            return Ok(None);
        };
        let e = &self.entries[i];
        if e.flags & 1 != 0 {
            return Err(ParseError::unsupported(format!(
                "zip entry `{name}` is encrypted"
            )));
        }
        if e.method != 0 {
            return Err(ParseError::unsupported(format!(
                "zip entry `{name}` is compressed (method {}); torch.save writes uncompressed \
                 entries: re-save the checkpoint with torch.save instead of re-zipping it",
                e.method
            )));
        }
        if e.compressed_size != e.size {
            return Err(corrupt(format!(
                "stored entry `{name}` has two different sizes"
            )));
        }
        let data = self.data;
        let at = within(data, e.local_offset, "local header offset")?;
        if u32_at(data, at)? != LOCAL_SIG {
            return Err(corrupt(format!("bad local header for `{name}`")));
        }
        let name_len = usize::from(u16_at(data, at + 26)?);
        let extra_len = usize::from(u16_at(data, at + 28)?);
        if bytes_at(data, at + LOCAL_LEN, name_len)? != e.name.as_bytes() {
            return Err(corrupt(format!(
                "local header name differs from the directory's `{name}`"
            )));
        }
        let start = at + LOCAL_LEN + name_len + extra_len;
        let bytes = bytes_at(data, start, within(data, e.size, "entry size")?)?;
        if e.crc != 0 && crc32(bytes) != e.crc {
            return Err(corrupt(format!("CRC-32 mismatch in entry `{name}`")));
        }
        Ok(Some(bytes))
    }
}

/// Slice-by-8 tables: `CRC_TABLES[0]` is the classic byte table, and
/// `CRC_TABLES[k][b]` advances the CRC of byte `b` by `k` more zero bytes.
const CRC_TABLES: [[u32; 256]; 8] = {
    let mut t = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mut k = 1;
    while k < 8 {
        let mut i = 0;
        while i < 256 {
            let prev = t[k - 1][i];
            t[k][i] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
            i += 1;
        }
        k += 1;
    }
    t
};

/// CRC-32 (IEEE, as zip uses it), eight bytes at a time.
pub(crate) fn crc32(bytes: &[u8]) -> u32 {
    let t = &CRC_TABLES;
    let mut c = !0u32;
    let mut chunks = bytes.chunks_exact(8);
    for b in &mut chunks {
        let lo = c ^ u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        c = t[7][(lo & 0xff) as usize]
            ^ t[6][((lo >> 8) & 0xff) as usize]
            ^ t[5][((lo >> 16) & 0xff) as usize]
            ^ t[4][(lo >> 24) as usize]
            ^ t[3][usize::from(b[4])]
            ^ t[2][usize::from(b[5])]
            ^ t[1][usize::from(b[6])]
            ^ t[0][usize::from(b[7])];
    }
    for &b in chunks.remainder() {
        c = t[0][((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

#[cfg(test)]
mod tests {
    use super::crc32;

    #[test]
    fn crc32_known_values() {
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(
            crc32(b"The quick brown fox jumps over the lazy dog"),
            0x414F_A339
        );
    }
}
