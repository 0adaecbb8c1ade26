//! The packed weights section both backends build: f32 pieces, each
//! starting on a 64-byte boundary, in the order and layout each backend's
//! `pack` module chooses.

/// Byte alignment of every packed constant within the weights section.
pub const WEIGHT_ALIGN: usize = 64;

/// The weights section under construction.
#[derive(Debug, Default)]
pub(crate) struct WeightsBuilder {
    data: Vec<f32>,
}

impl WeightsBuilder {
    /// Append `xs` at the next 64-byte boundary; returns its element offset.
    pub fn push(&mut self, xs: &[f32]) -> usize {
        let align = WEIGHT_ALIGN / 4;
        let start = self.data.len().div_ceil(align) * align;
        self.data.resize(start, 0.0);
        self.data.extend_from_slice(xs);
        start
    }

    /// Elements pushed so far (including alignment padding).
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// The section as little-endian bytes, padded to a 64-byte multiple.
    pub fn into_bytes(mut self) -> Vec<u8> {
        let align = WEIGHT_ALIGN / 4;
        self.data
            .resize(self.data.len().div_ceil(align) * align, 0.0);
        self.data.iter().flat_map(|x| x.to_le_bytes()).collect()
    }
}
