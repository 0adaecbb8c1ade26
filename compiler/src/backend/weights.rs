//! The packed weights section both backends build: f32 pieces, each
//! starting on a 64-byte boundary, in the order and layout each backend's
//! `pack` module chooses.
//!
//! The section is kept as little-endian bytes from the start, so handing it
//! to the artefact writer moves it instead of copying it: a 1,000-layer
//! DenseNet's weights are gigabytes, and a second copy would double the
//! compiler's peak memory.

/// Byte alignment of every packed constant within the weights section.
pub const WEIGHT_ALIGN: usize = 64;

/// Bytes per packed element (f32, or a word of two bf16).
const ELEM: usize = 4;

/// The weights section under construction.
#[derive(Debug, Default)]
pub(crate) struct WeightsBuilder {
    bytes: Vec<u8>,
}

impl WeightsBuilder {
    /// Append `xs` at the next 64-byte boundary; returns its element offset.
    pub fn push(&mut self, xs: &[f32]) -> usize {
        let start = self.align();
        self.bytes.reserve(xs.len() * ELEM);
        self.bytes.extend(xs.iter().flat_map(|x| x.to_le_bytes()));
        start
    }

    /// Append everything `other` holds at the next 64-byte boundary, so
    /// offsets within `other` stay valid relative to the returned element
    /// offset. An empty `other` appends nothing and returns the current end.
    pub fn append(&mut self, other: WeightsBuilder) -> usize {
        if other.bytes.is_empty() {
            return self.len();
        }
        let start = self.align();
        self.bytes.extend_from_slice(&other.bytes);
        start
    }

    /// Elements pushed so far (including alignment padding).
    pub fn len(&self) -> usize {
        self.bytes.len() / ELEM
    }

    /// The section as little-endian bytes, padded to a 64-byte multiple.
    pub fn into_bytes(mut self) -> Vec<u8> {
        self.align();
        self.bytes
    }

    /// Pad to the next `WEIGHT_ALIGN` boundary; returns the element offset there.
    fn align(&mut self) -> usize {
        let end = self.bytes.len().div_ceil(WEIGHT_ALIGN) * WEIGHT_ALIGN;
        self.bytes.resize(end, 0);
        end / ELEM
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_keeps_offsets_and_alignment() {
        let mut local = WeightsBuilder::default();
        assert_eq!(local.push(&[1.0; 3]), 0);
        assert_eq!(local.push(&[2.0; 2]), 16);
        let mut wb = WeightsBuilder::default();
        wb.push(&[9.0]);
        assert_eq!(wb.append(local), 16);
        assert_eq!(wb.append(WeightsBuilder::default()), wb.len());
        let bytes = wb.into_bytes();
        assert_eq!(bytes.len() % WEIGHT_ALIGN, 0);
        let at =
            |i: usize| f32::from_le_bytes(bytes[i * 4..i * 4 + 4].try_into().expect("4 bytes"));
        assert_eq!(
            (at(0), at(16), at(18), at(32), at(33)),
            (9.0, 1.0, 1.0, 2.0, 2.0)
        );
    }
}
