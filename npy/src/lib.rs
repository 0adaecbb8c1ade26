//! `.npy` encoding and decoding of float32 tensors: the format tensors cross
//! densenetc's command line and its golden fixtures in. One codec for the
//! IR's reference tools (`ir::reference::npy`) and for the runtime
//! (`runtime::npy`, so a program linking only the runtime can read one);
//! each wraps it in its own tensor and error types. No dependencies.
//!
//! Reads format versions 1.0, 2.0 and 3.0 with dtype `<f4` (little-endian
//! float32) in C order, what `numpy.save` writes for a float32 array;
//! writes version 1.0. Anything else is an error naming what was found.
//! [`parse`] gives any C-order array's dtype, shape and raw payload (test
//! fixtures keep images as `|u1` and labels as `<i8`).

const MAGIC: &[u8] = b"\x93NUMPY";

/// A float32 tensor: its shape and its values in C order.
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// A C-order array of any dtype, undecoded.
#[derive(Debug, Clone, PartialEq)]
pub struct RawArray<'a> {
    /// The dtype as NumPy writes it: `<f4`, `|u1`, `<i8`, …
    pub descr: String,
    pub shape: Vec<usize>,
    /// The values' bytes, in C order.
    pub payload: &'a [u8],
}

impl RawArray<'_> {
    /// Elements: the product of the shape.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Parses the bytes of a `.npy` file; the error says what is wrong with them.
pub fn from_bytes(bytes: &[u8]) -> Result<Array, String> {
    let raw = parse(bytes)?;
    if raw.descr != "<f4" {
        return Err(format!(
            "dtype `{}` is not supported, expected float32 (`<f4`)",
            raw.descr
        ));
    }
    let (shape, payload) = (raw.shape, raw.payload);
    let n = shape.iter().product::<usize>();
    if Some(payload.len()) != n.checked_mul(4) {
        return Err(format!(
            "shape {shape:?} needs {n} float32 values, the file holds {} bytes of data",
            payload.len()
        ));
    }
    let data = payload
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok(Array { shape, data })
}

/// Parses the header of a C-order `.npy` file of any dtype; the payload is what follows it
/// (its length is the caller's to check against the dtype's item size).
pub fn parse(bytes: &[u8]) -> Result<RawArray<'_>, String> {
    if bytes.len() < 10 || !bytes.starts_with(MAGIC) {
        return Err("not a .npy file (bad magic)".into());
    }
    let (major, minor) = (bytes[6], bytes[7]);
    let (header_len, start): (usize, usize) = match major {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        2 | 3 if bytes.len() >= 12 => {
            let n = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
            (usize::try_from(n).map_err(|e| e.to_string())?, 12)
        }
        _ => return Err(format!("unsupported .npy format version {major}.{minor}")),
    };
    let data_start = start
        .checked_add(header_len)
        .ok_or("truncated .npy header")?;
    let header = bytes
        .get(start..data_start)
        .ok_or("truncated .npy header")?;
    let header = std::str::from_utf8(header).map_err(|_| ".npy header is not text")?;

    let descr = dict_value(header, "descr")?.trim_start();
    let descr = descr
        .strip_prefix(['\'', '"'])
        .and_then(|rest| rest.split(['\'', '"']).next())
        .ok_or("cannot read the .npy dtype")?
        .to_owned();
    if !dict_value(header, "fortran_order")?
        .trim()
        .starts_with("False")
    {
        return Err("Fortran-order arrays are not supported".into());
    }
    let shape_text = dict_value(header, "shape")?;
    let inner = shape_text
        .trim()
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| format!("cannot read shape `{shape_text}`"))?;
    let shape = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| format!("bad dimension `{s}`"))
        })
        .collect::<Result<Vec<usize>, String>>()?;
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| format!("shape {shape:?} overflows"))?;
    let payload = &bytes[data_start.min(bytes.len())..];
    Ok(RawArray {
        descr,
        shape,
        payload,
    })
}

/// The text after `'key':` in a header dict, up to the end of the header.
fn dict_value<'h>(header: &'h str, key: &str) -> Result<&'h str, String> {
    for quote in ['\'', '"'] {
        let pat = format!("{quote}{key}{quote}");
        if let Some(i) = header.find(&pat) {
            return header[i + pat.len()..]
                .trim_start()
                .strip_prefix(':')
                .ok_or_else(|| format!("malformed .npy header entry `{key}`"));
        }
    }
    Err(format!(".npy header has no `{key}`"))
}

/// The bytes of a version 1.0 `.npy` file holding `data` of `shape`, its
/// header padded to 64 bytes as NumPy does.
pub fn to_bytes(shape: &[usize], data: &[f32]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(ToString::to_string).collect();
    let shape = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    // Magic (6) + version (2) + length (2) + header + '\n' is a multiple of 64.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + 4 * data.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    // The header of a tensor of rank < ~4000 is far below 64 KiB.
    out.extend_from_slice(&(header.len().min(usize::from(u16::MAX)) as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_dtype_parses_raw() {
        let header = "{'descr': '|u1', 'fortran_order': False, 'shape': (2, 3), }";
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(&[1, 2, 3, 4, 5, 6]);
        let raw = parse(&bytes).expect("parses");
        assert_eq!(raw.descr, "|u1");
        assert_eq!((raw.shape.as_slice(), raw.len()), (&[2, 3][..], 6));
        assert_eq!(raw.payload, &[1, 2, 3, 4, 5, 6]);
        let e = from_bytes(&bytes).expect_err("not float32");
        assert!(e.contains("`|u1` is not supported"), "{e}");
    }

    #[test]
    fn what_it_writes_it_reads() {
        for shape in [vec![], vec![3], vec![2, 3, 1, 4]] {
            let n = shape.iter().product::<usize>();
            let data: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 1.0).collect();
            let bytes = to_bytes(&shape, &data);
            assert_eq!((bytes.len() - 4 * n) % 64, 0, "header padded to 64");
            assert_eq!(from_bytes(&bytes), Ok(Array { shape, data }));
        }
    }

    fn npy(header: &str, data: &[f32]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend(data.iter().flat_map(|v| v.to_le_bytes()));
        out
    }

    #[test]
    fn reads_what_numpy_writes_and_rejects_the_rest() {
        let h = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }  \n";
        let a = from_bytes(&npy(h, &[1., 2., 3., 4., 5., 6.])).expect("valid");
        assert_eq!(a.shape, vec![2, 3]);
        assert_eq!(a.data[5], 6.0);
        let e = from_bytes(&npy(h, &[1., 2.])).expect_err("short");
        assert!(e.contains("needs 6 float32 values"), "{e}");
        let h8 = "{'descr': '<f8', 'fortran_order': False, 'shape': (1,), }\n";
        assert!(from_bytes(&npy(h8, &[0., 0.]))
            .expect_err("f64")
            .contains("<f8"));
        let hf = "{'descr': '<f4', 'fortran_order': True, 'shape': (1,), }\n";
        assert!(from_bytes(&npy(hf, &[0.]))
            .expect_err("fortran")
            .contains("Fortran"));
        assert!(from_bytes(b"PNG....").expect_err("magic").contains("magic"));
        let mut cut = npy(h, &[0.; 6]);
        cut.truncate(20);
        assert!(from_bytes(&cut).expect_err("cut").contains("truncated"));
    }
}
