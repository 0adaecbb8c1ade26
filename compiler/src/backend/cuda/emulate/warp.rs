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

use crate::backend::cuda::precision::{round, Operand};

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

/// `D = A·B + C` on whole matrices, as [`mma_block`] computes it per warp.
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

/// The mma of every warp of a block: `a`, `b` and `c` are the fragment
/// registers, one value per thread. Returns `D`'s registers and, when the
/// instruction is invalid (not whole warps: `D` is NaN; an operand that is
/// not an `op` value: `D` as computed), why.
pub(super) fn mma_block(
    op: Operand,
    a: [&[f32]; 4],
    b: [&[f32]; 2],
    c: [&[f32]; 4],
) -> ([Vec<f32>; 4], Option<String>) {
    let threads = a[0].len();
    let mut d = [(); 4].map(|_| vec![f32::NAN; threads]);
    if !threads.is_multiple_of(WARP) {
        return (
            d,
            Some(format!(
                "mma in a block of {threads} threads (not whole warps)"
            )),
        );
    }
    let mut bad = None;
    for w in 0..threads / WARP {
        let (mut am, mut bm, mut cm) = ([[0.0; 8]; 16], [[0.0; 8]; 8], [[0.0; 8]; 16]);
        for lane in 0..WARP {
            let t = w * WARP + lane;
            for (i, v) in a.iter().enumerate() {
                let (r, col) = a_at(op, lane, i);
                am[r][col] = v[t];
            }
            for (i, v) in b.iter().enumerate() {
                let (r, col) = b_at(op, lane, i);
                bm[r][col] = v[t];
            }
            for (i, v) in c.iter().enumerate() {
                let (r, col) = c_at(lane, i);
                cm[r][col] = v[t];
            }
            let mut ops = a.iter().chain(&b).map(|v| v[t]);
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
    let fault = bad.map(|(t, x)| {
        let name = op.name();
        format!("thread {t}: mma operand {x:e} is not a {name} value (not converted)")
    });
    (d, fault)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPS: [Operand; 3] = [Operand::Tf32, Operand::F16, Operand::Bf16];

    /// Per-warp matrices `(A, B, C)` → per-warp `D`, through [`mma_block`]:
    /// each lane is given its fragments by the layout written out in the
    /// PTX ISA's figures (`frag_*` below), `A` and `B` rounded to `op`.
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
        // Register `i` of every thread: `get(warp, lane, i)`.
        let regs = |n: usize, get: &dyn Fn(usize, usize, usize) -> f32| -> Vec<Vec<f32>> {
            (0..n)
                .map(|i| (0..threads).map(|t| get(t / WARP, t % WARP, i)).collect())
                .collect()
        };
        let a = regs(4, &|w, l, i| {
            let (r, c) = frag_a(l, i);
            round(op, warps[w].0[r][c])
        });
        let b = regs(2, &|w, l, i| {
            let (r, c) = frag_b(l, i);
            round(op, warps[w].1[r][c])
        });
        let c = regs(4, &|w, l, i| {
            let (r, c) = frag_c(l, i);
            warps[w].2[r][c]
        });
        let (d, fault) = mma_block(
            op,
            [&a[0], &a[1], &a[2], &a[3]],
            [&b[0], &b[1]],
            [&c[0], &c[1], &c[2], &c[3]],
        );
        let mut out = vec![[[f32::NAN; 8]; 16]; warps.len()];
        for t in 0..threads {
            for (i, v) in d.iter().enumerate() {
                let (r, c) = frag_c(t % WARP, i);
                out[t / WARP][r][c] = v[t];
            }
        }
        (out, fault)
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
        let one = [1.0f32; 48];
        let (warp, partial) = (&one[..32], &one[..]);
        for (op, name) in [
            (Operand::Tf32, "TF32"),
            (Operand::F16, "FP16"),
            (Operand::Bf16, "BF16"),
        ] {
            let x = [1.0 + 2f32.powi(-20); 32];
            let (_, fault) = mma_block(op, [warp; 4], [warp, &x], [warp; 4]);
            let want = format!("not a {name} value");
            assert!(fault.is_some_and(|m| m.contains(&want)), "{op:?}");
            let (d, fault) = mma_block(op, [partial; 4], [partial; 2], [partial; 4]);
            assert!(fault.is_some_and(|m| m.contains("not whole warps")));
            assert!(d.iter().flatten().all(|v| v.is_nan()));
        }
        // A TF32 value is not necessarily an FP16 or BF16 one.
        let x = [1.0 + 2f32.powi(-9); 32];
        let (_, fault) = mma_block(Operand::Bf16, [&x, warp, warp, warp], [warp; 2], [warp; 4]);
        assert!(fault.is_some_and(|m| m.contains("not a BF16 value")));
    }
}
