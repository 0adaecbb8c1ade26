//! The emulator's tensor-core instructions: the operand conversions
//! (`cvt.rna.tf32.f32`, `cvt.rn.f16.f32`, `cvt.rn.bf16.f32`) and the
//! warp-level `mma.sync.aligned.m16n8k8.row.col.f32.{tf32,f16,bf16}.f32`.
//!
//! The block's values are vectors over its threads, so a warp's mma gathers
//! the 16x8 `A`, 8x8 `B` and 16x8 `C` from its 32 lanes' fragments (the
//! PTX ISA layouts, [`a_at`], [`b_at`], [`c_at`]), multiplies in f32 and
//! scatters `D` back. It checks what the GPU would not report: a block
//! that is not whole warps, and operands that are not values of the
//! operand type (the hardware would silently drop their low mantissa bits).
//!
//! Numerics: products of TF32, FP16 or BF16 values are exact in f32 (at
//! most 22 significant bits), and the eight products are added to `C` one
//! after the other in f32. The hardware's internal summation order and
//! rounding within one mma are not documented; they differ from this by a
//! few f32 ulps of the partial sums, far below the operands' own rounding
//! (2^-11 or 2^-8 relative).

use super::{Sim, SF};
use crate::backend::cuda::mma::{round, Operand};

/// Lanes of a warp.
const WARP: usize = 32;

/// Whether `x` is a value of `op` (NaN counts as one).
fn is_exact(op: Operand, x: f32) -> bool {
    x.is_nan() || round(op, x).to_bits() == x.to_bits()
}

/// `(row, col)` of `A` (16x8) that register `i` (0..4) of `lane` holds.
pub(crate) fn a_at(op: Operand, lane: usize, i: usize) -> (usize, usize) {
    let (g, t) = (lane / 4, lane % 4);
    match op {
        Operand::Tf32 => (g + 8 * (i % 2), t + 4 * (i / 2)),
        Operand::F16 | Operand::Bf16 => (g + 8 * (i / 2), 2 * t + i % 2),
    }
}

/// `(row, col)` of `B` (8x8) that register `i` (0..2) of `lane` holds.
pub(crate) fn b_at(op: Operand, lane: usize, i: usize) -> (usize, usize) {
    let (g, t) = (lane / 4, lane % 4);
    match op {
        Operand::Tf32 => (t + 4 * i, g),
        Operand::F16 | Operand::Bf16 => (2 * t + i, g),
    }
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
    pub(super) fn mma_m16n8k8(
        &mut self,
        op: Operand,
        a: [SF; 4],
        b: [SF; 2],
        c: [SF; 4],
    ) -> [SF; 4] {
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
                    let (r, col) = a_at(op, lane, i);
                    am[r][col] = self.floats[v.0][t];
                }
                for (i, v) in b.iter().enumerate() {
                    let (r, col) = b_at(op, lane, i);
                    bm[r][col] = self.floats[v.0][t];
                }
                for (i, v) in c.iter().enumerate() {
                    let (r, col) = c_at(lane, i);
                    cm[r][col] = self.floats[v.0][t];
                }
                let mut ops = a.iter().chain(&b).map(|v| self.floats[v.0][t]);
                if let Some(x) = ops.find(|&x| !is_exact(op, x)) {
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
            let name = op.name();
            self.fail(|| {
                format!("thread {t}: mma operand {x:e} is not a {name} value (not converted)")
            });
        }
        d.map(|v| self.new_f(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cuda::kb::Kb;
    use crate::backend::cuda::mma::{bf16, f16, tf32};

    /// Run `body` on one block of `threads` threads; its result and fault.
    fn block<T>(threads: usize, body: impl FnOnce(&mut Sim) -> T) -> (T, Option<String>) {
        let mut arena = [0.0f32; 4];
        let mut writes = [0u8; 4];
        let mut sim = Sim::bare(threads, &mut arena, &mut writes);
        let r = body(&mut sim);
        (r, sim.fault)
    }

    const OPS: [Operand; 3] = [Operand::Tf32, Operand::F16, Operand::Bf16];

    /// Per-warp matrices `(A, B, C)` → per-warp `D`, through the Kb ops:
    /// each lane is given its fragments by the layout written out in the
    /// PTX ISA's figures (`frag_*` below), rounded by `Kb::round_operand`.
    type Mats = ([[f32; 8]; 16], [[f32; 8]; 8], [[f32; 8]; 16]);
    fn run_mma(op: Operand, warps: &[Mats]) -> (Vec<[[f32; 8]; 16]>, Option<String>) {
        // The figures of "mma.m16n8k8" for .tf32 and for .f16/.bf16, lane =
        // 4·groupID + threadID_in_group.
        let frag_a = |l: usize, i: usize| match (op, i) {
            (Operand::Tf32, 0) => (l >> 2, l & 3),
            (Operand::Tf32, 1) => ((l >> 2) + 8, l & 3),
            (Operand::Tf32, 2) => (l >> 2, (l & 3) + 4),
            (Operand::Tf32, _) => ((l >> 2) + 8, (l & 3) + 4),
            (_, 0) => (l >> 2, (l & 3) * 2),
            (_, 1) => (l >> 2, (l & 3) * 2 + 1),
            (_, 2) => ((l >> 2) + 8, (l & 3) * 2),
            (_, _) => ((l >> 2) + 8, (l & 3) * 2 + 1),
        };
        let frag_b = |l: usize, i: usize| match (op, i) {
            (Operand::Tf32, 0) => (l & 3, l >> 2),
            (Operand::Tf32, _) => ((l & 3) + 4, l >> 2),
            (_, 0) => ((l & 3) * 2, l >> 2),
            (_, _) => ((l & 3) * 2 + 1, l >> 2),
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
                .map(|&v| k.round_operand(op, v).expect("round"))
                .collect::<Vec<_>>();
            let b = b
                .iter()
                .map(|&v| k.round_operand(op, v).expect("round"))
                .collect::<Vec<_>>();
            let d = k
                .mma(
                    op,
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

    #[test]
    fn f16_rounds_to_nearest_even_with_subnormals_and_overflow() {
        let ulp = 2f32.powi(-10); // FP16's unit in the last place at 1.0
        assert_eq!(f16(1.0 + ulp), 1.0 + ulp);
        assert_eq!(f16(1.0 + ulp / 2.0), 1.0, "a tie rounds to even (down)");
        assert_eq!(
            f16(1.0 + 3.0 * ulp / 2.0),
            1.0 + 2.0 * ulp,
            "tie to even (up)"
        );
        assert_eq!(f16(-(1.0 + 3.0 * ulp / 2.0)), -(1.0 + 2.0 * ulp));
        assert_eq!(
            f16(1.0 + ulp / 2.0 + 2f32.powi(-23)),
            1.0 + ulp,
            "above the tie"
        );
        assert_eq!(f16(2.0 - ulp / 4.0), 2.0, "a carry into the exponent");
        assert_eq!(f16(65504.0), 65504.0, "the largest half");
        assert_eq!(f16(65519.0), 65504.0, "below the overflow tie");
        assert_eq!(f16(65520.0), f32::INFINITY, "the tie rounds to even: 2^16");
        assert_eq!(f16(-1e6), f32::NEG_INFINITY);
        assert_eq!(f16(f32::MAX), f32::INFINITY);
        assert!(f16(f32::NAN).is_nan());
        assert_eq!(f16(-0.0).to_bits(), (-0.0f32).to_bits());
        let (min_normal, min_sub) = (2f32.powi(-14), 2f32.powi(-24));
        assert_eq!(f16(min_normal), min_normal);
        assert_eq!(
            f16(min_normal * (1.0 + ulp / 2.0)),
            min_normal,
            "tie to even"
        );
        assert_eq!(
            f16(min_normal - min_sub / 4.0),
            min_normal,
            "up into the normals"
        );
        assert_eq!(f16(3.0 * min_sub), 3.0 * min_sub, "a subnormal");
        assert_eq!(f16(2.5 * min_sub), 2.0 * min_sub, "subnormal tie to even");
        assert_eq!(f16(3.5 * min_sub), 4.0 * min_sub);
        assert_eq!(f16(min_sub / 2.0), 0.0, "half the smallest: to even, zero");
        assert_eq!(f16(-min_sub * 0.75), -min_sub);
        assert_eq!(f16(1e-9).to_bits(), 0);
        for x in [0.1f32, -3.7, 1000.3, 6e-5] {
            let r = f16(x);
            assert!(((r - x) / x).abs() <= 2f32.powi(-11), "{x} -> {r}");
            assert!(is_exact(Operand::F16, r) && !is_exact(Operand::F16, x));
        }
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        let ulp = 2f32.powi(-7); // BF16's unit in the last place at 1.0
        assert_eq!(bf16(1.0 + ulp), 1.0 + ulp);
        assert_eq!(bf16(1.0 + ulp / 2.0), 1.0, "a tie rounds to even (down)");
        assert_eq!(
            bf16(1.0 + 3.0 * ulp / 2.0),
            1.0 + 2.0 * ulp,
            "tie to even (up)"
        );
        assert_eq!(bf16(-(1.0 + ulp / 2.0 + 2f32.powi(-20))), -(1.0 + ulp));
        assert_eq!(bf16(2.0 - ulp / 4.0), 2.0, "a carry into the exponent");
        assert_eq!(bf16(f32::MAX), f32::INFINITY);
        let max = f32::from_bits(0x7f7f_0000); // the largest finite BF16
        assert_eq!(bf16(f32::from_bits(0x7f7f_7fff)), max);
        assert_eq!(
            bf16(f32::from_bits(0x7f7f_8000)),
            f32::INFINITY,
            "tie to even"
        );
        assert!(bf16(f32::NAN).is_nan());
        assert_eq!(bf16(f32::NEG_INFINITY), f32::NEG_INFINITY);
        assert_eq!(bf16(-0.0).to_bits(), (-0.0f32).to_bits());
        let sub = f32::from_bits(0x0000_8000); // half a BF16 ulp of the subnormals
        assert_eq!(bf16(sub).to_bits(), 0, "tie to even: zero");
        assert_eq!(bf16(f32::from_bits(0x0001_8000)).to_bits(), 0x0002_0000);
        for x in [0.1f32, -3.7, 1e-20, 6.02e23] {
            let r = bf16(x);
            assert_eq!(r.to_bits() & 0xffff, 0);
            assert!(((r - x) / x).abs() <= 2f32.powi(-8), "{x} -> {r}");
        }
    }

    /// `A` index-coded, `B` the identity, `C` coded too: `D = A + C`
    /// element by element, so a lane reading or writing the wrong
    /// position shows. Then `A` a stack of two identities: `D` reproduces
    /// `B`, checking the `B` layout.
    #[test]
    #[allow(clippy::needless_range_loop)] // index-coded matrices read best by index
    fn mma_fragment_layout() {
        for op in OPS {
            fragment_layout(op);
        }
        // Spot checks against the ISA's figures: lane 5 holds rows 1 and 9,
        // columns 2 and 3 of D; lane 31 rows 7 and 15, columns 6 and 7.
        assert_eq!([c_at(5, 0), c_at(5, 3)], [(1, 2), (9, 3)]);
        let op = Operand::Tf32;
        assert_eq!(
            [a_at(op, 31, 1), a_at(op, 31, 2), b_at(op, 31, 1)],
            [(15, 3), (7, 7), (7, 7)]
        );
        let op = Operand::F16;
        assert_eq!(
            [
                a_at(op, 6, 1),
                a_at(op, 6, 2),
                b_at(op, 6, 0),
                b_at(op, 31, 1)
            ],
            [(1, 5), (9, 4), (4, 1), (7, 7)]
        );
    }

    #[allow(clippy::needless_range_loop)] // index-coded matrices read best by index
    fn fragment_layout(op: Operand) {
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
        let (d, fault) = run_mma(op, &[(a, b, c)]);
        assert_eq!(fault, None);
        for r in 0..16 {
            for col in 0..8 {
                let want = 1001.0 * (r * 8 + col) as f32;
                assert_eq!(d[0][r][col], want, "{op:?} D[{r}][{col}]");
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
        let (d, fault) = run_mma(op, &[(a, b, [[0.0; 8]; 16])]);
        assert_eq!(fault, None);
        for r in 0..16 {
            for col in 0..8 {
                let want = (1 + r / 8) as f32 * b[r % 8][col];
                assert_eq!(d[0][r][col], want, "{op:?} D[{r}][{col}]");
            }
        }
    }

    /// Two warps of random data: `D` is the plain product of the rounded
    /// inputs plus `C`, accumulated in f32, for each operand type.
    #[test]
    fn mma_matches_a_plain_product_of_rounded_inputs() {
        for op in OPS {
            plain_product(op);
        }
    }

    fn plain_product(op: Operand) {
        // Eight products of operands in [-2, 2], each rounded by `u`.
        let u = if op == Operand::Bf16 {
            2f64.powi(-8)
        } else {
            2f64.powi(-11)
        };
        let bound = 8.0 * 4.0 * 2.1 * u;
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
        let (d, fault) = run_mma(op, &warps);
        assert_eq!(fault, None);
        let mut rounded_differs = false;
        for (w, (a, b, c)) in warps.iter().enumerate() {
            for r in 0..16 {
                for col in 0..8 {
                    let mut want = c[r][col];
                    let mut exact = f64::from(c[r][col]);
                    for k in 0..8 {
                        want += round(op, a[r][k]) * round(op, b[k][col]);
                        exact += f64::from(a[r][k]) * f64::from(b[k][col]);
                    }
                    assert_eq!(d[w][r][col], want, "{op:?} warp {w} D[{r}][{col}]");
                    rounded_differs |= f64::from(want) != exact;
                    assert!((f64::from(want) - exact).abs() < bound, "{want} vs {exact}");
                }
            }
        }
        assert!(
            rounded_differs,
            "the inputs must exercise the {op:?} rounding"
        );
    }

    #[test]
    fn unrounded_operands_and_partial_warps_are_reported() {
        for (op, name) in [
            (Operand::Tf32, "TF32"),
            (Operand::F16, "FP16"),
            (Operand::Bf16, "BF16"),
        ] {
            let (_, fault) = block(32, |k| {
                let x = k.cf(1.0 + 2f32.powi(-20));
                let y = k.cf(1.0);
                k.mma(op, [y, y, y, y], [y, x], [y, y, y, y]).map(|_| ())
            });
            let want = format!("not a {name} value");
            assert!(fault.is_some_and(|m| m.contains(&want)), "{op:?}");
            let (_, fault) = block(48, |k| {
                let y = k.cf(1.0);
                k.mma(op, [y, y, y, y], [y, y], [y, y, y, y]).map(|_| ())
            });
            assert!(fault.is_some_and(|m| m.contains("not whole warps")));
        }
        // A TF32 value is not necessarily an FP16 or BF16 one.
        let (_, fault) = block(32, |k| {
            let x = k.cf(1.0 + 2f32.powi(-9));
            let y = k.cf(1.0);
            k.mma(Operand::Bf16, [x, y, y, y], [y, y], [y, y, y, y])
                .map(|_| ())
        });
        assert!(fault.is_some_and(|m| m.contains("not a BF16 value")));
    }
}
