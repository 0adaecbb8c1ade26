//! Winograd F(2x2, 3x3) for stride-1, pad-1 3x3 convolutions (the growth
//! convs of every dense layer).
//!
//! The output is cut into 2x2 tiles (`ceil(H/2) × ceil(W/2)` per image,
//! numbered row-major over images, tile rows and tile columns); a task is a
//! block of `tb` consecutive tiles. For each input-channel chunk:
//!
//! 1. **Input transform**: each tile's 4x4 input patch (rows `2ty-1..2ty+3`,
//!    columns `2tx-1..2tx+3`) is read with the prologue applied to real
//!    pixels and 0 for the padding (out-of-image taps are clamped loads
//!    replaced by 0, so no border is read), transformed `V = Bᵀ d B`
//!    vectorised along channels, and stored into the panel `V[16][tb][kcp]`.
//! 2. **16 GEMMs**: `M[ξ] (tiles × O) += V[ξ] (tiles × kc) · U[ξ] (kc × O)`
//!    on the register-blocked micro-kernel (tiles as its pixel rows, output
//!    channels as its vectors), accumulating into `M[tb][16][ocp]` across
//!    chunks. `U = G g Gᵀ` is computed (in f64) and packed at compile time,
//!    per component `ξ` in the micro-kernel's `[ic][NR]` block layout.
//!
//! Then the **output transform** `Y = Aᵀ M A` adds the bias, applies the
//! ReLU and stores the 2x2 outputs straight into the output view. Outputs of
//! a partial tile past the right or bottom edge (odd `H` or `W`) are stored
//! to a dummy scratch vector instead, so nothing outside the image is
//! written.
//!
//! Per 2x2 tile and (input, output) channel pair, the GEMMs do 16 MACs
//! where the direct conv does 36.

use super::{choose_mr, choose_nv, round_up, KC_MAX};
use crate::backend::cpu::codegen::{Cg, Result, LANES};
use crate::backend::cpu::lower::{pixel_at, split_last, view_base, AffineRef, Env, TARGET_TASKS};
use crate::backend::cpu::microkernel::{Microkernels, UkSpec};
use crate::backend::cpu::pack::{pack_conv_weight, pad_to_vectors, OcBlocking, WeightsBuilder};
use crate::backend::kernel::{ConvKernel, View};
use crate::backend::BackendError;
use inkwell::values::{IntValue, PointerValue, VectorValue};
use inkwell::IntPredicate;

/// Transform components of a 4x4 tile.
const XI: usize = 16;
/// Floats of task scratch (panel `V`, accumulators `M`, dummy vector):
/// stays well inside `MAX_TASK_STACK` with the pointer table.
const SCRATCH_MAX: usize = 26 * 1024;
/// Fewest tiles a task gets when there are that many: below this the
/// micro-kernel runs on too few rows to amortise its weight loads.
const TB_MIN: usize = 6;
/// Tiles a task would like, for a few calls of the micro-kernel per
/// weight panel.
const TB_WANT: usize = 24;

/// Tiling decisions and packed constants of one Winograd convolution.
#[derive(Debug)]
pub(crate) struct WinogradPlan {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub ic: usize,
    pub oc: usize,
    input: View,
    output: View,
    prologue: Option<AffineRef>,
    relu: bool,
    pub blocking: OcBlocking,
    pub mr: usize,
    /// Output channels rounded up to the blocks' vectors (a row of `M`).
    ocp: usize,
    /// Tiles per image row and column.
    pub th: usize,
    pub tw: usize,
    /// Tiles per task, and tasks.
    pub tb: usize,
    pub tblocks: usize,
    pub kc: usize,
    kcp: usize,
    u_off: usize,
    /// Elements of one component's packed `U`.
    u_xi: usize,
    /// A zero vector the micro-kernel starts its accumulators from.
    zero_off: usize,
    bias_off: Option<usize>,
}

/// `G g Gᵀ` of one 3x3 filter `g` (row-major), as 16 components `4a + b`.
fn transform_filter(g: &[f32]) -> [f64; XI] {
    const G: [[f64; 3]; 4] = [
        [1.0, 0.0, 0.0],
        [0.5, 0.5, 0.5],
        [0.5, -0.5, 0.5],
        [0.0, 0.0, 1.0],
    ];
    let mut u = [0.0; XI];
    for a in 0..4 {
        for b in 0..4 {
            let mut s = 0.0;
            for y in 0..3 {
                for x in 0..3 {
                    s += G[a][y] * f64::from(g[y * 3 + x]) * G[b][x];
                }
            }
            u[a * 4 + b] = s;
        }
    }
    u
}

impl WinogradPlan {
    /// Whether `c` is a convolution this plan computes, and where it beats
    /// the direct kernel (measured on DenseNet-BC-100 and DenseNet-121
    /// growth convs; tiny input-channel counts leave the GEMMs too short to
    /// pay for the transforms).
    pub fn applies(c: &ConvKernel, i: &View) -> bool {
        c.kernel == [3, 3] && c.stride == [1, 1] && c.padding == [1, 1] && i.channels >= 16
    }

    pub fn new(c: &ConvKernel, i: &View, o: &View, wb: &mut WeightsBuilder) -> WinogradPlan {
        let (ic, oc) = (i.channels, c.out_channels);
        let nv = choose_nv(oc);
        let blocking = OcBlocking::new(oc, nv);
        let mr = choose_mr(nv);
        let ocp = blocking.full * blocking.nr() + blocking.tail_nv * LANES;

        let mut per_xi = vec![vec![0.0f32; oc * ic]; XI];
        for (f, g) in c.weight.chunks_exact(9).enumerate() {
            for (xi, u) in transform_filter(g).iter().enumerate() {
                per_xi[xi][f] = *u as f32;
            }
        }
        let mut packed = Vec::new();
        for w in &per_xi {
            packed.extend(pack_conv_weight(w, ic, [1, 1], &blocking));
        }
        let u_xi = packed.len() / XI;
        let u_off = wb.push(&packed);
        let zero_off = wb.push(&vec![0.0; blocking.nr()]);
        let bias_off = c.bias.as_ref().map(|b| wb.push(&pad_to_vectors(b)));
        let prologue = c.prologue.as_ref().map(|a| AffineRef::pack(a, wb));

        let (th, tw) = (o.h.div_ceil(2), o.w.div_ceil(2));
        let tiles = o.n * th * tw;
        let per_tile = |kc: usize| XI * (round_up(kc, LANES) + ocp);
        let mut kc = ic.min(KC_MAX);
        while kc > 2 * LANES && (SCRATCH_MAX - ocp) / per_tile(kc) < TB_WANT / 2 {
            kc = round_up(kc / 2, LANES);
        }
        let tb_max = ((SCRATCH_MAX - ocp) / per_tile(kc)).clamp(1, TB_WANT);
        let mut tb = tiles
            .div_ceil(TARGET_TASKS)
            .clamp(TB_MIN.min(tiles), tb_max);
        // An even task count balances two threads.
        let mut tasks = tiles.div_ceil(tb);
        if tasks > 1 && tasks % 2 == 1 && tasks < 4 * TARGET_TASKS {
            tasks += 1;
            tb = tiles.div_ceil(tasks);
        }
        let tblocks = tiles.div_ceil(tb);
        WinogradPlan {
            n: o.n,
            h: o.h,
            w: o.w,
            ic,
            oc,
            input: *i,
            output: *o,
            prologue,
            relu: c.relu,
            blocking,
            mr,
            ocp,
            th,
            tw,
            tb,
            tblocks,
            kc,
            kcp: round_up(kc, LANES),
            u_off,
            u_xi,
            zero_off,
            bias_off,
        }
    }

    pub fn tasks(&self) -> usize {
        self.tblocks
    }

    fn v_len(&self) -> usize {
        XI * self.tb * self.kcp
    }

    fn m_len(&self) -> usize {
        self.tb * XI * self.ocp
    }

    pub fn scratch_floats(&self) -> usize {
        self.v_len() + self.m_len() + self.ocp
    }

    /// The scratch and the table of `M` row pointers.
    pub fn stack_bytes(&self) -> usize {
        self.scratch_floats() * 4 + self.tb * 8
    }

    pub fn emit_task<'ctx>(
        &self,
        cg: &Cg<'ctx>,
        uks: &Microkernels<'ctx>,
        env: &Env<'ctx>,
        t: IntValue<'ctx>,
    ) -> Result<()> {
        let tiles = self.n * self.th * self.tw;
        let last = tiles - (self.tblocks - 1) * self.tb;
        split_last(cg, t, self.tblocks, self.tb, last, |count| {
            self.emit_block(cg, uks, env, t, count)
        })
    }

    /// `(image, tile row, tile column)` of global tile `g`.
    fn tile_coords<'ctx>(&self, cg: &Cg<'ctx>, g: IntValue<'ctx>) -> Result<[IntValue<'ctx>; 3]> {
        let (n, r) = cg.divrem(g, self.th * self.tw)?;
        let (ty, tx) = cg.divrem(r, self.tw)?;
        Ok([n, ty, tx])
    }

    fn emit_block<'ctx>(
        &self,
        cg: &Cg<'ctx>,
        uks: &Microkernels<'ctx>,
        env: &Env<'ctx>,
        t: IntValue<'ctx>,
        count: usize,
    ) -> Result<()> {
        let scratch = env
            .scratch
            .ok_or_else(|| BackendError::Codegen("Winograd conv without scratch".into()))?;
        let v = scratch;
        let m = cg.gepc(scratch, self.v_len())?;
        let dummy = cg.gepc(m, self.m_len())?;
        let g0 = cg.mulc(t, self.tb)?;
        let len = u32::try_from(self.tb)
            .map_err(|_| BackendError::Codegen("tile table too large".into()))?;
        let table = cg.entry_alloca(cg.ptr.array_type(len).into(), "mrows")?;
        cg.for_n(count, |i| {
            cg.b.build_store(cg.ptr_elem(table, i)?, cg.gep2(m, i, XI * self.ocp)?)?;
            Ok(())
        })?;

        let chunks = self.ic.div_ceil(self.kc);
        let chunk = |c0: IntValue<'ctx>, kc: usize, acc: IntValue<'ctx>| -> Result<()> {
            cg.for_n(count, |i| self.input_tile(cg, env, v, g0, i, c0, kc))?;
            self.gemms(cg, uks, env, [v, table], c0, kc, count, acc)
        };
        let full = self.ic / self.kc;
        let rem = self.ic % self.kc;
        if full == 1 {
            chunk(cg.c64(0), self.kc, cg.i1.const_zero())?;
        } else if full > 1 {
            cg.for_range(cg.c64(0), cg.c64(full * self.kc), self.kc, |c0| {
                chunk(c0, self.kc, cg.b.build_not(cg.eqc(c0, 0)?, "")?)
            })?;
        }
        if rem > 0 {
            let acc = cg.i1.const_int(u64::from(chunks > 1), false);
            chunk(cg.c64(full * self.kc), rem, acc)?;
        }
        cg.for_n(count, |i| self.output_tile(cg, env, m, dummy, g0, i))
    }

    /// Transform channels `c0..c0+kc` of tile `g0 + i` into the panel.
    #[allow(clippy::too_many_arguments)]
    fn input_tile<'ctx>(
        &self,
        cg: &Cg<'ctx>,
        env: &Env<'ctx>,
        v: PointerValue<'ctx>,
        g0: IntValue<'ctx>,
        i: IntValue<'ctx>,
        c0: IntValue<'ctx>,
        kc: usize,
    ) -> Result<()> {
        let iv = &self.input;
        let [n, ty, tx] = self.tile_coords(cg, cg.add(g0, i)?)?;
        let img = cg.gep2(view_base(cg, env, iv)?, n, iv.image_stride())?;
        let img = cg.gep(img, c0)?;
        let ih0 = cg.sub(cg.mulc(ty, 2)?, cg.c64(1))?;
        let iw0 = cg.sub(cg.mulc(tx, 2)?, cg.c64(1))?;
        // Per row (column) of the patch: clamped offset and whether it is real.
        let axis = |start: IntValue<'ctx>, extent: usize, stride: usize| {
            (0..4)
                .map(|k| {
                    let x = cg.addc(start, k)?;
                    let ok = cg.in_range(x, 0, extent)?;
                    let lo =
                        cg.b.build_int_compare(IntPredicate::SLT, x, cg.c64(0), "")?;
                    let x = cg.b.build_select(lo, cg.c64(0), x, "")?.into_int_value();
                    let x = cg.umin(x, cg.c64(extent - 1))?;
                    Ok((cg.mulc(x, stride)?, ok))
                })
                .collect::<Result<Vec<_>>>()
        };
        let rows = axis(ih0, self.h, iv.row_stride())?;
        let cols = axis(iw0, self.w, iv.pixel_stride)?;
        let mut ptrs = Vec::with_capacity(XI);
        let mut oks = Vec::with_capacity(XI);
        for (ro, rok) in &rows {
            for (co, cok) in &cols {
                ptrs.push(cg.gep(img, cg.add(*ro, *co)?)?);
                oks.push(cg.b.build_and(*rok, *cok, "")?);
            }
        }
        let interior = cg.b.build_and(
            cg.b.build_and(rows[0].1, rows[3].1, "")?,
            cg.b.build_and(cols[0].1, cols[3].1, "")?,
            "",
        )?;
        let dst = cg.gep(v, cg.mulc(i, self.kcp)?)?;
        let body = |masked: bool| {
            cg.for_channel_vectors(kc, |c, lanes| {
                let mut d = Vec::with_capacity(XI);
                for (p, ok) in ptrs.iter().zip(&oks) {
                    let x = cg.load_v(cg.gep(*p, c)?, lanes)?;
                    let x = match &self.prologue {
                        Some(a) => a.apply(cg, env, x, cg.add(c0, c)?)?,
                        None => x,
                    };
                    d.push(if masked {
                        cg.b.build_select(*ok, x, cg.v8.const_zero(), "")?
                            .into_vector_value()
                    } else {
                        x
                    });
                }
                for (xi, x) in input_transform(cg, &d)?.into_iter().enumerate() {
                    let at = cg.gep(cg.gepc(dst, xi * self.tb * self.kcp)?, c)?;
                    cg.store_v(x, at, LANES)?;
                }
                Ok(())
            })
        };
        cg.if_else(interior, || body(false), || body(true))
    }

    /// `M[ξ] (+)= V[ξ] · U[ξ]` for every component and output-channel block.
    #[allow(clippy::too_many_arguments)]
    fn gemms<'ctx>(
        &self,
        cg: &Cg<'ctx>,
        uks: &Microkernels<'ctx>,
        env: &Env<'ctx>,
        [v, table]: [PointerValue<'ctx>; 2],
        c0: IntValue<'ctx>,
        kc: usize,
        count: usize,
        acc: IntValue<'ctx>,
    ) -> Result<()> {
        let bk = &self.blocking;
        let u = cg.gepc(env.weights, self.u_off)?;
        let zero = cg.gepc(env.weights, self.zero_off)?;
        let no_relu = cg.i1.const_zero();
        cg.for_n(XI, |xi| {
            let a = cg.gep2(v, xi, self.tb * self.kcp)?;
            let u = cg.gep2(u, xi, self.u_xi)?;
            for (j, (oc0, nv, _)) in bk.iter().enumerate() {
                let nr = nv * LANES;
                let b = cg.gep(cg.gepc(u, j * self.ic * bk.nr())?, cg.mulc(c0, nr)?)?;
                let col = cg.addc(cg.mulc(xi, self.ocp)?, oc0)?;
                let spec = UkSpec {
                    mr: self.mr,
                    nv,
                    valid: nr,
                    a_step: self.kcp,
                    taps: [1, 1],
                    a_row: 0,
                    a_col: 0,
                    b_tap: 0,
                };
                let call = |mr: usize, tile: IntValue<'ctx>| -> Result<()> {
                    let f = uks.get(cg, UkSpec { mr, ..spec })?;
                    let a = cg.gep2(a, tile, self.mr * self.kcp)?;
                    let cs = cg.ptr_elem(table, cg.mulc(tile, self.mr)?)?;
                    let args = [
                        a.into(),
                        b.into(),
                        cs.into(),
                        col.into(),
                        zero.into(),
                        cg.c64(kc).into(),
                        acc.into(),
                        no_relu.into(),
                    ];
                    cg.b.build_call(f, &args, "")?;
                    Ok(())
                };
                let (full, rem) = (count / self.mr, count % self.mr);
                cg.for_n(full, |tile| call(self.mr, tile))?;
                if rem > 0 {
                    call(rem, cg.c64(full))?;
                }
            }
            Ok(())
        })
    }

    /// `Y = Aᵀ M A` of tile `g0 + i`, plus bias and ReLU, into the output.
    fn output_tile<'ctx>(
        &self,
        cg: &Cg<'ctx>,
        env: &Env<'ctx>,
        m: PointerValue<'ctx>,
        dummy: PointerValue<'ctx>,
        g0: IntValue<'ctx>,
        i: IntValue<'ctx>,
    ) -> Result<()> {
        let ov = &self.output;
        let [n, ty, tx] = self.tile_coords(cg, cg.add(g0, i)?)?;
        let (oh, ow) = (cg.mulc(ty, 2)?, cg.mulc(tx, 2)?);
        let out00 = pixel_at(cg, view_base(cg, env, ov)?, ov, [n, oh, ow])?;
        let lt = |x: IntValue<'ctx>, e: usize| -> Result<IntValue<'ctx>> {
            Ok(cg
                .b
                .build_int_compare(IntPredicate::ULT, cg.addc(x, 1)?, cg.c64(e), "")?)
        };
        let (row_ok, col_ok) = (lt(oh, self.h)?, lt(ow, self.w)?);
        let pick = |ok: IntValue<'ctx>, p: PointerValue<'ctx>| -> Result<PointerValue<'ctx>> {
            Ok(cg.b.build_select(ok, p, dummy, "")?.into_pointer_value())
        };
        let out01 = pick(col_ok, cg.gepc(out00, ov.pixel_stride)?)?;
        let out10 = pick(row_ok, cg.gepc(out00, ov.row_stride())?)?;
        let both = cg.b.build_and(row_ok, col_ok, "")?;
        let out11 = pick(both, cg.gepc(out00, ov.row_stride() + ov.pixel_stride)?)?;
        let outs = [out00, out01, out10, out11];
        let mi = cg.gep2(m, i, XI * self.ocp)?;
        cg.for_channel_vectors(self.oc, |c, lanes| {
            let mut mv = Vec::with_capacity(XI);
            for xi in 0..XI {
                mv.push(cg.load_v(cg.gep(cg.gepc(mi, xi * self.ocp)?, c)?, LANES)?);
            }
            let bias = match self.bias_off {
                Some(off) => Some(cg.load_v(cg.gep(cg.gepc(env.weights, off)?, c)?, LANES)?),
                None => None,
            };
            for (y, out) in output_transform(cg, &mv)?.into_iter().zip(outs) {
                let y = match bias {
                    Some(b) => cg.fadd(y, b)?,
                    None => y,
                };
                let y = if self.relu { cg.relu(y)? } else { y };
                cg.store_v(y, cg.gep(out, c)?, lanes)?;
            }
            Ok(())
        })
    }
}

/// `Bᵀ d B` of a 4x4 patch `d` (row-major), 16 components `4a + b`.
fn input_transform<'ctx>(cg: &Cg<'ctx>, d: &[VectorValue<'ctx>]) -> Result<Vec<VectorValue<'ctx>>> {
    let sub = |a, b| -> Result<VectorValue<'ctx>> { Ok(cg.b.build_float_sub(a, b, "")?) };
    // Bᵀ rows: (d0 - d2), (d1 + d2), (d2 - d1), (d1 - d3).
    let rows4 = |x: [VectorValue<'ctx>; 4]| -> Result<[VectorValue<'ctx>; 4]> {
        Ok([
            sub(x[0], x[2])?,
            cg.fadd(x[1], x[2])?,
            sub(x[2], x[1])?,
            sub(x[1], x[3])?,
        ])
    };
    // Columns first (`cols[x][a]`), then each row `a` of the result.
    let col = |x: usize| rows4([d[x], d[4 + x], d[8 + x], d[12 + x]]);
    let (c0, c1, c2, c3) = (col(0)?, col(1)?, col(2)?, col(3)?);
    let mut out = Vec::with_capacity(XI);
    for (((a0, a1), a2), a3) in c0.into_iter().zip(c1).zip(c2).zip(c3) {
        out.extend(rows4([a0, a1, a2, a3])?);
    }
    Ok(out)
}

/// `Aᵀ m A` of the 16 components `m` (`4a + b`): outputs `[y00, y01, y10, y11]`.
fn output_transform<'ctx>(
    cg: &Cg<'ctx>,
    m: &[VectorValue<'ctx>],
) -> Result<[VectorValue<'ctx>; 4]> {
    let sub = |a, b| -> Result<VectorValue<'ctx>> { Ok(cg.b.build_float_sub(a, b, "")?) };
    // Aᵀ rows: (x0 + x1 + x2), (x1 - x2 - x3).
    let two = |x: [VectorValue<'ctx>; 4]| -> Result<[VectorValue<'ctx>; 2]> {
        Ok([
            cg.fadd(cg.fadd(x[0], x[1])?, x[2])?,
            sub(sub(x[1], x[2])?, x[3])?,
        ])
    };
    let mut t = Vec::with_capacity(4);
    for b in 0..4 {
        t.push(two([m[b], m[4 + b], m[8 + b], m[12 + b]])?);
    }
    let r0 = two([t[0][0], t[1][0], t[2][0], t[3][0]])?;
    let r1 = two([t[0][1], t[1][1], t[2][1], t[3][1]])?;
    Ok([r0[0], r0[1], r1[0], r1[1]])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn conv(ic: usize, oc: usize) -> ConvKernel {
        ConvKernel {
            out_channels: oc,
            kernel: [3, 3],
            stride: [1, 1],
            padding: [1, 1],
            weight: Arc::new(vec![0.5; oc * ic * 9]),
            bias: None,
            prologue: None,
            relu: false,
        }
    }

    fn plan(n: usize, hw: usize, ic: usize, oc: usize) -> WinogradPlan {
        let i = View::dense(0, n, hw, hw, ic);
        let o = View::dense(i.end_bytes(), n, hw, hw, oc);
        WinogradPlan::new(&conv(ic, oc), &i, &o, &mut WeightsBuilder::default())
    }

    #[test]
    fn filter_transform_matches_the_definition() {
        // A filter of ones: U[a][b] = (row sums of G)[a] · (row sums of G)[b].
        let u = transform_filter(&[1.0; 9]);
        let s = [1.0, 1.5, 0.5, 1.0];
        for a in 0..4 {
            for b in 0..4 {
                assert_eq!(u[a * 4 + b], s[a] * s[b]);
            }
        }
    }

    #[test]
    fn densenet_growth_convs_fit_the_stack_and_split() {
        for (n, hw, ic, oc) in [
            (1, 56, 128, 32),
            (1, 7, 128, 32),
            (8, 14, 128, 32),
            (1, 32, 48, 12),
            (64, 8, 48, 12),
            (1, 1, 48, 12),
            (2, 9, 640, 40),
        ] {
            let p = plan(n, hw, ic, oc);
            assert!(
                p.stack_bytes() <= crate::backend::cpu::MAX_TASK_STACK,
                "{p:?}"
            );
            let tiles = n * hw.div_ceil(2) * hw.div_ceil(2);
            assert!(p.tb * p.tblocks >= tiles && p.tb * (p.tblocks - 1) < tiles);
            if tiles >= TARGET_TASKS * TB_MIN {
                assert!(p.tasks() >= TARGET_TASKS, "{p:?}");
            }
        }
    }
}
