//! The emulator's tensor-core instructions: `cvt.rna.tf32.f32` and the
//! warp-level `mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32`.
//!
//! The block's values are vectors over its threads, so a warp's mma gathers
//! the 16x8 `A`, 8x8 `B` and 16x8 `C` from its 32 lanes' fragments (the
//! PTX ISA layout, [`a_at`], [`b_at`], [`c_at`]), multiplies in f32 and
//! scatters `D` back. It checks what the GPU would not report: a block
//! that is not whole warps, and operands that are not TF32 values (the
//! tensor cores would silently ignore their low mantissa bits).
//!
//! Numerics: TF32 products are exact in f32 (11-bit significands), and the
//! eight products are added to `C` one after the other in f32. The
//! hardware's internal summation order and rounding within one mma are not
//! documented; they differ from this by a few f32 ulps of the partial sums,
//! far below TF32's own rounding (2^-11 per operand).

use super::{Sim, SF};

/// Lanes of a warp.
const WARP: usize = 32;

/// `cvt.rna.tf32.f32`: round to 10 explicit mantissa bits, to nearest,
/// ties away from zero; the low 13 bits of the result are zero. NaN stays
/// NaN, infinities stay, a finite value may round to infinity.
pub(crate) fn tf32(x: f32) -> f32 {
    if x.is_nan() {
        return f32::NAN;
    }
    let bits = x.to_bits();
    let (sign, mag) = (bits & 0x8000_0000, bits & 0x7fff_ffff);
    if mag >= 0x7f80_0000 {
        return x;
    }
    // Adding half a unit of the 10-bit mantissa to the magnitude and
    // truncating rounds half away from zero; a carry into the exponent is
    // the right result (including the overflow to infinity).
    f32::from_bits(sign | ((mag + 0x1000) & !0x1fff))
}

fn is_tf32(x: f32) -> bool {
    x.is_nan() || x.to_bits() & 0x1fff == 0
}

/// `(row, col)` of `A` (16x8) that register `i` (0..4) of `lane` holds.
pub(crate) fn a_at(lane: usize, i: usize) -> (usize, usize) {
    (lane / 4 + 8 * (i % 2), lane % 4 + 4 * (i / 2))
}

/// `(row, col)` of `B` (8x8) that register `i` (0..2) of `lane` holds.
pub(crate) fn b_at(lane: usize, i: usize) -> (usize, usize) {
    (lane % 4 + 4 * i, lane / 4)
}

/// `(row, col)` of `C` and `D` (16x8) that register `i` (0..4) of `lane`
/// holds.
pub(crate) fn c_at(lane: usize, i: usize) -> (usize, usize) {
    (lane / 4 + 8 * (i / 2), 2 * (lane % 4) + i % 2)
}

/// `D = A·B + C` on whole matrices, as [`Sim::mma_m16n8k8`] computes it.
pub(crate) fn mma(a: &[[f32; 8]; 16], b: &[[f32; 8]; 8], c: &[[f32; 8]; 16]) -> [[f32; 8]; 16] {
    let mut d = *c;
    for (r, row) in d.iter_mut().enumerate() {
        for (col, x) in row.iter_mut().enumerate() {
            for k in 0..8 {
                *x += a[r][k] * b[k][col];
            }
        }
    }
    d
}

impl Sim<'_> {
    /// The mma of every warp of the block.
    pub(super) fn mma_m16n8k8(&mut self, a: [SF; 4], b: [SF; 2], c: [SF; 4]) -> [SF; 4] {
        let threads = self.threads;
        let mut d = [(); 4].map(|_| vec![f32::NAN; threads]);
        if !threads.is_multiple_of(WARP) {
            self.fail(|| format!("mma in a block of {threads} threads (not whole warps)"));
            return d.map(|v| self.new_f(v));
        }
        let mut bad = None;
        for w in 0..threads / WARP {
            let (mut am, mut bm, mut cm) = ([[0.0; 8]; 16], [[0.0; 8]; 8], [[0.0; 8]; 16]);
            for lane in 0..WARP {
                let t = w * WARP + lane;
                for (i, v) in a.iter().enumerate() {
                    let (r, col) = a_at(lane, i);
                    am[r][col] = self.floats[v.0][t];
                }
                for (i, v) in b.iter().enumerate() {
                    let (r, col) = b_at(lane, i);
                    bm[r][col] = self.floats[v.0][t];
                }
                for (i, v) in c.iter().enumerate() {
                    let (r, col) = c_at(lane, i);
                    cm[r][col] = self.floats[v.0][t];
                }
                let mut ops = a.iter().chain(&b).map(|v| self.floats[v.0][t]);
                if let Some(x) = ops.find(|&x| !is_tf32(x)) {
                    bad.get_or_insert((t, x));
                }
            }
            let dm = mma(&am, &bm, &cm);
            for lane in 0..WARP {
                for (i, di) in d.iter_mut().enumerate() {
                    let (r, col) = c_at(lane, i);
                    di[w * WARP + lane] = dm[r][col];
                }
            }
        }
        if let Some((t, x)) = bad {
            self.fail(|| format!("thread {t}: mma operand {x:e} is not a TF32 value (no cvt.rna)"));
        }
        d.map(|v| self.new_f(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cuda::kb::Kb;
    use crate::backend::kernel::View;

    /// Run `body` on one block of `threads` threads; its result and fault.
    fn block<T>(threads: usize, body: impl FnOnce(&mut Sim) -> T) -> (T, Option<String>) {
        let mut arena = [0.0f32; 4];
        let mut writes = [0u8; 4];
        let mut sim = Sim {
            threads,
            ctaid: [0, 0],
            ints: Vec::new(),
            longs: Vec::new(),
            floats: Vec::new(),
            bools: Vec::new(),
            shared: Vec::new(),
            epoch: 1,
            weights: &[],
            arena: &mut arena,
            writes: &mut writes,
            args: &[],
            scalars: &[],
            input: View::dense(0, 1, 1, 1, 4),
            fault: None,
        };
        let r = body(&mut sim);
        (r, sim.fault)
    }

    /// Per-warp matrices `(A, B, C)` → per-warp `D`, through the Kb ops:
    /// each lane is given its fragments by the layout written out in the
    /// PTX ISA's figures (`frag_*` below), rounded by `Kb::tf32`.
    type Mats = ([[f32; 8]; 16], [[f32; 8]; 8], [[f32; 8]; 16]);
    fn run_mma(warps: &[Mats]) -> (Vec<[[f32; 8]; 16]>, Option<String>) {
        // The figures of "mma.m16n8k8 .tf32", lane = 4·groupID + threadID_in_group.
        let frag_a = |l: usize, i: usize| match i {
            0 => (l >> 2, l & 3),
            1 => ((l >> 2) + 8, l & 3),
            2 => (l >> 2, (l & 3) + 4),
            _ => ((l >> 2) + 8, (l & 3) + 4),
        };
        let frag_b = |l: usize, i: usize| {
            if i == 0 {
                (l & 3, l >> 2)
            } else {
                ((l & 3) + 4, l >> 2)
            }
        };
        let frag_c = |l: usize, i: usize| match i {
            0 => (l >> 2, (l & 3) * 2),
            1 => (l >> 2, (l & 3) * 2 + 1),
            2 => ((l >> 2) + 8, (l & 3) * 2),
            _ => ((l >> 2) + 8, (l & 3) * 2 + 1),
        };
        let threads = warps.len() * WARP;
        block(threads, |k| {
            let per = |f: &dyn Fn(usize, usize) -> f32| {
                (0..threads)
                    .map(|t| f(t / WARP, t % WARP))
                    .collect::<Vec<_>>()
            };
            let regs = |k: &mut Sim, n: usize, get: &dyn Fn(usize, usize, usize) -> f32| {
                (0..n)
                    .map(|i| {
                        let v = per(&|w, l| get(w, l, i));
                        k.new_f(v)
                    })
                    .collect::<Vec<_>>()
            };
            let a = regs(k, 4, &|w, l, i| {
                let (r, c) = frag_a(l, i);
                warps[w].0[r][c]
            });
            let b = regs(k, 2, &|w, l, i| {
                let (r, c) = frag_b(l, i);
                warps[w].1[r][c]
            });
            let c = regs(k, 4, &|w, l, i| {
                let (r, c) = frag_c(l, i);
                warps[w].2[r][c]
            });
            let a = a
                .iter()
                .map(|&v| k.tf32(v).expect("tf32"))
                .collect::<Vec<_>>();
            let b = b
                .iter()
                .map(|&v| k.tf32(v).expect("tf32"))
                .collect::<Vec<_>>();
            let d = k
                .mma_tf32(
                    [a[0], a[1], a[2], a[3]],
                    [b[0], b[1]],
                    [c[0], c[1], c[2], c[3]],
                )
                .expect("mma");
            let mut out = vec![[[f32::NAN; 8]; 16]; warps.len()];
            for t in 0..threads {
                for (i, v) in d.iter().enumerate() {
                    let (r, c) = frag_c(t % WARP, i);
                    out[t / WARP][r][c] = k.floats[v.0][t];
                }
            }
            out
        })
    }

    #[test]
    fn tf32_rounds_to_nearest_ties_away() {
        let ulp = 2f32.powi(-10); // TF32's unit in the last place at 1.0
        assert_eq!(tf32(1.0), 1.0);
        assert_eq!(tf32(1.0 + ulp), 1.0 + ulp);
        assert_eq!(
            tf32(1.0 + ulp / 2.0),
            1.0 + ulp,
            "a tie rounds away from zero"
        );
        assert_eq!(tf32(-(1.0 + ulp / 2.0)), -(1.0 + ulp));
        assert_eq!(
            tf32(1.0 + 3.0 * ulp / 2.0),
            1.0 + 2.0 * ulp,
            "ties away, not to even"
        );
        assert_eq!(tf32(1.0 + ulp / 2.0 - 2f32.powi(-23)), 1.0, "below the tie");
        assert_eq!(tf32(1.0 + ulp / 4.0), 1.0);
        assert_eq!(tf32(2.0 - ulp / 2.0), 2.0, "a carry into the exponent");
        assert_eq!(tf32(f32::MAX), f32::INFINITY);
        assert_eq!(tf32(f32::NEG_INFINITY), f32::NEG_INFINITY);
        assert!(tf32(f32::NAN).is_nan());
        assert_eq!(tf32(-0.0).to_bits(), (-0.0f32).to_bits());
        let sub = f32::from_bits(0x0000_1000); // half a TF32 ulp of the subnormals
        assert_eq!(tf32(sub).to_bits(), 0x0000_2000);
        for x in [0.1f32, -3.7, 1e-20, 6.02e23] {
            let r = tf32(x);
            assert_eq!(r.to_bits() & 0x1fff, 0);
            assert!(((r - x) / x).abs() <= 2f32.powi(-11), "{x} -> {r}");
        }
    }

    /// `A` index-coded, `B` the identity, `C` coded too: `D = A + C`
    /// element by element, so a lane reading or writing the wrong
    /// position shows. Then `A` a stack of two identities: `D` reproduces
    /// `B`, checking the `B` layout.
    #[test]
    #[allow(clippy::needless_range_loop)] // index-coded matrices read best by index
    fn mma_fragment_layout() {
        let mut a = [[0.0; 8]; 16];
        let mut b = [[0.0; 8]; 8];
        let mut c = [[0.0; 8]; 16];
        for r in 0..16 {
            for col in 0..8 {
                a[r][col] = (r * 8 + col) as f32;
                c[r][col] = 1000.0 * (r * 8 + col) as f32;
            }
        }
        for (i, row) in b.iter_mut().enumerate() {
            row[i] = 1.0;
        }
        let (d, fault) = run_mma(&[(a, b, c)]);
        assert_eq!(fault, None);
        for r in 0..16 {
            for col in 0..8 {
                assert_eq!(d[0][r][col], 1001.0 * (r * 8 + col) as f32, "D[{r}][{col}]");
            }
        }
        let mut a = [[0.0; 8]; 16];
        for r in 0..8 {
            a[r][r] = 1.0;
            a[r + 8][r] = 2.0;
        }
        for r in 0..8 {
            for col in 0..8 {
                b[r][col] = (r * 8 + col + 1) as f32;
            }
        }
        let (d, fault) = run_mma(&[(a, b, [[0.0; 8]; 16])]);
        assert_eq!(fault, None);
        for r in 0..16 {
            for col in 0..8 {
                let want = (1 + r / 8) as f32 * b[r % 8][col];
                assert_eq!(d[0][r][col], want, "D[{r}][{col}]");
            }
        }
        // Spot checks against the ISA's figure: lane 5 holds rows 1 and 9,
        // columns 2 and 3 of D; lane 31 rows 7 and 15, columns 6 and 7.
        assert_eq!([c_at(5, 0), c_at(5, 3)], [(1, 2), (9, 3)]);
        assert_eq!(
            [a_at(31, 1), a_at(31, 2), b_at(31, 1)],
            [(15, 3), (7, 7), (7, 7)]
        );
    }

    /// Two warps of random data: `D` is the plain product of the
    /// TF32-rounded inputs plus `C`, accumulated in f32.
    #[test]
    fn mma_matches_a_plain_product_of_rounded_inputs() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0
        };
        let mut warps = Vec::new();
        for _ in 0..2 {
            let (mut a, mut b, mut c) = ([[0.0; 8]; 16], [[0.0; 8]; 8], [[0.0; 8]; 16]);
            a.iter_mut().flatten().for_each(|x| *x = rnd());
            b.iter_mut().flatten().for_each(|x| *x = rnd());
            c.iter_mut().flatten().for_each(|x| *x = rnd());
            warps.push((a, b, c));
        }
        let (d, fault) = run_mma(&warps);
        assert_eq!(fault, None);
        let mut rounded_differs = false;
        for (w, (a, b, c)) in warps.iter().enumerate() {
            for r in 0..16 {
                for col in 0..8 {
                    let mut want = c[r][col];
                    let mut exact = f64::from(c[r][col]);
                    for k in 0..8 {
                        want += tf32(a[r][k]) * tf32(b[k][col]);
                        exact += f64::from(a[r][k]) * f64::from(b[k][col]);
                    }
                    assert_eq!(d[w][r][col], want, "warp {w} D[{r}][{col}]");
                    rounded_differs |= f64::from(want) != exact;
                    assert!((f64::from(want) - exact).abs() < 1e-2, "{want} vs {exact}");
                }
            }
        }
        assert!(
            rounded_differs,
            "the inputs must exercise the TF32 rounding"
        );
    }

    #[test]
    fn unrounded_operands_and_partial_warps_are_reported() {
        let (_, fault) = block(32, |k| {
            let x = k.cf(1.0 + 2f32.powi(-20));
            let y = k.cf(1.0);
            k.mma_tf32([x, y, y, y], [y, y], [y, y, y, y]).map(|_| ())
        });
        assert!(fault.is_some_and(|m| m.contains("not a TF32 value")));
        let (_, fault) = block(48, |k| {
            let y = k.cf(1.0);
            k.mma_tf32([y, y, y, y], [y, y], [y, y, y, y]).map(|_| ())
        });
        assert!(fault.is_some_and(|m| m.contains("not whole warps")));
    }
}
