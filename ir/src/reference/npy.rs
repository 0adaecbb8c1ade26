//! Minimal `.npy` I/O for f32 tensors: the format tensors cross the command
//! line and the golden fixtures in.
//!
//! Reads format versions 1.0, 2.0 and 3.0 with dtype `<f4` (little-endian
//! float32) in C order; writes version 1.0 with a header padded to 64 bytes,
//! as NumPy does. Anything else is an error naming what was found.

use super::tensor::{checked_numel, Tensor};
use crate::error::{IrError, Result};
use std::path::Path;

const MAGIC: &[u8] = b"\x93NUMPY";

fn err(message: impl std::fmt::Display) -> IrError {
    IrError::Exec(format!("npy: {message}"))
}

/// Parse the bytes of a `.npy` file.
pub fn from_bytes(bytes: &[u8]) -> Result<Tensor> {
    if bytes.len() < 10 || !bytes.starts_with(MAGIC) {
        return Err(err("not a .npy file (bad magic)"));
    }
    let (major, minor) = (bytes[6], bytes[7]);
    let (header_len, start) = match major {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        2 | 3 if bytes.len() >= 12 => {
            let n = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
            (usize::try_from(n).map_err(err)?, 12)
        }
        _ => return Err(err(format!("unsupported format version {major}.{minor}"))),
    };
    let data_start = start + header_len;
    let header = bytes
        .get(start..data_start)
        .ok_or_else(|| err("truncated header"))?;
    let header = std::str::from_utf8(header).map_err(|_| err("header is not text"))?;

    let descr = dict_value(header, "descr")?.trim_start();
    let descr = descr
        .strip_prefix(['\'', '"'])
        .and_then(|rest| rest.split(['\'', '"']).next())
        .ok_or_else(|| err("cannot read the dtype"))?;
    if descr != "<f4" {
        return Err(err(format!(
            "dtype `{descr}` is not supported, expected float32 (`<f4`)"
        )));
    }
    let fortran = dict_value(header, "fortran_order")?;
    if !fortran.trim().starts_with("False") {
        return Err(err("Fortran-order arrays are not supported"));
    }
    let shape_text = dict_value(header, "shape")?;
    let inner = shape_text
        .trim()
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| err(format!("cannot read shape `{shape_text}`")))?;
    let shape = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| err(format!("bad dimension `{s}`")))
        })
        .collect::<Result<Vec<usize>>>()?;

    let n = checked_numel(&shape)?;
    let payload = &bytes[data_start.min(bytes.len())..];
    if Some(payload.len()) != n.checked_mul(4) {
        return Err(err(format!(
            "shape {shape:?} needs {n} float32 values, the file holds {} bytes of data",
            payload.len()
        )));
    }
    let data = payload
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Tensor::from_vec(shape, data)
}

/// The text after `'key':` in a header dict, up to the end of the header.
fn dict_value<'h>(header: &'h str, key: &str) -> Result<&'h str> {
    for quote in ['\'', '"'] {
        let pat = format!("{quote}{key}{quote}");
        if let Some(i) = header.find(&pat) {
            let rest = &header[i + pat.len()..];
            return rest
                .trim_start()
                .strip_prefix(':')
                .ok_or_else(|| err(format!("malformed header entry `{key}`")));
        }
    }
    Err(err(format!("header has no `{key}`")))
}

/// The bytes of a version 1.0 `.npy` file holding `t`.
pub fn to_bytes(t: &Tensor) -> Vec<u8> {
    let dims: Vec<String> = t.shape.iter().map(ToString::to_string).collect();
    let shape = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    // Magic (6) + version (2) + length (2) + header + '\n' is a multiple of 64.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + 4 * t.data.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    // The header of a tensor of rank < ~4000 is far below 64 KiB.
    out.extend_from_slice(&(header.len().min(usize::from(u16::MAX)) as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in &t.data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Read a `.npy` file; errors name the path.
pub fn read(path: impl AsRef<Path>) -> Result<Tensor> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| err(format!("{}: {e}", path.display())))?;
    from_bytes(&bytes).map_err(|e| err(format!("{}: {e}", path.display())))
}

/// Write `t` as a `.npy` file; errors name the path.
pub fn write(path: impl AsRef<Path>, t: &Tensor) -> Result<()> {
    let path = path.as_ref();
    std::fs::write(path, to_bytes(t)).map_err(|e| err(format!("{}: {e}", path.display())))
}
