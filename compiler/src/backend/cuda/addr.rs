//! Addressing an NHWC [`View`] from kernel code: the one place that knows
//! how a view's `(n, y, x, c)` maps to an arena element index (see
//! `backend::view`: buffers may be stored with a zero border around every
//! image).

use super::simt::{Kb, KbExt, Result};
use crate::backend::kernel::{View, ELEM_BYTES};

/// The largest extent index arithmetic handles in 32 bits.
pub(crate) const I32_LIMIT: usize = i32::MAX as usize;

/// A view's geometry as the constants kernel code is generated with. Where
/// the view lies in the arena ([`Geom::base_of`]) is not part of it: the
/// kernel addresses the view from a pointer to its first element, bound
/// per launch, so views of one geometry at different places share code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Geom {
    pub n: i32,
    pub h: i32,
    pub w: i32,
    pub channels: i32,
    /// Zero border rows and columns of the buffer.
    pub border: [i32; 2],
    /// Elements between consecutive pixels.
    pub stride: i64,
}

impl Geom {
    /// The geometry of `v`, or why 32-bit pixel arithmetic cannot address it.
    pub fn of(v: &View) -> std::result::Result<Geom, String> {
        let stored = v.n * (v.h + 2 * v.border[0]) * (v.w + 2 * v.border[1]);
        let fits = |x: usize| x <= I32_LIMIT;
        if !fits(stored) || !fits(stored.saturating_mul(v.channels)) {
            return Err(format!(
                "view of {stored} stored pixels x {} channels exceeds 32-bit indexing",
                v.channels
            ));
        }
        Ok(Geom {
            n: v.n as i32,
            h: v.h as i32,
            w: v.w as i32,
            channels: v.channels as i32,
            border: [v.border[0] as i32, v.border[1] as i32],
            stride: v.pixel_stride as i64,
        })
    }

    /// Arena element index of `v`'s channel 0 at stored pixel 0 (border
    /// included): where the pointer the kernel addresses `v` from points.
    pub fn base_of(v: &View) -> u64 {
        (v.offset / ELEM_BYTES + v.channel_offset) as u64
    }

    /// Real pixels in the view (`n * h * w`).
    pub fn pixels(&self) -> i32 {
        self.n * self.h * self.w
    }

    /// Stored rows and columns of one image.
    pub fn stored(&self) -> [i32; 2] {
        [self.h + 2 * self.border[0], self.w + 2 * self.border[1]]
    }

    /// Element index, from the view's base, of `(real pixel p, channel c)`, `p` the view's linear
    /// pixel index `(n * h + y) * w + x`.
    pub fn elem<K: Kb + ?Sized>(&self, k: &mut K, p: K::I, c: K::I) -> Result<K::L> {
        if self.border == [0, 0] {
            let e = k.index(0, p, self.stride)?;
            return k.addw(e, c);
        }
        let (n, y, x) = self.split(k, p)?;
        self.elem_nyx(k, n, y, x, c)
    }

    /// Element index, from the view's base, of `(n, y, x, c)` in real-pixel coordinates; `y` and
    /// `x` may be out of range (the caller guards the access).
    pub fn elem_nyx<K: Kb + ?Sized>(
        &self,
        k: &mut K,
        n: K::I,
        y: K::I,
        x: K::I,
        c: K::I,
    ) -> Result<K::L> {
        let y = k.addc(y, self.border[0])?;
        let x = k.addc(x, self.border[1])?;
        self.elem_stored(k, n, y, x, c)
    }

    /// Element index, from the view's base, of `(n, row, col, c)` in stored coordinates (border
    /// rows and columns included).
    pub fn elem_stored<K: Kb + ?Sized>(
        &self,
        k: &mut K,
        n: K::I,
        row: K::I,
        col: K::I,
        c: K::I,
    ) -> Result<K::L> {
        let [hs, ws] = self.stored();
        let r = k.mulc(n, hs)?;
        let r = k.add(r, row)?;
        let r = k.mulc(r, ws)?;
        let p = k.add(r, col)?;
        let e = k.index(0, p, self.stride)?;
        k.addw(e, c)
    }

    /// Split a linear real-pixel index into `(n, y, x)`.
    pub fn split<K: Kb + ?Sized>(&self, k: &mut K, p: K::I) -> Result<(K::I, K::I, K::I)> {
        let x = k.rem(p, self.w)?;
        let r = k.div(p, self.w)?;
        let y = k.rem(r, self.h)?;
        let n = k.div(r, self.h)?;
        Ok((n, y, x))
    }
}
