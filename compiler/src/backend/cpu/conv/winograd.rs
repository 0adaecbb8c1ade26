//! Winograd F(m×m, 3×3), m = 2 or 4, for stride-1, pad-1 3x3 convolutions
//! (the growth convs of every dense layer).
//!
//! The output is cut into m×m tiles (`ceil(H/m) × ceil(W/m)` per image,
//! numbered row-major over images, tile rows and tile columns); a task is a
//! block of `tb` consecutive tiles. With `t = m + 2` and `ξ` one of the `t²`
//! transform components, for each input-channel chunk:
//!
//! 1. **Input transform**: each tile's t×t input patch (rows `m·ty-1 ..`,
//!    columns `m·tx-1 ..`) is read with the prologue applied to real pixels
//!    and 0 for the padding (out-of-image taps are clamped loads replaced by
//!    0, so no border is read), transformed `V = Bᵀ d B` vectorised along
//!    channels, and stored into the panel `V[ξ][rows][kcp]`.
//! 2. **t² GEMMs**: `M[ξ] (tiles × O) += V[ξ] (tiles × kc) · U[ξ] (kc × O)`
//!    on the register-blocked micro-kernel (tiles as its pixel rows, output
//!    channels as its vectors), accumulating into `M[rows][ξ][ocp]` across
//!    chunks. `U = G g Gᵀ` is computed (in f64) and packed at compile time,
//!    per component in the micro-kernel's `[ic][NR]` block layout. The GEMMs
//!    run whole micro-kernel tiles; panel rows past the task's tiles are
//!    zeroed scratch.
//!
//! Then the **output transform** `Y = Aᵀ M A` adds the bias, applies the
//! ReLU and stores the m×m outputs straight into the output view. Outputs
//! of a partial tile past the right or bottom edge (odd `H` or `W`) are
//! stored to a dummy scratch vector instead, so nothing outside the image is
//! written.
//!
//! Per output pixel and (input, output) channel pair the GEMMs do `t²/m²`
//! MACs: 4 for F(2x2), 2.25 for F(4x4), where the direct conv does 9.
//! Measured relative error against the f64 reference
//! (`compiler/tests/cpu/kernels.rs`): F(2x2) below 6e-7, F(4x4) below 1e-5 for 128 input channels
//! (direct: below 6e-7); whole DenseNet-121 and DenseNet-BC-100 below 1e-6.

use super::{choose_mr, choose_nv, round_up, KC_MAX};
use crate::backend::cpu::codegen::{Cg, Result, VectorIsa};
use crate::backend::cpu::env::{in_base, out_base, pixel_at, AffineRef, Env, TARGET_TASKS};
use crate::backend::cpu::microkernel::{Microkernels, UkSpec};
use crate::backend::cpu::pack::{
    pack_conv_weight, pack_conv_weight_bf16, pad_to_vectors, OcBlocking, WeightsBuilder,
};
use crate::backend::kernel::{ConvKernel, View};
use crate::backend::BackendError;
use inkwell::values::{IntValue, PointerValue, VectorValue};
use inkwell::IntPredicate;

/// Floats of task scratch (panel `V`, accumulators `M`, dummy vector) per 16
/// vector registers: the panels hold whole micro-kernel tiles, which the 32
/// registers of AVX-512 make twice as tall. Sized so that F(4x4) on the 128
/// channels of a DenseNet bottleneck runs one micro-kernel tile of rows in one
/// channel chunk (14 x 36 x (128 + 32) floats in zmm, 6 x 36 x (128 + 32) in
/// ymm): with two chunks of 64 every GEMM call reloads and restores its
/// accumulators and runs half as long. DenseNet-121 at batch 1 on a Xeon
/// (AVX-512), from 26 Ki floats: 56x56 growth convs 1.85 -> 1.76 ms, 28x28
/// 1.27 -> 1.18 ms, whole run 13.38 -> 12.99 ms (`x86-64-v3`: 20.61 -> 20.28
/// ms); BC-100 b1 1.80 -> 1.73 ms (interleaved medians). Inside
/// `MAX_TASK_STACK` with the pointer table.
const SCRATCH_PER_16_REGISTERS: usize = 40 * 1024;

fn scratch_max(isa: VectorIsa) -> usize {
    SCRATCH_PER_16_REGISTERS * isa.registers / 16
}
/// Output pixels a task would like: a few micro-kernel calls per weight
/// panel.
const PIXELS_WANT: usize = 96;

/// The transforms of F(m×m, 3×3): `Bᵀ` (t×t), `G` (t×3), `Aᵀ` (m×t) with
/// `t = m + 2` (Lavin & Gray's matrices; F(4x4) on the points 0, ±1, ±2).
struct Transforms {
    bt: &'static [&'static [f64]],
    g: &'static [[f64; 3]],
    at: &'static [&'static [f64]],
    /// `Bᵀ` and `Aᵀ` have hand-factored forms ([`f4_bt`], [`f4_at`]) that share partial sums
    /// between rows; otherwise each row is its own linear combination ([`by_rows`]).
    factored: bool,
}

const F2: Transforms = Transforms {
    bt: &[
        &[1.0, 0.0, -1.0, 0.0],
        &[0.0, 1.0, 1.0, 0.0],
        &[0.0, -1.0, 1.0, 0.0],
        &[0.0, 1.0, 0.0, -1.0],
    ],
    g: &[
        [1.0, 0.0, 0.0],
        [0.5, 0.5, 0.5],
        [0.5, -0.5, 0.5],
        [0.0, 0.0, 1.0],
    ],
    at: &[&[1.0, 1.0, 1.0, 0.0], &[0.0, 1.0, -1.0, -1.0]],
    factored: false,
};

const F4: Transforms = Transforms {
    bt: &[
        &[4.0, 0.0, -5.0, 0.0, 1.0, 0.0],
        &[0.0, -4.0, -4.0, 1.0, 1.0, 0.0],
        &[0.0, 4.0, -4.0, -1.0, 1.0, 0.0],
        &[0.0, -2.0, -1.0, 2.0, 1.0, 0.0],
        &[0.0, 2.0, -1.0, -2.0, 1.0, 0.0],
        &[0.0, 4.0, 0.0, -5.0, 0.0, 1.0],
    ],
    g: &[
        [1.0 / 4.0, 0.0, 0.0],
        [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
        [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
        [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
        [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
        [0.0, 0.0, 1.0],
    ],
    at: &[
        &[1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
        &[0.0, 1.0, -1.0, 2.0, -2.0, 0.0],
        &[0.0, 1.0, 1.0, 4.0, 4.0, 0.0],
        &[0.0, 1.0, -1.0, 8.0, -8.0, 1.0],
    ],
    factored: true,
};

/// 2x2 tiles below which the direct kernel wins: too few tasks of whole
/// micro-kernel tiles for two threads (measured at batch 1 with two
/// threads: DenseNet-121 7x7 and BC-100 8x8, 16 tiles each).
const F2_MIN_TILES: usize = 24;

/// F(4x4) tiles a task at least needs for the 4x4 variant: enough tasks of
/// whole micro-kernel tiles for two threads.
const F4_MIN_TILES: usize = 48;

/// Transformed filters `U` (all components, packed) small enough to stay in a core's L2
/// (1 MiB on Zen 4, 2 MiB on Sapphire Rapids; 512 KiB on Zen 3) between the tasks that read
/// them: a quarter of the smallest of those.
const SMALL_U_BYTES: usize = 128 << 10;

/// Tiles a task at least gets where `U` is small ([`SMALL_U_BYTES`]), instead of a whole
/// micro-kernel tile: more, smaller tasks for two threads to even out. DenseNet-BC-100's
/// growth convs (`U` 110 KiB) at batch 1: 8 tasks of 8 tiles instead of 4 of 16, whole run
/// 2.20 -> 2.15 ms on a Zen 4 (interleaved medians, quiet machine). DenseNet-121's (590 KiB,
/// read by every task, more than the L2 keeps beside the panels) lost 1.7% that way, so they
/// keep whole micro-kernel tiles.
const SMALL_U_MIN_TILES: usize = 8;

/// The output tile side: F(4x4) does 2.25 MACs per output (per channel
/// pair) where F(2x2) does 4 and the direct conv 9, but needs enough 4x4
/// tiles to split (measured on DenseNet-BC-100 at batch 1: F(4x4) ahead at
/// 32x32, even at 16x16, behind at 8x8).
///
/// With bf16 GEMMs ([`VectorIsa::bf16`]) always F(2x2): F(4x4)'s transforms amplify the bf16
/// rounding of the transformed tiles to several percent of a conv's output (4e-2 on a
/// 128-channel conv, against 3e-3 for F(2x2)), and F(2x2) with bf16 GEMMs is faster than
/// F(4x4) with f32 GEMMs anyway (DenseNet-121 b1 on a Zen 4: 12.0 against 13.0 ms).
fn choose_m(o: &View, isa: VectorIsa) -> usize {
    if isa.bf16 {
        return 2;
    }
    if o.n * o.h.div_ceil(4) * o.w.div_ceil(4) >= F4_MIN_TILES && fits(4, o.channels, isa) {
        4
    } else {
        2
    }
}

/// Output channels `oc` in register blocks: `(blocking, mr, ocp)`.
fn oc_blocks(oc: usize, isa: VectorIsa) -> (OcBlocking, usize, usize) {
    let nv = choose_nv(oc, isa);
    let blocking = OcBlocking::new(oc, nv, isa.lanes);
    let ocp = blocking.full * blocking.nr() + blocking.tail_nv * isa.lanes;
    (blocking, choose_mr(nv, isa), ocp)
}

/// Scratch floats of one tile row of the task panels with `kc` channels.
fn per_tile(m: usize, kc: usize, ocp: usize, lanes: usize) -> usize {
    (m + 2) * (m + 2) * (round_up(kc, lanes) + ocp)
}

/// Whether one micro-kernel tile of rows fits the scratch at the smallest
/// channel chunk.
fn fits(m: usize, oc: usize, isa: VectorIsa) -> bool {
    let (_, mr, ocp) = oc_blocks(oc, isa);
    mr * per_tile(m, 2 * isa.lanes, ocp, isa.lanes) + ocp <= scratch_max(isa)
}

fn transforms(m: usize) -> &'static Transforms {
    if m == 4 {
        &F4
    } else {
        &F2
    }
}

/// Tiling decisions and packed constants of one Winograd convolution.
#[derive(Debug, PartialEq, Eq)]
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
    /// Output tile side `m` of F(m×m, 3×3); input patches are `t = m + 2`
    /// wide, with `xi = t²` transform components.
    pub m: usize,
    t: usize,
    xi: usize,
    /// Output channels rounded up to the blocks' vectors (a row of `M`).
    ocp: usize,
    /// Tiles per image row and column.
    pub th: usize,
    pub tw: usize,
    /// Tiles per task, and tasks.
    pub tb: usize,
    /// Rows of the task panels: `tb` rounded up to whole micro-kernel
    /// tiles (the GEMMs always run full tiles; the extra rows are scratch).
    rows: usize,
    pub tblocks: usize,
    pub kc: usize,
    /// 32-bit words of one panel row: `kc` rounded up to whole vectors, in f32 channels or,
    /// with bf16 GEMMs, in bf16 channel pairs (half as many).
    kcp: usize,
    /// Input channels per word of `V` and `U`: 2 with bf16 GEMMs ([`VectorIsa::bf16`]), else 1.
    k_step: usize,
    u_off: usize,
    /// Elements of one component's packed `U`.
    u_xi: usize,
    /// A zero vector the micro-kernel starts its accumulators from.
    zero_off: usize,
    bias_off: Option<usize>,
}

/// `G g Gᵀ` of one 3x3 filter `g` (row-major), as `t²` components `t·a + b`.
fn transform_filter(tr: &Transforms, g: &[f32]) -> Vec<f64> {
    let mut u = Vec::with_capacity(tr.g.len() * tr.g.len());
    for ga in tr.g {
        for gb in tr.g {
            let mut s = 0.0;
            for (y, gay) in ga.iter().enumerate() {
                for (x, gbx) in gb.iter().enumerate() {
                    s += gay * f64::from(g[y * 3 + x]) * gbx;
                }
            }
            u.push(s);
        }
    }
    u
}

impl WinogradPlan {
    /// Whether `c` is a convolution this plan computes, and where it beats
    /// the direct kernel (measured on DenseNet-BC-100 and DenseNet-121
    /// growth convs; tiny input-channel counts leave the GEMMs too short to
    /// pay for the transforms). Not on the AMX tiles ([`VectorIsa::amx`]): there the
    /// multiplies cost so little that the transforms would be the whole cost, and the direct
    /// kernel runs on the tiles.
    pub fn applies(c: &ConvKernel, i: &View, o: &View, isa: VectorIsa) -> bool {
        !isa.amx
            && c.kernel == [3, 3]
            && c.stride == [1, 1]
            && c.padding == [1, 1]
            && i.channels >= 16
            && o.n * o.h.div_ceil(2) * o.w.div_ceil(2) >= F2_MIN_TILES
            && fits(2, c.out_channels, isa)
    }

    pub fn new(
        c: &ConvKernel,
        i: &View,
        o: &View,
        isa: VectorIsa,
        wb: &mut WeightsBuilder,
    ) -> WinogradPlan {
        let m = choose_m(o, isa);
        Self::with_tile(c, i, o, isa, wb, m)
    }

    fn with_tile(
        c: &ConvKernel,
        i: &View,
        o: &View,
        isa: VectorIsa,
        wb: &mut WeightsBuilder,
        m: usize,
    ) -> WinogradPlan {
        let lanes = isa.lanes;
        let tr = transforms(m);
        let (t, xi) = (m + 2, (m + 2) * (m + 2));
        let (ic, oc) = (i.channels, c.out_channels);
        let (blocking, mr, ocp) = oc_blocks(oc, isa);

        let mut per_xi = vec![vec![0.0f32; oc * ic]; xi];
        for (f, g) in c.weight.chunks_exact(9).enumerate() {
            for (xi, u) in transform_filter(tr, g).iter().enumerate() {
                per_xi[xi][f] = *u as f32;
            }
        }
        let mut packed = Vec::new();
        // bf16 GEMMs only for F(2x2): F(4x4)'s transforms (coefficients up to 8, with
        // cancellation) amplify the bf16 rounding of the transformed tiles to several percent
        // of a single conv's output, so it keeps f32 GEMMs.
        let k_step = if isa.bf16 && m == 2 { 2 } else { 1 };
        for w in &per_xi {
            packed.extend(if k_step == 2 {
                pack_conv_weight_bf16(w, ic, [1, 1], &blocking, 1)
            } else {
                pack_conv_weight(w, ic, [1, 1], &blocking)
            });
        }
        let u_xi = packed.len() / xi;
        let u_off = wb.push(&packed);
        let zero_off = wb.push(&vec![0.0; blocking.nr()]);
        let bias_off = c.bias.as_ref().map(|b| wb.push(&pad_to_vectors(b, lanes)));
        let prologue = c.prologue.as_ref().map(|a| AffineRef::pack(a, isa, wb));

        let (th, tw) = (o.h.div_ceil(m), o.w.div_ceil(m));
        let tiles = o.n * th * tw;
        // Rows of the panels that fit the scratch: at least one micro-kernel
        // tile (`fits`), with smaller K chunks if need be.
        let rows_fit =
            |kc: usize| scratch_max(isa).saturating_sub(ocp) / per_tile(m, kc, ocp, lanes);
        let mut kc = ic.min(KC_MAX);
        while kc > 2 * lanes && rows_fit(kc) < mr {
            kc = round_up(kc / 2, lanes);
        }
        let want = round_up(PIXELS_WANT.div_ceil(m * m), mr);
        let tb_max = (rows_fit(kc) / mr * mr).min(want).max(mr);
        // At least a micro-kernel tile's rows per task, except where the transformed filters
        // `U` stay in the L2 anyway: every task reads all of `U`, so small tasks cost little
        // more there and let two threads even out (see `SMALL_U_BYTES`).
        let u_bytes = packed.len() * 4;
        let tb_min = if u_bytes <= SMALL_U_BYTES {
            SMALL_U_MIN_TILES.min(mr)
        } else {
            mr
        };
        let mut tb = tiles
            .div_ceil(TARGET_TASKS)
            .clamp(tb_min.min(tiles), tb_max);
        // An even task count balances two threads, and tasks as equal as can be: 49 tiles
        // as 13 + 13 + 13 + 10 rather than 14 + 14 + 14 + 7, which left one of two threads
        // idle for a quarter of the conv (DenseNet-121's 28x28 and 14x14 growth convs at
        // batch 1).
        let mut tasks = tiles.div_ceil(tb);
        if tasks > 1 && tasks % 2 == 1 && tasks < 4 * TARGET_TASKS {
            tasks += 1;
        }
        tb = tiles.div_ceil(tasks);
        let tblocks = tiles.div_ceil(tb);
        // The GEMMs run whole micro-kernel tiles, so a task's `tb` tiles are cut into the
        // fewest tiles of at most `mr` rows, made as even as can be: 16 tiles as one 16-row
        // tile rather than a 24-row tile a third empty (DenseNet-BC-100's 32x32 and 16x16
        // growth convs at batch 1), 40 as 2 x 20 rather than 2 x 24.
        let mr = tb.div_ceil(tb.div_ceil(mr));
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
            m,
            t,
            xi,
            ocp,
            th,
            tw,
            tb,
            rows: round_up(tb, mr),
            tblocks,
            kc,
            kcp: round_up(kc, lanes) / k_step,
            k_step,
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
        self.xi * self.rows * self.kcp
    }

    fn m_len(&self) -> usize {
        self.rows * self.xi * self.ocp
    }

    pub fn scratch_floats(&self) -> usize {
        self.v_len() + self.m_len() + self.ocp
    }

    /// The scratch and the table of `M` row pointers.
    pub fn stack_bytes(&self) -> usize {
        self.scratch_floats() * 4 + self.rows * 8
    }

    /// Task `t` is tiles `t·tb ..` (fewer in the last task).
    pub fn emit_task<'ctx>(
        &self,
        cg: &Cg<'ctx>,
        uks: &Microkernels<'ctx>,
        env: &Env<'ctx>,
        t: IntValue<'ctx>,
    ) -> Result<()> {
        let tiles = self.n * self.th * self.tw;
        let g0 = cg.mulc(t, self.tb)?;
        let count = cg.umin(cg.c64(self.tb), cg.sub(cg.c64(tiles), g0)?)?;
        self.emit_block(cg, uks, env, g0, count)
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
        g0: IntValue<'ctx>,
        count: IntValue<'ctx>,
    ) -> Result<()> {
        let scratch = env
            .scratch
            .ok_or_else(|| BackendError::Codegen("Winograd conv without scratch".into()))?;
        let v = scratch;
        let m = cg.gepc(scratch, self.v_len())?;
        let dummy = cg.gepc(m, self.m_len())?;
        let len = u32::try_from(self.rows)
            .map_err(|_| BackendError::Codegen("tile table too large".into()))?;
        let table = cg.entry_alloca(cg.ptr.array_type(len).into(), "mrows")?;
        cg.for_n(self.rows, |i| {
            cg.b.build_store(cg.ptr_elem(table, i)?, cg.gep2(m, i, self.xi * self.ocp)?)?;
            Ok(())
        })?;

        // Panel rows past `count` feed only unused rows of `M`; zero them
        // so the GEMMs read defined values.
        cg.for_range(count, cg.c64(self.rows), 1, |i| {
            cg.for_n(self.xi, |xi| {
                let row = cg.gep(
                    v,
                    cg.add(cg.mulc(xi, self.rows * self.kcp)?, cg.mulc(i, self.kcp)?)?,
                )?;
                let full = self.kcp / cg.lanes;
                cg.for_n(full, |k| {
                    cg.store_v(cg.vf.const_zero(), cg.gep2(row, k, cg.lanes)?, cg.lanes)
                })?;
                // bf16 pairs: a row of half a vector.
                let rest = self.kcp % cg.lanes;
                if rest > 0 {
                    cg.store_v(cg.vf.const_zero(), cg.gepc(row, full * cg.lanes)?, rest)?;
                }
                Ok(())
            })
        })?;
        let chunks = self.ic.div_ceil(self.kc);
        let chunk = |c0: IntValue<'ctx>, kc: usize, acc: IntValue<'ctx>| -> Result<()> {
            cg.for_range(cg.c64(0), count, 1, |i| {
                self.input_tile(cg, env, v, g0, i, c0, kc)
            })?;
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
        cg.for_range(cg.c64(0), count, 1, |i| {
            self.output_tile(cg, env, m, dummy, g0, i)
        })
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
        let img = cg.gep2(in_base(cg, env, iv)?, n, iv.image_stride())?;
        let img = cg.gep(img, c0)?;
        let ih0 = cg.sub(cg.mulc(ty, self.m)?, cg.c64(1))?;
        let iw0 = cg.sub(cg.mulc(tx, self.m)?, cg.c64(1))?;
        // Per row (column) of the patch: clamped offset and whether it is real.
        let axis = |start: IntValue<'ctx>, extent: usize, stride: usize| {
            (0..self.t)
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
        let mut ptrs = Vec::with_capacity(self.xi);
        let mut oks = Vec::with_capacity(self.xi);
        for (ro, rok) in &rows {
            for (co, cok) in &cols {
                ptrs.push(cg.gep(img, cg.add(*ro, *co)?)?);
                oks.push(cg.b.build_and(*rok, *cok, "")?);
            }
        }
        let last = self.t - 1;
        let interior = cg.b.build_and(
            cg.b.build_and(rows[0].1, rows[last].1, "")?,
            cg.b.build_and(cols[0].1, cols[last].1, "")?,
            "",
        )?;
        let dst = cg.gep(v, cg.mulc(i, self.kcp)?)?;
        let body = |masked: bool| {
            cg.for_channel_vectors(kc, |c, lanes| {
                let mut d = Vec::with_capacity(self.xi);
                for (p, ok) in ptrs.iter().zip(&oks) {
                    let x = cg.load_v(cg.gep(*p, c)?, lanes)?;
                    let x = match &self.prologue {
                        Some(a) => a.apply(cg, env, x, cg.add(c0, c)?)?,
                        None => x,
                    };
                    d.push(if masked {
                        cg.b.build_select(*ok, x, cg.vf.const_zero(), "")?
                            .into_vector_value()
                    } else {
                        x
                    });
                }
                let v = transforms(self.m).input(cg, &d)?;
                for (xi, x) in v.into_iter().enumerate() {
                    let row = cg.gepc(dst, xi * self.rows * self.kcp)?;
                    if self.k_step == 2 {
                        // bf16 pairs: channel `c` is word `c / 2`.
                        let word = cg.b.build_right_shift(c, cg.c64(1), false, "")?;
                        cg.store_bf16(x, cg.gep(row, word)?)?;
                    } else {
                        cg.store_v(x, cg.gep(row, c)?, cg.lanes)?;
                    }
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
        count: IntValue<'ctx>,
        acc: IntValue<'ctx>,
    ) -> Result<()> {
        let bk = &self.blocking;
        // Whole micro-kernel tiles: rows past `count` compute into unused
        // scratch rows of `M`.
        let mtiles = cg.divrem(cg.addc(count, self.mr - 1)?, self.mr)?.0;
        let u = cg.gepc(env.weights, self.u_off)?;
        let zero = cg.gepc(env.weights, self.zero_off)?;
        let no_relu = cg.i1.const_zero();
        cg.for_n(self.xi, |xi| {
            let a = cg.gep2(v, xi, self.rows * self.kcp)?;
            let u = cg.gep2(u, xi, self.u_xi)?;
            for (j, (oc0, nv, _)) in bk.iter().enumerate() {
                let nr = nv * cg.lanes;
                // Words of U before block `j`, and before channel `c0` inside it.
                let block = j * self.ic.div_ceil(self.k_step) * bk.nr();
                let c0w = if self.k_step == 2 {
                    cg.b.build_right_shift(c0, cg.c64(1), false, "")?
                } else {
                    c0
                };
                let b = cg.gep(cg.gepc(u, block)?, cg.mulc(c0w, nr)?)?;
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
                    dot: self.k_step == 2,
                    tiles: false,
                    store_pairs: false,
                    prefetch_next: env.next.is_some(),
                    prefetch_input: env.next_input.is_some(),
                };
                let f = uks.get(cg, spec)?;
                // Reduction steps of a call: channels, or bf16 pairs.
                let steps = cg.c64(kc.div_ceil(self.k_step));
                cg.for_range(cg.c64(0), mtiles, 1, |tile| {
                    let a = cg.gep2(a, tile, self.mr * self.kcp)?;
                    let cs = cg.ptr_elem(table, cg.mulc(tile, self.mr)?)?;
                    let next = match &env.next {
                        Some(n) => n.call(cg, steps)?,
                        None => b,
                    };
                    let args = [
                        a.into(),
                        b.into(),
                        cs.into(),
                        col.into(),
                        zero.into(),
                        cg.c64(kc).into(),
                        acc.into(),
                        no_relu.into(),
                        next.into(),
                        // No input rows to prefetch (`prefetch_input` is off): a line of `b`.
                        b.into(),
                    ];
                    cg.b.build_call(f, &args, "")?;
                    Ok(())
                })?;
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
        let (oh, ow) = (cg.mulc(ty, self.m)?, cg.mulc(tx, self.m)?);
        let out00 = pixel_at(cg, out_base(cg, env, ov)?, ov, [n, oh, ow])?;
        // Output row (column) `k` of the tile is inside the image.
        let inside = |x: IntValue<'ctx>, k: usize, e: usize| -> Result<IntValue<'ctx>> {
            Ok(cg
                .b
                .build_int_compare(IntPredicate::ULT, cg.addc(x, k)?, cg.c64(e), "")?)
        };
        let mut outs = Vec::with_capacity(self.m * self.m);
        for r in 0..self.m {
            for q in 0..self.m {
                let p = cg.gepc(out00, r * ov.row_stride() + q * ov.pixel_stride)?;
                outs.push(if r == 0 && q == 0 {
                    p
                } else {
                    let ok =
                        cg.b.build_and(inside(oh, r, self.h)?, inside(ow, q, self.w)?, "")?;
                    cg.b.build_select(ok, p, dummy, "")?.into_pointer_value()
                });
            }
        }
        let mi = cg.gep2(m, i, self.xi * self.ocp)?;
        cg.for_channel_vectors(self.oc, |c, lanes| {
            let mut mv = Vec::with_capacity(self.xi);
            for xi in 0..self.xi {
                mv.push(cg.load_v(cg.gep(cg.gepc(mi, xi * self.ocp)?, c)?, cg.lanes)?);
            }
            let bias = match self.bias_off {
                Some(off) => Some(cg.load_v(cg.gep(cg.gepc(env.weights, off)?, c)?, cg.lanes)?),
                None => None,
            };
            let ys = transforms(self.m).output(cg, &mv)?;
            for (y, out) in ys.into_iter().zip(&outs) {
                let y = match bias {
                    Some(b) => cg.fadd(y, b)?,
                    None => y,
                };
                let y = if self.relu { cg.relu(y)? } else { y };
                cg.store_v(y, cg.gep(*out, c)?, lanes)?;
            }
            Ok(())
        })
    }
}

/// The arithmetic the transforms are written in, so that one definition serves the emitted
/// code (vectors, [`Cg`]) and the tests (`f64`).
trait Arith {
    type V: Copy;
    fn add(&self, a: Self::V, b: Self::V) -> Result<Self::V>;
    fn sub(&self, a: Self::V, b: Self::V) -> Result<Self::V>;
    fn mul(&self, c: f64, x: Self::V) -> Result<Self::V>;
    /// `c·x + acc`.
    fn fma(&self, c: f64, x: Self::V, acc: Self::V) -> Result<Self::V>;
    fn zero(&self) -> Self::V;
}

impl<'ctx> Arith for Cg<'ctx> {
    type V = VectorValue<'ctx>;
    fn add(&self, a: Self::V, b: Self::V) -> Result<Self::V> {
        self.fadd(a, b)
    }
    fn sub(&self, a: Self::V, b: Self::V) -> Result<Self::V> {
        Ok(self.b.build_float_sub(a, b, "")?)
    }
    fn mul(&self, c: f64, x: Self::V) -> Result<Self::V> {
        self.fmul(self.splat_c(c as f32), x)
    }
    fn fma(&self, c: f64, x: Self::V, acc: Self::V) -> Result<Self::V> {
        Cg::fma(self, self.splat_c(c as f32), x, acc)
    }
    fn zero(&self) -> Self::V {
        self.vf.const_zero()
    }
}

impl Transforms {
    /// `V = Bᵀ d B` of a `t × t` patch `d` (row-major).
    fn input<A: Arith>(&self, a: &A, d: &[A::V]) -> Result<Vec<A::V>> {
        if self.factored {
            sandwich(a, self.bt, d, |v| f4_bt(a, v))
        } else {
            sandwich(a, self.bt, d, |v| by_rows(a, self.bt, v))
        }
    }

    /// `Y = Aᵀ M A` of the `t × t` products `m` (row-major).
    fn output<A: Arith>(&self, a: &A, m: &[A::V]) -> Result<Vec<A::V>> {
        if self.factored {
            sandwich(a, self.at, m, |v| f4_at(a, v))
        } else {
            sandwich(a, self.at, m, |v| by_rows(a, self.at, v))
        }
    }
}

/// `X v` for a column `v`, each row of `X` as `Σ X[r][k] · v[k]` over its non-zero
/// coefficients, with adds and subtracts for ±1.
fn by_rows<A: Arith>(a: &A, x: &[&[f64]], v: &[A::V]) -> Result<Vec<A::V>> {
    x.iter()
        .map(|row| {
            let mut acc: Option<A::V> = None;
            for (&c, &x) in row.iter().zip(v) {
                if c == 0.0 {
                    continue;
                }
                acc = Some(match (acc, c) {
                    (None, 1.0) => x,
                    (None, _) => a.mul(c, x)?,
                    (Some(s), 1.0) => a.add(s, x)?,
                    (Some(s), -1.0) => a.sub(s, x)?,
                    (Some(s), _) => a.fma(c, x, s)?,
                });
            }
            Ok(acc.unwrap_or_else(|| a.zero()))
        })
        .collect()
}

/// `Bᵀ d` of F(4x4) for one column `d`, rows sharing their partial sums: 14 operations where
/// [`by_rows`] takes 22 (the input transform was about a third of the time of DenseNet-121's
/// 56x56 growth convs, its GEMMs the rest).
fn f4_bt<A: Arith>(a: &A, d: &[A::V]) -> Result<Vec<A::V>> {
    let (s12, s34) = (a.add(d[1], d[2])?, a.add(d[3], d[4])?);
    let (d12, d43) = (a.sub(d[1], d[2])?, a.sub(d[4], d[3])?);
    let (d42, d31) = (a.sub(d[4], d[2])?, a.sub(d[3], d[1])?);
    Ok(vec![
        a.fma(4.0, d[0], a.fma(-5.0, d[2], d[4])?)?, // 4 d0 - 5 d2 + d4
        a.fma(-4.0, s12, s34)?,                      // -4 d1 - 4 d2 + d3 + d4
        a.fma(4.0, d12, d43)?,                       // 4 d1 - 4 d2 - d3 + d4
        a.fma(2.0, d31, d42)?,                       // -2 d1 - d2 + 2 d3 + d4
        a.fma(-2.0, d31, d42)?,                      // 2 d1 - d2 - 2 d3 + d4
        a.fma(4.0, d[1], a.fma(-5.0, d[3], d[5])?)?, // 4 d1 - 5 d3 + d5
    ])
}

/// `Aᵀ m` of F(4x4) for one column `m`, rows sharing their partial sums: 10 operations where
/// [`by_rows`] takes 14.
fn f4_at<A: Arith>(a: &A, m: &[A::V]) -> Result<Vec<A::V>> {
    let (s12, d12) = (a.add(m[1], m[2])?, a.sub(m[1], m[2])?);
    let (s34, d34) = (a.add(m[3], m[4])?, a.sub(m[3], m[4])?);
    Ok(vec![
        a.add(a.add(m[0], s12)?, s34)?,      // m0 + m1 + m2 + m3 + m4
        a.fma(2.0, d34, d12)?,               // m1 - m2 + 2 m3 - 2 m4
        a.fma(4.0, s34, s12)?,               // m1 + m2 + 4 m3 + 4 m4
        a.add(a.fma(8.0, d34, d12)?, m[5])?, // m1 - m2 + 8 m3 - 8 m4 + m5
    ])
}

/// `X d Xᵀ` for an `r × t` matrix `X` and a `t × t` block `d` (row-major), where `column`
/// computes `X v` (`r` values) for a column `v` of `t`: the `r × r` result, row-major.
fn sandwich<A: Arith>(
    a: &A,
    x: &[&[f64]],
    d: &[A::V],
    column: impl Fn(&[A::V]) -> Result<Vec<A::V>>,
) -> Result<Vec<A::V>> {
    let (r, t) = (x.len(), x.first().map_or(0, |row| row.len()));
    debug_assert_eq!(d.len(), t * t);
    // tmp[i][col] = (X d)[i][col], one column of `d` at a time.
    let mut tmp = vec![a.zero(); r * t];
    for col in 0..t {
        let v: Vec<A::V> = (0..t).map(|y| d[y * t + col]).collect();
        for (i, x) in column(&v)?.into_iter().enumerate() {
            tmp[i * t + col] = x;
        }
    }
    // out[i][j] = (tmp Xᵀ)[i][j] = (X tmp[i]ᵀ)[j], one row of `tmp` at a time.
    let mut out = Vec::with_capacity(r * r);
    for row in tmp.chunks_exact(t) {
        out.extend(column(row)?);
    }
    Ok(out)
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

    fn plan(n: usize, hw: usize, ic: usize, oc: usize, m: usize) -> WinogradPlan {
        let i = View::dense(0, n, hw, hw, ic);
        let o = View::dense(i.end_bytes(), n, hw, hw, oc);
        WinogradPlan::with_tile(
            &conv(ic, oc),
            &i,
            &o,
            VectorIsa::AVX2,
            &mut WeightsBuilder::default(),
            m,
        )
    }

    #[test]
    fn filter_transform_matches_the_definition() {
        // A filter of ones: U[a][b] = (row sums of G)[a] · (row sums of G)[b].
        let u = transform_filter(&F2, &[1.0; 9]);
        let s = [1.0, 1.5, 0.5, 1.0];
        for a in 0..4 {
            for b in 0..4 {
                assert_eq!(u[a * 4 + b], s[a] * s[b]);
            }
        }
    }

    /// `X d Xᵀ` in f64.
    fn sandwich64(x: &[&[f64]], d: &[f64], t: usize) -> Vec<f64> {
        let r = x.len();
        let mut out = vec![0.0; r * r];
        for a in 0..r {
            for b in 0..r {
                for y in 0..t {
                    for c in 0..t {
                        out[a * r + b] += x[a][y] * d[y * t + c] * x[b][c];
                    }
                }
            }
        }
        out
    }

    #[test]
    fn transforms_compute_the_correlation() {
        for m in [2, 4] {
            let tr = transforms(m);
            let t = m + 2;
            let d: Vec<f64> = (0..t * t)
                .map(|k| ((k * 7919) % 23) as f64 - 11.0)
                .collect();
            let g: Vec<f32> = (0..9).map(|k| ((k * 31) % 7) as f32 - 3.0).collect();
            let u = transform_filter(tr, &g);
            let v = sandwich64(tr.bt, &d, t);
            let prod: Vec<f64> = u.iter().zip(&v).map(|(a, b)| a * b).collect();
            let y = sandwich64(tr.at, &prod, t);
            for r in 0..m {
                for q in 0..m {
                    let mut want = 0.0;
                    for ky in 0..3 {
                        for kx in 0..3 {
                            want += f64::from(g[ky * 3 + kx]) * d[(r + ky) * t + q + kx];
                        }
                    }
                    let got = y[r * m + q];
                    assert!((got - want).abs() < 1e-9, "m{m} ({r},{q}): {got} vs {want}");
                }
            }
        }
    }

    /// Plain f64 arithmetic, to evaluate the emitted transforms' formulas.
    struct F64;

    impl Arith for F64 {
        type V = f64;
        fn add(&self, a: f64, b: f64) -> Result<f64> {
            Ok(a + b)
        }
        fn sub(&self, a: f64, b: f64) -> Result<f64> {
            Ok(a - b)
        }
        fn mul(&self, c: f64, x: f64) -> Result<f64> {
            Ok(c * x)
        }
        fn fma(&self, c: f64, x: f64, acc: f64) -> Result<f64> {
            Ok(c * x + acc)
        }
        fn zero(&self) -> f64 {
            0.0
        }
    }

    #[test]
    fn emitted_transforms_are_the_matrices() {
        for m in [2, 4] {
            let tr = transforms(m);
            let t = m + 2;
            for seed in 0..8 {
                let d: Vec<f64> = (0..t * t)
                    .map(|k| (((k + 5 * seed) * 7919) % 23) as f64 - 11.0 + 0.25 * seed as f64)
                    .collect();
                let (got, want) = (
                    tr.input(&F64, &d).expect("f64 input transform"),
                    sandwich64(tr.bt, &d, t),
                );
                assert_eq!(got.len(), want.len());
                for (k, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g - w).abs() <= 1e-12 * w.abs().max(1.0),
                        "F({m}) V[{k}]: {g} vs {w}"
                    );
                }
                let (got, want) = (
                    tr.output(&F64, &d).expect("f64 output transform"),
                    sandwich64(tr.at, &d, t),
                );
                assert_eq!(got.len(), m * m);
                for (k, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g - w).abs() <= 1e-12 * w.abs().max(1.0),
                        "F({m}) Y[{k}]: {g} vs {w}"
                    );
                }
            }
        }
    }

    #[test]
    fn densenet121_growth_convs_take_their_channels_in_one_chunk() {
        for isa in [VectorIsa::AVX2, VectorIsa::AVX512] {
            for hw in [56, 28] {
                let i = View::dense(0, 1, hw, hw, 128);
                let o = View::dense(i.end_bytes(), 1, hw, hw, 32);
                let p =
                    WinogradPlan::new(&conv(128, 32), &i, &o, isa, &mut WeightsBuilder::default());
                assert_eq!((p.m, p.kc), (4, 128), "{isa:?} {hw}x{hw}: {p:?}");
                assert!(p.rows >= p.tb, "{p:?}");
                assert!(
                    p.stack_bytes() <= crate::backend::cpu::MAX_TASK_STACK,
                    "{p:?}"
                );
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
            for m in [2, 4] {
                let p = plan(n, hw, ic, oc, m);
                assert!(
                    p.stack_bytes() <= crate::backend::cpu::MAX_TASK_STACK,
                    "{p:?}"
                );
                let tiles = n * hw.div_ceil(m) * hw.div_ceil(m);
                assert!(p.tb * p.tblocks >= tiles && p.tb * (p.tblocks - 1) < tiles);
                // Whole micro-kernel tiles, less than one row of one tile empty per tile.
                let (full_mr, tiles_per_task) = (choose_mr(1, VectorIsa::AVX2), p.rows / p.mr);
                assert!(p.mr <= full_mr && p.rows.is_multiple_of(p.mr), "{p:?}");
                assert!(p.rows >= p.tb && p.rows - p.tb < tiles_per_task, "{p:?}");
                if tiles >= TARGET_TASKS * p.mr {
                    assert!(p.tasks() >= TARGET_TASKS, "{p:?}");
                }
            }
        }
    }
}
