//! A dense f32 tensor in logical (PyTorch, C-order) layout, and the error
//! measures every parity test uses.

use crate::error::{IrError, Result};

/// A dense row-major (C-order) f32 tensor: `data[i]` is the element whose
/// multi-index, in `shape`'s order, is the row-major decomposition of `i`.
/// Four-dimensional activations are `[N, C, H, W]`.
///
/// The fields are public for convenience; [`Tensor::from_vec`] is the
/// checked constructor, and [`crate::reference::run`] re-checks every
/// tensor it is given.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Number of elements of `shape`, or an error on overflow.
pub(crate) fn checked_numel(shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| IrError::Exec(format!("shape {shape:?} has too many elements")))
}

impl Tensor {
    /// A tensor of zeros. Panics only if the element count overflows
    /// `usize`, which no allocatable tensor does.
    pub fn zeros(shape: impl Into<Vec<usize>>) -> Tensor {
        let shape = shape.into();
        let n = shape.iter().product();
        Tensor {
            shape,
            data: vec![0.0; n],
        }
    }

    /// A tensor from row-major data; errors unless `data.len()` is the
    /// product of `shape`.
    pub fn from_vec(shape: impl Into<Vec<usize>>, data: Vec<f32>) -> Result<Tensor> {
        let shape = shape.into();
        let n = checked_numel(&shape)?;
        if n != data.len() {
            return Err(IrError::Exec(format!(
                "{} values for shape {shape:?} ({n} elements)",
                data.len()
            )));
        }
        Ok(Tensor { shape, data })
    }

    /// A tensor whose element `i` (row-major) is `f(i)`.
    pub fn from_fn(shape: impl Into<Vec<usize>>, f: impl FnMut(usize) -> f32) -> Tensor {
        let shape = shape.into();
        let n: usize = shape.iter().product();
        Tensor {
            shape,
            data: (0..n).map(f).collect(),
        }
    }

    /// Deterministic pseudo-random values uniform in `[lo, hi)` (SplitMix64
    /// of `seed` and the index), for tests that need "some" data.
    pub fn random_uniform(shape: impl Into<Vec<usize>>, seed: u64, lo: f32, hi: f32) -> Tensor {
        let (lo, hi) = (f64::from(lo), f64::from(hi));
        Tensor::from_fn(shape, |i| {
            let u = splitmix64(seed ^ splitmix64(i as u64)) >> 11;
            let unit = u as f64 / (1u64 << 53) as f64;
            (lo + (hi - lo) * unit) as f32
        })
    }

    /// Number of elements.
    pub fn num_elements(&self) -> usize {
        self.data.len()
    }

    /// `(N, C, H, W)` of a rank-4 tensor.
    pub fn nchw(&self) -> Option<(usize, usize, usize, usize)> {
        match self.shape.as_slice() {
            &[n, c, h, w] => Some((n, c, h, w)),
            _ => None,
        }
    }

    /// The infinity norm `max_i |x_i|` (NaN if any element is NaN; 0 for an
    /// empty tensor).
    pub fn max_abs(&self) -> f64 {
        let mut m = 0.0f64;
        for &x in &self.data {
            let a = f64::from(x).abs();
            if a.is_nan() {
                return f64::NAN;
            }
            m = m.max(a);
        }
        m
    }

    /// `max_i |self_i - reference_i|`. Errors on a shape mismatch. Equal
    /// values (including equal infinities) differ by 0; a NaN on either side
    /// or an infinity on one side only gives `+inf`, so a comparison
    /// `err <= tol` fails on them.
    pub fn max_abs_diff(&self, reference: &Tensor) -> Result<f64> {
        self.check_same_shape(reference)?;
        let mut m = 0.0f64;
        for (&a, &b) in self.data.iter().zip(&reference.data) {
            m = m.max(elem_diff(a, b));
        }
        Ok(m)
    }

    /// The project's relative error: `||self - reference||_inf /
    /// max(||reference||_inf, TINY)` with `TINY = 1e-30`. Every parity test
    /// (reference vs PyTorch, backend vs reference) uses this measure and the
    /// bound `<= 1e-4`. Errors on a shape mismatch; NaN or one-sided
    /// infinities give `+inf`.
    pub fn rel_error(&self, reference: &Tensor) -> Result<f64> {
        const TINY: f64 = 1e-30;
        let diff = self.max_abs_diff(reference)?;
        let scale = reference.max_abs();
        if scale.is_nan() {
            return Ok(f64::INFINITY);
        }
        Ok(diff / scale.max(TINY))
    }

    /// An elementwise measure, for diagnosis only: `max_i |self_i -
    /// reference_i| / max(|reference_i|, floor)`. It is large wherever the
    /// reference is near zero, which is why tests use [`Tensor::rel_error`].
    pub fn max_elementwise_rel_error(&self, reference: &Tensor, floor: f64) -> Result<f64> {
        self.check_same_shape(reference)?;
        let floor = floor.max(1e-30);
        let mut m = 0.0f64;
        for (&a, &b) in self.data.iter().zip(&reference.data) {
            m = m.max(elem_diff(a, b) / f64::from(b).abs().max(floor));
        }
        Ok(m)
    }

    fn check_same_shape(&self, other: &Tensor) -> Result<()> {
        if self.shape != other.shape || self.data.len() != other.data.len() {
            return Err(IrError::Exec(format!(
                "cannot compare a tensor of shape {:?} with one of shape {:?}",
                self.shape, other.shape
            )));
        }
        Ok(())
    }
}

/// `|a - b|` in f64, with NaN and one-sided infinities mapped to `+inf`.
fn elem_diff(a: f32, b: f32) -> f64 {
    if a == b {
        return 0.0;
    }
    let d = (f64::from(a) - f64::from(b)).abs();
    if d.is_nan() {
        f64::INFINITY
    } else {
        d
    }
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
