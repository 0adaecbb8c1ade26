//! Recognising a weights file by its first bytes, never by its name:
//! `.pth`, `.pt`, `.pth.tar`, `.ckpt`, `.dat`, `.bin` and `.safetensors`
//! all hold the same few formats. Anything else is described as well as the
//! bytes allow, so the error says what the file looks like.

use std::fmt;

/// A weights file format densenetc reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `torch.save`'s zip archive (PyTorch >= 1.6).
    TorchZip,
    /// `torch.save`'s legacy format (before PyTorch 1.6, or
    /// `_use_new_zipfile_serialization=False`).
    TorchLegacy,
    /// safetensors.
    Safetensors,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::TorchZip => "PyTorch checkpoint (torch.save zip archive)",
            Format::TorchLegacy => "PyTorch checkpoint (legacy format, before PyTorch 1.6)",
            Format::Safetensors => "safetensors",
        })
    }
}

/// What the first bytes say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Sniffed {
    Format(Format),
    /// PyTorch's oldest, tar-based format.
    TorchTar,
    /// Something else, described.
    Unknown(String),
}

pub(crate) fn sniff(bytes: &[u8]) -> Sniffed {
    if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
        return Sniffed::Format(Format::TorchZip);
    }
    if legacy_magic_len(bytes).is_some() {
        return Sniffed::Format(Format::TorchLegacy);
    }
    if bytes.get(257..262) == Some(b"ustar") {
        return if bytes.windows(7).take(512).any(|w| w == b"storage")
            || bytes.starts_with(b"sys_info")
        {
            Sniffed::TorchTar
        } else {
            Sniffed::Unknown("a tar archive (unpack it: the weights file is inside)".into())
        };
    }
    // safetensors: a little-endian u64 header length, then a JSON object.
    if let (Some(n), Some(b'{')) = (bytes.get(..8), bytes.get(8)) {
        let mut a = [0u8; 8];
        a.copy_from_slice(n);
        let n = u64::from_le_bytes(a);
        if (2..=100_000_000).contains(&n) {
            return Sniffed::Format(Format::Safetensors);
        }
    }
    Sniffed::Unknown(describe(bytes))
}

/// What bytes that are no weights format look like.
fn describe(bytes: &[u8]) -> String {
    let hex: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
    let hex = hex.join(" ");
    let text_start = |prefix: &[u8]| {
        let lower: Vec<u8> = bytes
            .iter()
            .skip_while(|b| b.is_ascii_whitespace())
            .take(prefix.len())
            .map(u8::to_ascii_lowercase)
            .collect();
        lower == prefix
    };
    let what: String = if bytes.is_empty() {
        return "the file is empty".into();
    } else if bytes.starts_with(b"\x89HDF\r\n\x1a\n") {
        "an HDF5 file (Keras .h5 weights?)".into()
    } else if bytes.starts_with(b"\x1f\x8b") {
        "gzip-compressed data (decompress it first)".into()
    } else if bytes.starts_with(b"BZh") {
        "bzip2-compressed data (decompress it first)".into()
    } else if bytes.starts_with(b"\xfd7zXZ\x00") {
        "xz-compressed data (decompress it first)".into()
    } else if bytes.starts_with(b"\x28\xb5\x2f\xfd") {
        "zstd-compressed data (decompress it first)".into()
    } else if bytes.starts_with(b"7z\xbc\xaf\x27\x1c") {
        "a 7-zip archive (unpack it first)".into()
    } else if bytes.starts_with(b"\x93NUMPY") {
        "a NumPy .npy array".into()
    } else if bytes.starts_with(b"GGUF") {
        "a GGUF model file".into()
    } else if bytes.starts_with(b"\x7fELF") {
        "an ELF executable or shared library".into()
    } else if bytes.starts_with(b"version https://git-lfs") {
        "a Git LFS pointer, not the file itself (fetch it with `git lfs pull`)".into()
    } else if text_start(b"<!doctype html") || text_start(b"<html") {
        "an HTML page (a download that saved an error or login page?)".into()
    } else if matches!(bytes, [0x80, 1..=5, ..]) {
        "a Python pickle without PyTorch's magic number (pickle.dump output, not torch.save)".into()
    } else if bytes
        .iter()
        .take(64)
        .all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace())
    {
        let head: String = String::from_utf8_lossy(&bytes[..bytes.len().min(24)])
            .chars()
            .map(|c| if c.is_whitespace() { ' ' } else { c })
            .collect();
        format!("text (`{}`…)", head.trim_end())
    } else if bytes[0] == 0x08 {
        "binary data that may be a protocol buffer (an ONNX model?)".into()
    } else {
        "unrecognised binary data".into()
    };
    format!("its first bytes ({hex}) look like {what}")
}

/// The magic number of PyTorch's legacy (pre-1.6) format, as the pickle's `LONG1` payload
/// (little-endian).
const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];

/// The length of the magic-number pickle that starts `bytes`, if it does:
/// `PROTO n` (2-5), an optional `FRAME`, `LONG1` with the magic, `STOP`.
pub(crate) fn legacy_magic_len(bytes: &[u8]) -> Option<usize> {
    let mut p = match bytes {
        [0x80, 2..=5, ..] => 2,
        _ => return None,
    };
    if bytes.get(p) == Some(&0x95) {
        p += 9;
    }
    if bytes.get(p..p + 2)? != [0x8a, 0x0a] || bytes.get(p + 2..p + 12)? != LEGACY_MAGIC {
        return None;
    }
    p += 12;
    (bytes.get(p) == Some(&b'.')).then_some(p + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_by_content() {
        assert_eq!(sniff(b"PK\x03\x04rest"), Sniffed::Format(Format::TorchZip));
        let mut st = 2u64.to_le_bytes().to_vec();
        st.extend_from_slice(b"{}");
        assert_eq!(sniff(&st), Sniffed::Format(Format::Safetensors));
        let legacy = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.\x80\x02";
        assert_eq!(sniff(legacy), Sniffed::Format(Format::TorchLegacy));
        // Protocol 4 frames the magic number.
        let framed =
            b"\x80\x04\x95\x0d\0\0\0\0\0\0\0\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.";
        assert_eq!(sniff(framed), Sniffed::Format(Format::TorchLegacy));
    }

    #[test]
    fn unknown_bytes_are_described() {
        let d = |b: &[u8]| match sniff(b) {
            Sniffed::Unknown(d) => d,
            other => panic!("{other:?}"),
        };
        assert_eq!(d(b""), "the file is empty");
        assert!(d(b"\x89HDF\r\n\x1a\nxxxx").contains("HDF5"));
        assert!(d(b"\x1f\x8b\x08\0").contains("gzip"));
        assert!(d(b"\x80\x02}q\0.").contains("pickle without PyTorch's magic"));
        assert!(d(b"<!DOCTYPE html><html>").contains("HTML"));
        assert!(d(b"hello, world").contains("text (`hello, world`"));
        assert!(d(b"\x93NUMPY\x01\0").contains("NumPy"));
        assert!(d(b"\x01\x02\x03").contains("01 02 03"));
    }
}
