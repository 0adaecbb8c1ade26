//! [`View`]: a 4-D NHWC channel window of one arena buffer, in the storage
//! model of the memory plan (`ir::Buffer`).
//!
//! A buffer holds `n` images of `h × w` pixels, each pixel `pixel_stride`
//! floats (the buffer's channel count), and optionally a zero border of
//! `[rows, cols]` stored around every image. A view selects `channels`
//! consecutive channels from `channel_offset`. Element `(n, h, w, c)` of a
//! view lives at arena float index
//!
//! ```text
//! offset/4 + ((n·(H+2bh) + h+bh)·(W+2bw) + w+bw)·pixel_stride + channel_offset + c
//! ```
//!
//! A dense block's buffer is one such buffer: a layer's input is its
//! channel *prefix* view and its output a channel *slice* view, so
//! concatenation costs nothing. The border is the CPU backend's: a CPU
//! kernel whose **output** view has a border also writes zeros into its
//! channel slice of the border (the buffer's writers own it), and the CPU's
//! 3x3 convolutions read it as their zero padding. The CUDA kernels
//! bounds-check every tap and neither read nor write a border.

/// Bytes per f32 element, the storage of every view but the CPU's bf16 ones ([`View::bf16`]).
pub const ELEM_BYTES: usize = 4;
/// Bytes per element of a [`View::bf16`] view.
pub const BF16_BYTES: usize = 2;

/// An NHWC view of an arena buffer (see the module docs for the addressing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct View {
    /// Arena byte offset of the buffer's first stored element (pixel 0,
    /// border included, channel 0 of the buffer). A multiple of 4.
    pub offset: usize,
    pub n: usize,
    pub h: usize,
    pub w: usize,
    /// Channels in the view.
    pub channels: usize,
    /// Elements between consecutive pixels (the buffer's channel count).
    pub pixel_stride: usize,
    /// First channel of the view within each pixel.
    pub channel_offset: usize,
    /// Zero rows above and below, and columns left and right, of every
    /// stored image.
    pub border: [usize; 2],
    /// The buffer holds bf16 (2-byte) elements instead of f32: every index and stride above
    /// counts them, so the buffer takes half the bytes the memory plan gave it. Only the CPU
    /// backend sets it, on buffers all of whose kernels read and write bf16
    /// (`backend/cpu/storage.rs`).
    pub bf16: bool,
}

impl View {
    /// A view covering a whole dense NHWC buffer without border.
    pub fn dense(offset: usize, n: usize, h: usize, w: usize, channels: usize) -> View {
        View {
            offset,
            n,
            h,
            w,
            channels,
            pixel_stride: channels,
            channel_offset: 0,
            border: [0, 0],
            bf16: false,
        }
    }

    /// Channels `[channel_offset, channel_offset + channels)` of the same
    /// buffer.
    pub fn slice(self, channel_offset: usize, channels: usize) -> View {
        View {
            channel_offset,
            channels,
            ..self
        }
    }

    /// The view of node `id`'s value in a memory-planned graph: its slice of
    /// the buffer it is placed in (`ir::Placement`, `ir::Buffer`). A rank-2
    /// value `[N, C]` is the view `[N, 1, 1, C]` of its buffer. Errors on an
    /// unplanned value or a graph input (the runtime owns input storage).
    pub fn of_value(g: &ir::Graph, id: ir::NodeId) -> Result<View, String> {
        let node = g.node(id);
        let placement = node.placement.as_ref().ok_or_else(|| {
            format!(
                "`{}` has no placement (graph input, or memory not planned)",
                node.name
            )
        })?;
        let buf = g.buffers.get(&placement.buffer).ok_or_else(|| {
            format!(
                "`{}` is placed in unknown buffer `{}`",
                node.name, placement.buffer
            )
        })?;
        let offset = buf
            .offset
            .ok_or_else(|| format!("buffer `{}` has no arena offset", placement.buffer))?;
        let dims = |t: &ir::TensorType| match *t.shape.as_slice() {
            [n, c, h, w] => Some((n, c, h, w)),
            [n, c] => Some((n, c, 1, 1)),
            _ => None,
        };
        let ((n, c, h, w), (_, stride, ..)) = dims(&node.ty)
            .zip(dims(&buf.ty))
            .ok_or_else(|| format!("`{}` is not a rank-4 or rank-2 value", node.name))?;
        let view = View {
            offset,
            n,
            h,
            w,
            channels: c,
            pixel_stride: stride,
            channel_offset: placement.channel_offset,
            border: buf.border,
            bf16: false,
        };
        view.validate(&node.name)?;
        Ok(view)
    }

    /// The same view of a buffer stored with a zero border.
    pub fn with_border(self, border: [usize; 2]) -> View {
        View { border, ..self }
    }

    /// Bytes per element: [`ELEM_BYTES`], or [`BF16_BYTES`] for a bf16 view.
    pub fn elem_bytes(&self) -> usize {
        if self.bf16 {
            BF16_BYTES
        } else {
            ELEM_BYTES
        }
    }

    /// `n * h * w` (real pixels, border excluded).
    pub fn pixels(&self) -> usize {
        self.n * self.h * self.w
    }

    /// No border: pixel `p` (row-major over n, h, w) is `p · pixel_stride`
    /// past the first.
    pub fn is_flat(&self) -> bool {
        self.border == [0, 0]
    }

    /// Elements between vertically adjacent pixels.
    pub fn row_stride(&self) -> usize {
        (self.w + 2 * self.border[1]) * self.pixel_stride
    }

    /// Elements between the same pixel of consecutive images.
    pub fn image_stride(&self) -> usize {
        (self.h + 2 * self.border[0]) * self.row_stride()
    }

    /// Arena element index (in [`View::elem_bytes`] units) of the view's element `(0, 0, 0, 0)`.
    pub fn first_element(&self) -> usize {
        self.offset / self.elem_bytes()
            + self.border[0] * self.row_stride()
            + self.border[1] * self.pixel_stride
            + self.channel_offset
    }

    /// Arena element index of element `(n, h, w, c)` of the view.
    pub fn element(&self, n: usize, h: usize, w: usize, c: usize) -> usize {
        self.first_element()
            + n * self.image_stride()
            + h * self.row_stride()
            + w * self.pixel_stride
            + c
    }

    /// Bytes from the view's first stored element (border included) to one
    /// past its last.
    pub fn byte_range(&self) -> std::ops::Range<usize> {
        let e = self.elem_bytes();
        let start = self.offset + e * self.channel_offset;
        let stored = self.n * (self.h + 2 * self.border[0]) * (self.w + 2 * self.border[1]);
        let last = stored.saturating_sub(1) * self.pixel_stride;
        let end = self.offset + e * (last + self.channel_offset + self.channels);
        start..end
    }

    /// Arena bytes the view needs (end of its byte range).
    pub fn end_bytes(&self) -> usize {
        self.byte_range().end
    }

    pub(crate) fn validate(&self, what: &str) -> Result<(), String> {
        if self.n == 0 || self.h == 0 || self.w == 0 || self.channels == 0 {
            return Err(format!("{what} view has an empty extent: {self:?}"));
        }
        if !self.offset.is_multiple_of(ELEM_BYTES) {
            return Err(format!(
                "{what} view offset {} is not a multiple of 4",
                self.offset
            ));
        }
        if self.bf16 && !self.channel_offset.is_multiple_of(2) {
            return Err(format!(
                "{what} bf16 view starts at odd channel {} (its kernels address 32-bit words)",
                self.channel_offset
            ));
        }
        let fits = self
            .channel_offset
            .checked_add(self.channels)
            .is_some_and(|end| end <= self.pixel_stride);
        if !fits {
            return Err(format!(
                "{what} view channels {}..{}+{} exceed the pixel stride {}",
                self.channel_offset, self.channel_offset, self.channels, self.pixel_stride
            ));
        }
        let padded = |x: usize, b: usize| b.checked_mul(2).and_then(|b| b.checked_add(x));
        let bytes = padded(self.h, self.border[0])
            .zip(padded(self.w, self.border[1]))
            .and_then(|(h, w)| h.checked_mul(w))
            .and_then(|p| p.checked_mul(self.n))
            .and_then(|p| p.checked_mul(self.pixel_stride))
            .and_then(|e| e.checked_mul(self.elem_bytes()))
            .and_then(|b| b.checked_add(self.offset));
        match bytes {
            // Keep every address computation comfortably inside i64.
            Some(b) if b < (1usize << 46) => Ok(()),
            _ => Err(format!("{what} view is too large: {self:?}")),
        }
    }

    /// Whether two views share a byte in the arena, taking the channel
    /// interleaving of views of one buffer into account.
    pub fn overlaps(&self, other: &View) -> bool {
        let (a, b) = (self.byte_range(), other.byte_range());
        if a.end <= b.start || b.end <= a.start {
            return false;
        }
        let same_buffer = self.offset == other.offset
            && self.bf16 == other.bf16
            && self.pixel_stride == other.pixel_stride
            && self.border == other.border
            && (self.n, self.h, self.w) == (other.n, other.h, other.w);
        if same_buffer {
            let (sa, sb) = (self.channel_offset, other.channel_offset);
            return sa < sb + other.channels && sb < sa + self.channels;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bordered_addressing() {
        let v = View::dense(64, 2, 3, 4, 10).slice(2, 5).with_border([1, 2]);
        // Row of 4 + 2·2 pixels of 10 floats; image of 3 + 2 rows.
        assert_eq!(v.row_stride(), 80);
        assert_eq!(v.image_stride(), 400);
        assert_eq!(v.first_element(), 16 + 80 + 20 + 2);
        assert_eq!(v.element(1, 2, 3, 4), 16 + 400 + 3 * 80 + 5 * 10 + 2 + 4);
        // Two images of 5x8 stored pixels; the last stored element is
        // channel 6 of the last pixel.
        assert_eq!(v.byte_range(), 64 + 8..64 + 4 * (79 * 10 + 7));
        assert!(v.validate("v").is_ok());
    }

    #[test]
    fn view_of_a_planned_value() {
        use ir::{Buffer, Graph, Op, Placement, TensorType};
        let mut g = Graph::new("g");
        let x = g
            .add_input("x", TensorType::f32([2, 8, 5, 5]))
            .expect("input");
        let y = g.add_node("y", Op::Relu, &[x]).expect("relu");
        let mut buf = Buffer::new(TensorType::f32([2, 20, 5, 5]));
        buf.border = [1, 1];
        buf.offset = Some(256);
        g.buffers.insert("blk".into(), buf);
        assert!(View::of_value(&g, y).is_err());
        g.node_mut(y).placement = Some(Placement {
            buffer: "blk".into(),
            channel_offset: 12,
        });
        let v = View::of_value(&g, y).expect("view");
        assert_eq!(
            v,
            View::dense(256, 2, 5, 5, 20)
                .slice(12, 8)
                .with_border([1, 1])
        );
        assert!(View::of_value(&g, x).is_err());
    }

    #[test]
    fn slices_of_one_buffer_do_not_overlap() {
        let buf = View::dense(0, 1, 4, 4, 32);
        assert!(!buf.slice(0, 16).overlaps(&buf.slice(16, 8)));
        assert!(buf.slice(0, 17).overlaps(&buf.slice(16, 8)));
        let other = View::dense(4, 1, 4, 4, 32);
        assert!(other.slice(0, 1).overlaps(&buf.slice(16, 8)));
    }
}
