//! Moving the caller's tensors in and out of the arena: the caller's input is NCHW (or NC),
//! the generated code reads it from an NHWC view of the arena (`TensorSpec::view`), and the
//! same the other way round for the output.

use crate::artefact::{ArenaView, TensorSpec};

/// The element index in the arena of `(n, h, w, c)` of `view`.
fn at(view: &ArenaView, base: usize, n: usize, h: usize, w: usize) -> usize {
    base + ((n * view.h + h) * view.w + w) * view.pixel_stride + view.channel_offset
}

/// The view's first element index (its offset in f32 elements).
fn base(view: &ArenaView) -> usize {
    // The manifest check guarantees offset % 4 == 0 and that the view fits the arena.
    (view.offset / 4) as usize
}

/// Copies `src` (the caller's tensor of `spec.shape`) into the arena at `spec.view`.
///
/// The manifest check guarantees that the view matches the shape and fits in `arena`, and the
/// caller checked `src.len()`. An RGB image into a dense 3-channel view (DenseNet's input)
/// takes an interleaving loop of its own, which the compiler vectorises.
pub fn copy_in(spec: &TensorSpec, src: &[f32], arena: &mut [f32]) {
    let v = &spec.view;
    let plane = v.h * v.w;
    for n in 0..v.n {
        let image = at(v, base(v), n, 0, 0);
        let planes = &src[n * v.channels * plane..][..v.channels * plane];
        if v.channels == 3 && v.pixel_stride == 3 {
            let (r, gb) = planes.split_at(plane);
            let (g, b) = gb.split_at(plane);
            let to = arena[image..][..3 * plane].chunks_exact_mut(3);
            for (px, ((r, g), b)) in to.zip(r.iter().zip(g).zip(b)) {
                px.copy_from_slice(&[*r, *g, *b]);
            }
            continue;
        }
        for p in 0..plane {
            let px = &mut arena[image + p * v.pixel_stride..][..v.channels];
            for (c, d) in px.iter_mut().enumerate() {
                *d = planes[c * plane + p];
            }
        }
    }
}

/// Copies the arena's `spec.view` out into `dst` (the caller's tensor of `spec.shape`).
pub fn copy_out(spec: &TensorSpec, arena: &[f32], dst: &mut [f32]) {
    let v = &spec.view;
    let plane = v.h * v.w;
    for n in 0..v.n {
        let image = at(v, base(v), n, 0, 0);
        for c in 0..v.channels {
            let to = &mut dst[(n * v.channels + c) * plane..][..plane];
            let from = arena[image + c..].iter().step_by(v.pixel_stride);
            for (d, s) in to.iter_mut().zip(from) {
                *d = *s;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nchw_to_a_strided_nhwc_slice_and_back() {
        // [2, 3, 2, 2] stored as channels 1..4 of a 5-channel buffer at byte 16.
        let mut spec = TensorSpec::f32("x", &[2, 3, 2, 2], 16);
        spec.view.pixel_stride = 5;
        spec.view.channel_offset = 1;
        let src: Vec<f32> = (0..24).map(|i| i as f32).collect();
        let mut arena = vec![-1.0f32; 4 + 2 * 2 * 2 * 5];
        copy_in(&spec, &src, &mut arena);
        // Pixel (n=1, h=0, w=1), channel 2 of the view: NCHW index ((1*3+2)*2+0)*2+1 = 21.
        let (n, h, w) = (1, 0, 1);
        let pixel = 4 + ((n * 2 + h) * 2 + w) * 5;
        assert_eq!(arena[pixel + 1 + 2], 21.0);
        assert_eq!(
            arena[pixel], -1.0,
            "channels outside the view are untouched"
        );
        let mut back = vec![0.0; 24];
        copy_out(&spec, &arena, &mut back);
        assert_eq!(back, src);
    }

    #[test]
    fn an_rgb_image_into_a_dense_view() {
        // [2, 3, 3, 5]: the interleaving loop of a dense 3-channel view.
        let (n, h, w) = (2, 3, 5);
        let spec = TensorSpec::f32("x", &[n, 3, h, w], 8);
        let src: Vec<f32> = (0..n * 3 * h * w).map(|i| i as f32).collect();
        let mut arena = vec![-1.0f32; 2 + n * h * w * 3 + 1];
        copy_in(&spec, &src, &mut arena);
        for i in 0..n {
            for p in 0..h * w {
                for c in 0..3 {
                    let want = src[(i * 3 + c) * h * w + p];
                    assert_eq!(arena[2 + (i * h * w + p) * 3 + c], want, "{i} {p} {c}");
                }
            }
        }
        assert_eq!((arena[1], arena[arena.len() - 1]), (-1.0, -1.0));
        let mut back = vec![0.0; src.len()];
        copy_out(&spec, &arena, &mut back);
        assert_eq!(back, src);
    }

    #[test]
    fn logits_are_a_one_pixel_view() {
        let spec = TensorSpec::f32("logits", &[2, 3], 0);
        let arena = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let mut out = [0.0; 6];
        copy_out(&spec, &arena, &mut out);
        assert_eq!(out, arena);
    }
}
