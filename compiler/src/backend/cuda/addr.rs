//! Addressing an NHWC [`View`] from kernel code: the one place that knows
//! how a view's `(n, y, x, c)` maps to an arena element index, so a change
//! of the view layout (e.g. a zero border around buffers) is made here.

use super::kb::{Kb, KbExt, Result};
use crate::backend::kernel::{View, ELEM_BYTES};

/// The largest extent index arithmetic handles in 32 bits.
pub(crate) const I32_LIMIT: usize = i32::MAX as usize;

/// A view's geometry as the constants kernel code is generated with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geom {
    pub n: i32,
    pub h: i32,
    pub w: i32,
    pub channels: i32,
    /// Element index of the view's `(0, 0, 0, 0)`.
    pub base: i64,
    /// Elements between consecutive pixels.
    pub stride: i64,
}

impl Geom {
    /// The geometry of `v`, or why 32-bit pixel arithmetic cannot address it.
    pub fn of(v: &View) -> std::result::Result<Geom, String> {
        let pixels = v.pixels();
        let fits = |x: usize| x <= I32_LIMIT;
        if !fits(pixels) || !fits(pixels.saturating_mul(v.channels)) {
            return Err(format!(
                "view of {pixels} pixels x {} channels exceeds 32-bit indexing",
                v.channels
            ));
        }
        Ok(Geom {
            n: v.n as i32,
            h: v.h as i32,
            w: v.w as i32,
            channels: v.channels as i32,
            base: (v.offset / ELEM_BYTES + v.channel_offset) as i64,
            stride: v.pixel_stride as i64,
        })
    }

    /// Pixels in the view (`n * h * w`).
    pub fn pixels(&self) -> i32 {
        self.n * self.h * self.w
    }

    /// Element index of `(pixel p, channel c)`, `p` the view's linear pixel
    /// index `(n * h + y) * w + x`.
    pub fn elem<K: Kb + ?Sized>(&self, k: &mut K, p: K::I, c: K::I) -> Result<K::L> {
        let e = k.index(self.base, p, self.stride)?;
        k.addw(e, c)
    }

    /// Element index of `(n, y, x, c)`; `y` and `x` may be out of range (the
    /// caller guards the access).
    pub fn elem_nyx<K: Kb + ?Sized>(
        &self,
        k: &mut K,
        n: K::I,
        y: K::I,
        x: K::I,
        c: K::I,
    ) -> Result<K::L> {
        let r = k.mulc(n, self.h)?;
        let r = k.add(r, y)?;
        let r = k.mulc(r, self.w)?;
        let p = k.add(r, x)?;
        self.elem(k, p, c)
    }

    /// Split a linear pixel index into `(n, y, x)`.
    pub fn split<K: Kb + ?Sized>(&self, k: &mut K, p: K::I) -> Result<(K::I, K::I, K::I)> {
        let x = k.rem(p, self.w)?;
        let r = k.div(p, self.w)?;
        let y = k.rem(r, self.h)?;
        let n = k.div(r, self.h)?;
        Ok((n, y, x))
    }
}
