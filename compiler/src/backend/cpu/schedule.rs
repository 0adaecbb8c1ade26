//! Batch tiling of the schedule: run a run of consecutive kernels image
//! group by image group, so that a large batch's activations stay in cache
//! between the kernels of a dense block instead of streaming through DRAM
//! once per kernel.
//!
//! A *segment* `[start, end)` of the kernel list with a *chunk* of `c`
//! images runs as `for g in 0..n/c { for k in start..end { kernel k on
//! images [g·c, (g+1)·c) } }`. Every kernel is per-image (convs, pools,
//! affines, the global pool, and linear as a 1x1 conv over `N` pixels), so
//! each kernel is planned for `c` images and shifted to group `g` by
//! `g·c·image_stride` of each view (`env::group_base`).
//!
//! The reordering is only valid where the memory plan's reuse of arena bytes
//! (planned for kernel order over the whole batch) cannot be observed:
//! - values *internal* to the segment (written in it, then read only in it)
//!   follow kernel order within each group, so they may share bytes as
//!   planned;
//! - values *external* to it (read in it but written before it, written in
//!   it but read after it or returned) hold images of every group at once:
//!   no kernel of the segment may write a different buffer overlapping
//!   them. Views of one buffer never conflict across groups (their images
//!   are disjoint).
//!
//! [`segments`] grows segments greedily under that rule and picks for each
//! the largest chunk (a divisor of the batch) whose working set fits a byte
//! budget.

use crate::backend::kernel::{KernelDesc, View};

/// Default activation bytes per image group: a share of the L3 (a few
/// times the L2) of the machines we target, leaving room for the weights
/// and for other processes. On the 2-core EPYC, BC-100 at batch 64 spent
/// about the same CPU time at 1, 2 and 4 MiB and more at 8 and 16 MiB;
/// the largest of the good ones keeps the fewest `parallel_for` calls.
pub const DEFAULT_TILE_BYTES: usize = 4 << 20;

/// Kernels `start..end` run in image groups of `chunk` images (`chunk ==
/// batch`: one group, the plain kernel order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub start: usize,
    pub end: usize,
    pub chunk: usize,
}

impl Segment {
    pub fn groups(&self, batch: usize) -> usize {
        batch / self.chunk
    }
}

/// The same buffer (geometry and place): its views address image `n` at
/// the same bytes whatever their channels.
fn same_buffer(a: &View, b: &View) -> bool {
    a.offset == b.offset
        && a.bf16 == b.bf16
        && a.pixel_stride == b.pixel_stride
        && a.border == b.border
        && (a.n, a.h, a.w) == (b.n, b.h, b.w)
}

/// `a` writes every element `b` reads.
fn covers(a: &View, b: &View) -> bool {
    same_buffer(a, b)
        && a.channel_offset <= b.channel_offset
        && b.channel_offset + b.channels <= a.channel_offset + a.channels
}

fn bytes_meet(a: &View, b: &View) -> bool {
    let (x, y) = (a.byte_range(), b.byte_range());
    x.start < y.end && y.start < x.end
}

/// Whether `ks[start..end]` may run group by group (see the module docs).
/// `live_out` are views that must hold their values after the last kernel.
pub fn is_tileable(ks: &[KernelDesc], start: usize, end: usize, live_out: &[View]) -> bool {
    let seg = &ks[start..end];
    let mut external: Vec<View> = Vec::new();
    for (i, k) in seg.iter().enumerate() {
        // Read before written in the segment (conservatively: unless one
        // earlier kernel of the segment wrote all of it).
        if !seg[..i].iter().any(|w| covers(&w.output, &k.input)) {
            external.push(k.input);
        }
        let o = &k.output;
        let read_later = seg[i + 1..].iter().any(|r| r.input.overlaps(o));
        let read_after = ks[end..].iter().any(|r| r.input.overlaps(o));
        let returned = live_out.iter().any(|v| v.overlaps(o));
        if !read_later || read_after || returned {
            external.push(*o);
        }
    }
    seg.iter().all(|k| {
        external
            .iter()
            .all(|x| same_buffer(x, &k.output) || !bytes_meet(x, &k.output))
    })
}

/// Bytes per image of every buffer the kernels touch (each buffer once).
fn bytes_per_image(ks: &[KernelDesc]) -> usize {
    let mut seen: Vec<View> = Vec::new();
    for v in ks.iter().flat_map(|k| [k.input, k.output]) {
        if !seen.iter().any(|s| same_buffer(s, &v)) {
            seen.push(v);
        }
    }
    seen.iter().map(|v| v.image_stride() * v.elem_bytes()).sum()
}

/// Split `ks` (all of batch `ks[0].input.n`) into segments; a segment of
/// one kernel, or whose whole batch fits `tile_bytes`, keeps the batch as
/// its chunk. `tile_bytes == 0` turns tiling off.
pub fn segments(ks: &[KernelDesc], live_out: &[View], tile_bytes: usize) -> Vec<Segment> {
    let Some(batch) = ks.first().map(|k| k.input.n) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut start = 0;
    while start < ks.len() {
        let mut end = start + 1;
        if tile_bytes > 0 && batch > 1 {
            while end < ks.len() && is_tileable(ks, start, end + 1, live_out) {
                end += 1;
            }
        }
        let per_image = bytes_per_image(&ks[start..end]).max(1);
        let fits = (tile_bytes / per_image).max(1);
        let chunk = if end - start < 2 || tile_bytes == 0 {
            batch
        } else {
            (1..=batch)
                .rev()
                .find(|c| batch.is_multiple_of(*c) && *c <= fits)
                .unwrap_or(1)
        };
        out.push(Segment { start, end, chunk });
        start = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::kernel::{Affine, KernelOp};
    use std::sync::Arc;

    fn affine(name: &str, input: View, output: View) -> KernelDesc {
        KernelDesc {
            name: name.into(),
            op: KernelOp::Affine(Affine {
                scale: Arc::new(vec![1.0; input.channels]),
                shift: Arc::new(vec![0.0; input.channels]),
                relu: false,
            }),
            input,
            output,
            output_to_next_only: false,
        }
    }

    #[test]
    fn a_chain_through_distinct_buffers_tiles() {
        let a = View::dense(0, 8, 4, 4, 16);
        let b = View::dense(a.end_bytes(), 8, 4, 4, 16);
        let c = View::dense(b.end_bytes(), 8, 4, 4, 16);
        let ks = [affine("k0", a, b), affine("k1", b, c)];
        assert!(is_tileable(&ks, 0, 2, &[c]));
        let per_image = 3 * 4 * 4 * 16 * 4;
        let segs = segments(&ks, &[c], 2 * per_image);
        assert_eq!(
            segs,
            [Segment {
                start: 0,
                end: 2,
                chunk: 2
            }]
        );
        assert_eq!(segments(&ks, &[c], 0)[0].chunk, 8);
        assert_eq!(segments(&ks, &[c], 1 << 30)[0].chunk, 8);
    }

    #[test]
    fn reused_bytes_of_an_external_value_stop_the_segment() {
        // k1's output reuses k0's input bytes (dead in kernel order) with
        // twice the bytes per image: group 0's k1 would clobber group 1's
        // input before group 1's k0 reads it.
        let a = View::dense(0, 4, 4, 4, 16);
        let a2 = View::dense(0, 4, 4, 4, 32);
        let b = View::dense(a2.end_bytes(), 4, 4, 4, 16);
        let ks = [affine("k0", a, b), affine("k1", b, a2)];
        assert!(!is_tileable(&ks, 0, 2, &[a2]));
        let segs = segments(&ks, &[a2], 1);
        assert!(segs.iter().all(|s| s.end - s.start == 1 && s.chunk == 4));
        // The same buffer rewritten image by image is fine.
        let ks = [affine("k0", a, b), affine("k1", b, a)];
        assert!(is_tileable(&ks, 0, 2, &[a]));
    }

    #[test]
    fn internal_values_may_share_bytes() {
        // t1 reuses t0's bytes after t0's last read: both internal.
        let x = View::dense(0, 4, 4, 4, 8);
        let t0 = View::dense(x.end_bytes(), 4, 4, 4, 8);
        let t1 = t0;
        let y = View::dense(t0.end_bytes(), 4, 4, 4, 16);
        let ks = [
            affine("a", x, t0),
            affine("b", t0, y.slice(0, 8)),
            affine("c", y.slice(0, 8), t1),
            affine("d", t1, y.slice(8, 8)),
        ];
        assert!(is_tileable(&ks, 0, 4, &[y]));
    }
}
