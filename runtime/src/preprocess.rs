//! Model inputs from files: a `.npy` tensor as it is, or an image preprocessed exactly as
//! torchvision's ImageNet evaluation transform does it for a PIL image:
//!
//! ```text
//! PIL.Image.open(f).convert("RGB")
//! Resize(256)          shorter side to 256, aspect kept: Pillow's BILINEAR resampling (a
//!                      triangle filter whose support grows with the downscale factor, i.e.
//!                      antialiased), fixed-point on uint8 with Pillow's rounding
//! CenterCrop(224)      offsets rounded as torchvision does (Python's round, half to even)
//! ToTensor()           uint8 / 255 in f32, CHW
//! Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])   in f32
//! ```
//!
//! For a model compiled at another image size S the same chain runs with
//! `Resize(round(S·256/224))` and `CenterCrop(S)` ([`resize_for_crop`]). On PNG the result is
//! bit-identical to Pillow 13 + NumPy (`tools/gen_image_fixtures.py`, `tests/preprocess.rs`);
//! Pillow before 13 orders the two resampling passes differently when the height shrinks much
//! more than the width, which can move a pixel by one uint8 step ([`resize_bilinear`]).
//! JPEG is decoded by `zune-jpeg` (through the `image` crate), whose IDCT and chroma
//! upsampling differ slightly from libjpeg's, so JPEG inputs are close to, not identical with,
//! what PIL decodes.
//!
//! Everything that decodes images is behind the default-on `image` cargo feature; without it
//! [`load_input`] still reads `.npy` files and rejects images with a clear error.

use std::path::Path;

use crate::npy::{self, Array};
use crate::{Error, Model, Result};

/// The ImageNet channel means torchvision's models were trained with (RGB).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// The ImageNet channel standard deviations (RGB).
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// The shorter side an image is resized to before a centre crop of `crop` pixels:
/// `round(crop·256/224)`, so 256 for 224 (crop·8/7 is never halfway between two integers).
pub fn resize_for_crop(crop: usize) -> usize {
    (crop * 256 + 112) / 224
}

/// The model's input for the file at `path`: a `.npy` float32 tensor as it is (its shape is
/// checked when the session runs), or an image (recognised by its magic bytes: PNG, JPEG)
/// preprocessed as torchvision's ImageNet eval transform at the model's input size and
/// repeated over the model's batch. Images need a 3-channel model.
pub fn load_input(path: impl AsRef<Path>, model: &Model) -> Result<Array> {
    let path = path.as_ref();
    // The I/O error as the reason, so that an error chain does not print it twice.
    let bytes = std::fs::read(path).map_err(|e| input_error(path, e.to_string()))?;
    if bytes.starts_with(b"\x93NUMPY") {
        return npy::from_bytes(&bytes).map_err(|reason| Error::Input {
            path: path.to_owned(),
            reason,
        });
    }
    image_input(path, &bytes, model.input_shape())
}

fn input_error(path: &Path, reason: impl Into<String>) -> Error {
    Error::Input {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// Checks that a model with input shape `shape` can take an image; returns (batch, height, width).
fn image_geometry(path: &Path, shape: &[usize]) -> Result<(usize, usize, usize)> {
    match *shape {
        [n, 3, h, w] if h > 0 && w > 0 => Ok((n, h, w)),
        [_, c, _, _] => Err(input_error(
            path,
            format!(
                "the model takes {c} input channels; an image gives 3 (RGB): pass a .npy tensor of shape {shape:?}"
            ),
        )),
        _ => Err(input_error(
            path,
            format!("the model's input shape {shape:?} is not an NCHW image batch"),
        )),
    }
}

#[cfg(not(feature = "image"))]
fn image_input(path: &Path, _bytes: &[u8], shape: &[usize]) -> Result<Array> {
    image_geometry(path, shape)?;
    Err(input_error(
        path,
        "not a .npy file, and this runtime was built without the `image` feature, so images are not supported",
    ))
}

#[cfg(feature = "image")]
fn image_input(path: &Path, bytes: &[u8], shape: &[usize]) -> Result<Array> {
    let (n, h, w) = image_geometry(path, shape)?;
    let img = decode(bytes).map_err(|reason| input_error(path, reason))?;
    // Resize(S) scales the longer side by the same factor: a 1×100000 strip would need a
    // resized image of gigabytes before the crop.
    let (short, long) = (img.width().min(img.height()), img.width().max(img.height()));
    let resized_long = resize_for_crop(h.max(w)) as f64 * f64::from(long) / f64::from(short);
    if resized_long > f64::from(1u32 << 16) {
        return Err(input_error(
            path,
            format!(
                "a {}×{} image is too elongated to resize (its longer side would become {resized_long:.0} pixels)",
                img.width(),
                img.height()
            ),
        ));
    }
    let one = imagenet_sized(&img, h, w);
    // The batch comes from the artefact: a failed allocation is an error, not an abort.
    let mut data = Vec::new();
    data.try_reserve_exact(n.saturating_mul(one.len()))
        .map_err(|_| Error::OutOfMemory {
            what: "input batch",
            bytes: n.saturating_mul(one.len()).saturating_mul(4),
        })?;
    for _ in 0..n {
        data.extend_from_slice(&one);
    }
    Ok(Array {
        shape: vec![n, 3, h, w],
        data,
    })
}

#[cfg(feature = "image")]
pub use self::imaging::*;

#[cfg(feature = "image")]
mod imaging {
    use std::path::Path;

    pub use image;
    use image::{DynamicImage, RgbImage};

    use super::{input_error, resize_for_crop, IMAGENET_MEAN, IMAGENET_STD};
    use crate::Result;

    /// Decodes an image file's bytes (PNG or JPEG, recognised by their magic bytes). EXIF
    /// orientation is not applied, as PIL's `Image.open` does not apply it.
    pub fn decode(bytes: &[u8]) -> std::result::Result<DynamicImage, String> {
        let format = image::guess_format(bytes)
            .map_err(|_| "not a .npy file nor an image format this runtime decodes (PNG, JPEG)")?;
        match format {
            image::ImageFormat::Png | image::ImageFormat::Jpeg => {}
            f => return Err(format!("{f:?} images are not supported (PNG and JPEG are)")),
        }
        image::load_from_memory_with_format(bytes, format)
            .map_err(|e| format!("cannot decode the {format:?} image: {e}"))
    }

    /// Reads and decodes the image at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<DynamicImage> {
        let path = path.as_ref();
        // The I/O error as the reason, so that an error chain does not print it twice.
        let bytes = std::fs::read(path).map_err(|e| input_error(path, e.to_string()))?;
        decode(&bytes).map_err(|reason| input_error(path, reason))
    }

    /// The image as a `[1, 3, size, size]` NCHW tensor, preprocessed as torchvision's ImageNet
    /// eval transform with `Resize(round(size·256/224))` and `CenterCrop(size)`.
    pub fn imagenet(img: &DynamicImage, size: usize) -> Vec<f32> {
        imagenet_sized(img, size, size)
    }

    /// [`imagenet`] for a `height`×`width` crop; the shorter side is resized to
    /// `round(max(height, width)·256/224)`.
    pub fn imagenet_sized(img: &DynamicImage, height: usize, width: usize) -> Vec<f32> {
        let rgb = to_rgb8(img);
        let resized = resize_shorter(&rgb, resize_for_crop(height.max(width)));
        normalize(&center_crop(&resized, width, height))
    }

    /// The image as PIL's `.convert("RGB")` makes it: grey is replicated, alpha is dropped
    /// (not composited), a palette PNG is looked up (the decoder expands it). For 16-bit PNGs,
    /// as Pillow reads them: RGB, RGBA and grey+alpha keep the high byte of each sample; grey
    /// alone (Pillow's `I;16`) is clipped to 255.
    pub fn to_rgb8(img: &DynamicImage) -> RgbImage {
        let (w, h) = (img.width(), img.height());
        let grey = |v: u8| image::Rgb([v, v, v]);
        match img {
            DynamicImage::ImageRgb8(b) => b.clone(),
            DynamicImage::ImageLuma8(b) => {
                RgbImage::from_fn(w, h, |x, y| grey(b.get_pixel(x, y)[0]))
            }
            DynamicImage::ImageLumaA8(b) => {
                RgbImage::from_fn(w, h, |x, y| grey(b.get_pixel(x, y)[0]))
            }
            DynamicImage::ImageRgba8(b) => RgbImage::from_fn(w, h, |x, y| {
                let p = b.get_pixel(x, y);
                image::Rgb([p[0], p[1], p[2]])
            }),
            DynamicImage::ImageLuma16(b) => {
                RgbImage::from_fn(w, h, |x, y| grey(b.get_pixel(x, y)[0].min(255) as u8))
            }
            DynamicImage::ImageLumaA16(b) => {
                RgbImage::from_fn(w, h, |x, y| grey((b.get_pixel(x, y)[0] >> 8) as u8))
            }
            DynamicImage::ImageRgb16(b) => RgbImage::from_fn(w, h, |x, y| {
                let p = b.get_pixel(x, y);
                image::Rgb([(p[0] >> 8) as u8, (p[1] >> 8) as u8, (p[2] >> 8) as u8])
            }),
            DynamicImage::ImageRgba16(b) => RgbImage::from_fn(w, h, |x, y| {
                let p = b.get_pixel(x, y);
                image::Rgb([(p[0] >> 8) as u8, (p[1] >> 8) as u8, (p[2] >> 8) as u8])
            }),
            other => other.to_rgb8(),
        }
    }

    /// torchvision's `Resize(size)` with an int size on a PIL image: the shorter side becomes
    /// `size`, the longer `int(size·long/short)` (truncated, computed in f64 as Python does).
    pub fn resize_shorter(img: &RgbImage, size: usize) -> RgbImage {
        let (w, h) = (img.width() as usize, img.height() as usize);
        let (short, long) = if w <= h { (w, h) } else { (h, w) };
        let new_long = ((size * long) as f64 / short as f64) as usize;
        let (nw, nh) = if w <= h {
            (size, new_long)
        } else {
            (new_long, size)
        };
        resize_bilinear(img, nw, nh)
    }

    /// Pillow's fixed-point precision for 8-bit resampling (`Resample.c`).
    const PRECISION_BITS: u32 = 32 - 8 - 2;

    /// Per output pixel: the first input pixel, the number of taps, and `ksize` fixed-point
    /// weights.
    struct Coeffs {
        bounds: Vec<(usize, usize)>,
        ksize: usize,
        k: Vec<i32>,
    }

    /// Pillow's `precompute_coeffs` and `normalize_coeffs_8bpc` for the bilinear (triangle)
    /// filter over the whole input (`box = (0, 0, in_size)`). The arithmetic, including the
    /// truncating casts, is Pillow's, so the weights are bit-identical.
    fn coeffs(in_size: usize, out_size: usize) -> Coeffs {
        let scale = in_size as f64 / out_size as f64;
        let filterscale = scale.max(1.0);
        // The triangle filter's support is 1, widened by the downscale factor (antialiasing).
        let support = filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        let mut bounds = Vec::with_capacity(out_size);
        let mut k = vec![0i32; out_size * ksize];
        let mut w = vec![0f64; ksize];
        let triangle = |x: f64| {
            let x = x.abs();
            if x < 1.0 {
                1.0 - x
            } else {
                0.0
            }
        };
        for xx in 0..out_size {
            let center = (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filterscale;
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) - xmin;
            let (xmin, xmax) = (xmin as usize, (xmax.max(0) as usize).min(ksize));
            let mut ww = 0.0;
            for (x, wx) in w.iter_mut().enumerate().take(xmax) {
                *wx = triangle(((x + xmin) as f64 - center + 0.5) * ss);
                ww += *wx;
            }
            for (x, wx) in w.iter().enumerate().take(xmax) {
                let v = if ww != 0.0 { wx / ww } else { *wx };
                let scaled = v * f64::from(1u32 << PRECISION_BITS);
                k[xx * ksize + x] = if v < 0.0 {
                    (-0.5 + scaled) as i32
                } else {
                    (0.5 + scaled) as i32
                };
            }
            bounds.push((xmin, xmax));
        }
        Coeffs { bounds, ksize, k }
    }

    /// Pillow's `clip8`: round (the accumulator starts at one half), shift out the fraction,
    /// saturate.
    fn clip8(v: i64) -> u8 {
        if v >= 1 << (PRECISION_BITS + 8) {
            255
        } else if v <= 0 {
            0
        } else {
            (v >> PRECISION_BITS) as u8
        }
    }

    /// `Image.resize((width, height), Image.BILINEAR)` on an RGB image, as Pillow 13 computes
    /// it (`ImagingResampleInner`): two separable passes in 8-bit fixed point with Pillow's
    /// rounding, each skipped when that dimension keeps its size. The horizontal pass runs
    /// first (over only the rows the vertical pass reads) unless the height shrinks by more
    /// than twice as many pixels as the width does; then the vertical pass runs first. (Pillow
    /// before 13 always ran the horizontal pass first; the two orders can differ by one uint8
    /// step.)
    pub fn resize_bilinear(img: &RgbImage, width: usize, height: usize) -> RgbImage {
        let (w, h) = (img.width() as usize, img.height() as usize);
        if width == 0 || height == 0 || w == 0 || h == 0 {
            return RgbImage::new(width as u32, height as u32);
        }
        let src = img.as_raw();
        let (need_h, need_v) = (width != w, height != h);
        let shrink_h = h as i64 - height as i64;
        let horizontal_first = !(shrink_h > 0 && shrink_h > (w as i64 - width as i64) * 2);
        let out = if horizontal_first {
            let vert = coeffs(h, height);
            if need_h {
                // Only the rows the vertical pass reads.
                let first = vert.bounds.first().map_or(0, |b| b.0);
                let last = vert.bounds.last().map_or(h, |b| b.0 + b.1);
                let tmp = horizontal(src, w, first..last, &coeffs(w, width));
                if need_v {
                    vertical(&tmp, width, first, &vert)
                } else {
                    tmp
                }
            } else {
                vertical(src, w, 0, &vert)
            }
        } else {
            let tmp = vertical(src, w, 0, &coeffs(h, height));
            if need_h {
                horizontal(&tmp, w, 0..height, &coeffs(w, width))
            } else {
                tmp
            }
        };
        RgbImage::from_raw(width as u32, height as u32, out)
            .unwrap_or_else(|| RgbImage::new(width as u32, height as u32))
    }

    /// Pillow's `ImagingResampleHorizontal_8bpc` over `rows` of an RGB image `w` pixels wide.
    fn horizontal(src: &[u8], w: usize, rows: std::ops::Range<usize>, c: &Coeffs) -> Vec<u8> {
        let width = c.bounds.len();
        let mut out = vec![0u8; rows.len() * width * 3];
        for (y, row) in rows.enumerate() {
            let line = &src[row * w * 3..(row + 1) * w * 3];
            for (xx, &(xmin, n)) in c.bounds.iter().enumerate() {
                let mut acc = [1i64 << (PRECISION_BITS - 1); 3];
                for (x, &k) in c.k[xx * c.ksize..xx * c.ksize + n].iter().enumerate() {
                    let p = &line[(xmin + x) * 3..(xmin + x) * 3 + 3];
                    for ch in 0..3 {
                        acc[ch] += i64::from(p[ch]) * i64::from(k);
                    }
                }
                for ch in 0..3 {
                    out[(y * width + xx) * 3 + ch] = clip8(acc[ch]);
                }
            }
        }
        out
    }

    /// Pillow's `ImagingResampleVertical_8bpc` on an RGB image `w` pixels wide whose first row
    /// is row `row0` of the image the coefficients were computed for.
    fn vertical(src: &[u8], w: usize, row0: usize, c: &Coeffs) -> Vec<u8> {
        let height = c.bounds.len();
        let mut out = vec![0u8; height * w * 3];
        for (yy, &(ymin, n)) in c.bounds.iter().enumerate() {
            let k = &c.k[yy * c.ksize..yy * c.ksize + n];
            for xx in 0..w {
                let mut acc = [1i64 << (PRECISION_BITS - 1); 3];
                for (y, &ky) in k.iter().enumerate() {
                    let p = &src[((ymin + y - row0) * w + xx) * 3..][..3];
                    for ch in 0..3 {
                        acc[ch] += i64::from(p[ch]) * i64::from(ky);
                    }
                }
                for ch in 0..3 {
                    out[(yy * w + xx) * 3 + ch] = clip8(acc[ch]);
                }
            }
        }
        out
    }

    /// torchvision's crop offset: `int(round((size - crop) / 2.0))`, Python's round (half to
    /// even); a crop larger than the image is padded with zeros on both sides as
    /// torchvision's `center_crop` pads (`(crop - size) // 2` before).
    fn crop_offset(size: usize, crop: usize) -> isize {
        if crop > size {
            -(((crop - size) / 2) as isize)
        } else {
            let d = size - crop;
            let k = d / 2;
            // d/2 is k or k + 0.5; a half rounds to the even neighbour.
            (if d % 2 == 1 && k % 2 == 1 { k + 1 } else { k }) as isize
        }
    }

    /// torchvision's `CenterCrop((height, width))` on a PIL image.
    pub fn center_crop(img: &RgbImage, width: usize, height: usize) -> RgbImage {
        let (w, h) = (img.width() as isize, img.height() as isize);
        let left = crop_offset(w as usize, width);
        let top = crop_offset(h as usize, height);
        RgbImage::from_fn(width as u32, height as u32, |x, y| {
            let (sx, sy) = (x as isize + left, y as isize + top);
            if (0..w).contains(&sx) && (0..h).contains(&sy) {
                *img.get_pixel(sx as u32, sy as u32)
            } else {
                image::Rgb([0, 0, 0])
            }
        })
    }

    /// `ToTensor()` then ImageNet `Normalize`: CHW f32, `(v / 255 - mean) / std` in f32.
    pub fn normalize(img: &RgbImage) -> Vec<f32> {
        let (w, h) = (img.width() as usize, img.height() as usize);
        let mut out = vec![0f32; 3 * h * w];
        for (i, p) in img.pixels().enumerate() {
            for c in 0..3 {
                out[c * h * w + i] = (f32::from(p[c]) / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
            }
        }
        out
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn crop_offsets_round_half_to_even_like_python() {
            // round(0.5) = 0, round(1.5) = 2, round(2.5) = 2, round(3.5) = 4
            assert_eq!(crop_offset(225, 224), 0);
            assert_eq!(crop_offset(227, 224), 2);
            assert_eq!(crop_offset(229, 224), 2);
            assert_eq!(crop_offset(231, 224), 4);
            assert_eq!(crop_offset(256, 224), 16);
            assert_eq!(crop_offset(10, 14), -2);
        }

        #[test]
        fn resize_to_the_same_size_is_the_identity_and_constants_stay_constant() {
            let img = RgbImage::from_fn(7, 5, |x, y| image::Rgb([x as u8 * 30, y as u8 * 40, 7]));
            assert_eq!(resize_bilinear(&img, 7, 5), img);
            let flat = RgbImage::from_pixel(37, 23, image::Rgb([200, 13, 255]));
            for (w, h) in [(5, 3), (80, 41), (37, 9)] {
                let r = resize_bilinear(&flat, w, h);
                assert!(r.pixels().all(|p| p.0 == [200, 13, 255]), "{w}x{h}");
            }
        }

        #[test]
        fn resize_for_crop_is_torchvisions_ratio() {
            assert_eq!(super::super::resize_for_crop(224), 256);
            assert_eq!(super::super::resize_for_crop(32), 37);
            assert_eq!(super::super::resize_for_crop(299), 342);
        }
    }
}
