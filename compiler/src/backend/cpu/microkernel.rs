//! The register-blocked convolution micro-kernel: an `MR` pixels × `8·nv`
//! output channels tile held in `MR·nv` vector accumulators, updated by one
//! broadcast-times-vector FMA per (pixel, vector) for every tap and input
//! channel.
//!
//! ```text
//! void uk(const float* a, const float* b, float* const* c, i64 col,
//!         const float* bias, i64 kc, i1 accumulate, i1 relu, const void* next,
//!         const void* next_input)
//!   acc[i][v] = accumulate ? c[i][col + 8v ..] : bias[8v ..]
//!   for kh < KH, kw < KW, ic < kc:
//!     bv[v]      = b[(kh*KW + kw)*B_TAP + ic*NR + 8v ..]          (packed weights)
//!     acc[i][v] += splat(a[i*A_STEP + kh*A_ROW + kw*A_COL + ic]) * bv[v]
//!     prefetch into the L2: next + ((kh*KW + kw)*steps + ic)*64        (a later kernel's weights)
//!     prefetch into the L2: next_input + ((kh*KW + kw)*steps + ic)*64  (the next task's input)
//!   if relu: acc = max(acc, 0)
//!   c[i][col + 8v ..] = acc[i][v]         (the last vector masked to VALID)
//! ```
//!
//! With [`UkSpec::dot`] (bf16, `isa.rs`) `a` and `b` hold 32-bit words, each a pair of bf16
//! input channels, every stride counts words, and one `vdpbf16ps` per (pixel, vector) adds
//! the products of a channel pair: the reduction loop runs over `ceil(kc / 2)` pairs.
//!
//! Every stride is a compile-time constant of the [`UkSpec`]; identical specs
//! share one function. The output pixels come as an array of `MR` pointers
//! (a table the task fills once per pixel block), so a tile may span rows of
//! a bordered buffer. `a` is either the input view itself or a packed panel
//! (prologue applied, zero padding materialised), so the kernel never checks
//! bounds.

use super::amx::{emit as emit_tiles, TileShape};
use super::codegen::{Cg, Result};
use super::env::LINE_BYTES;
use inkwell::values::FunctionValue;
use inkwell::IntPredicate;
use std::cell::RefCell;
use std::collections::HashMap;

/// The constants that shape one micro-kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct UkSpec {
    /// Pixels in the tile.
    pub mr: usize,
    /// Vectors of output channels.
    pub nv: usize,
    /// Output channels actually stored (`<= 8·nv`).
    pub valid: usize,
    /// A elements between consecutive tile pixels.
    pub a_step: usize,
    /// Kernel taps `[KH, KW]`.
    pub taps: [usize; 2],
    /// A elements per `kh` step and per `kw` step.
    pub a_row: usize,
    pub a_col: usize,
    /// B elements per tap (input channels × block width).
    pub b_tap: usize,
    /// bf16 pair dot products (`vdpbf16ps`) on 32-bit words of A and B instead of f32 FMAs.
    pub dot: bool,
    /// With `dot`: on the AMX tiles (`amx.rs`), `mr` up to 32 pixels of whole 16-row tiles.
    pub tiles: bool,
    /// With `tiles`: store the outputs as bf16 pairs (`ConvPlan::out_pairs`), from the bias.
    pub store_pairs: bool,
    /// Prefetch a line of `next` per reduction step (`env::PrefetchLines`); set by the caller
    /// from its body's `Env::next`.
    pub prefetch_next: bool,
    /// Prefetch a line of `next_input` per reduction step (`env::Env::next_input`).
    pub prefetch_input: bool,
}

/// Micro-kernels emitted so far, by spec.
#[derive(Debug, Default)]
pub(crate) struct Microkernels<'ctx> {
    cache: RefCell<HashMap<UkSpec, FunctionValue<'ctx>>>,
}

impl<'ctx> Microkernels<'ctx> {
    /// The function for `spec`, emitting it on first use. The builder's
    /// position is restored afterwards.
    pub fn get(&self, cg: &Cg<'ctx>, spec: UkSpec) -> Result<FunctionValue<'ctx>> {
        if let Some(f) = self.cache.borrow().get(&spec) {
            return Ok(*f);
        }
        let here = cg.b.get_insert_block();
        let id = self.cache.borrow().len();
        let kind = match (spec.dot, spec.tiles) {
            (_, true) => "_amx",
            (true, false) => "_bf16",
            (false, false) => "",
        };
        let name = format!("dnc_uk{id}_{}x{}{kind}", spec.mr, spec.nv * cg.lanes);
        let f = if spec.tiles {
            if !spec.dot {
                return Err(crate::backend::BackendError::Codegen(format!(
                    "AMX tiles multiply bf16 pairs only: {spec:?}"
                )));
            }
            let shape = TileShape {
                mr: spec.mr,
                nv: spec.nv,
                valid: spec.valid,
                a_step: spec.a_step,
                taps: spec.taps,
                a_row: spec.a_row,
                a_col: spec.a_col,
                b_tap: spec.b_tap,
                store_pairs: spec.store_pairs,
            };
            emit_tiles(cg, &shape, &name)?
        } else {
            emit(cg, &spec, &name)?
        };
        if let Some(bb) = here {
            cg.b.position_at_end(bb);
        }
        self.cache.borrow_mut().insert(spec, f);
        Ok(f)
    }
}

/// How far ahead of its reduction step the micro-kernel prefetches B, the packed weights:
/// one `prefetcht0` per cache line of each step's B row, this many bytes on. At batch 1 most
/// weights are read once per inference, straight from DRAM (DenseNet-121's 31 MB do not stay
/// in a 32 MB L3 shared with the activations), and the layers with few pixels per weight
/// (7x7 blocks, the last transition) waited on them. Measured on a Zen 4, interleaved medians:
/// DenseNet-121 b1 zmm 20.1 -> 19.2 ms, ymm (`x86-64-v3`) 20.8 -> 20.1, bf16 11.7 -> 11.4;
/// BC-100 b1 unchanged (its weights stay in cache); 1, 2, 4 and 8 KiB ahead within noise
/// of each other. A prefetch past the end of the weights is harmless (a hint, never a fault).
const PREFETCH_BYTES: usize = 4096;

/// Whether the reduction loop does two steps per iteration. An unrolled pair lets LLVM's
/// scheduler load the second step's B vectors while the first step's FMAs still read the
/// first's, so the loop then needs `mr·nv` accumulators, `2·nv` B vectors and a broadcast in
/// registers. Where that exceeds the register file, LLVM keeps an accumulator on the stack
/// instead, and that accumulator's FMA then waits on a store-to-load round trip every step:
/// DenseNet-121's 14x32 zmm tile (28 + 4 + 1 = 33 registers) spilled in every loop (4 stack
/// accesses per pair of steps) and ran 5% slower than one step per iteration on a Zen 4;
/// AVX2's 6x16 (12 + 4 + 1 = 17) and BC-100's 9x48 (27 + 6 + 1 = 34) gain nothing from the
/// pair either. bf16 1x1 tiles keep the pair: LLVM does not hoist the `vdpbf16ps` operands'
/// loads that way there (no spills in the same 14x32 shape) and the pair was 4% faster on
/// DenseNet-121; a bf16 tile over several taps (the stem's 7x7) does spill with it.
/// `compiler/tests/cpu/spills.rs` reads the loops of every tile DenseNet-121 and BC-100 use.
pub(crate) fn unroll_by_two(s: &UkSpec, registers: usize) -> bool {
    s.mr * s.nv + 2 * s.nv < registers || (s.dot && s.taps == [1, 1])
}

fn emit<'ctx>(cg: &Cg<'ctx>, s: &UkSpec, name: &str) -> Result<FunctionValue<'ctx>> {
    let (f, params) = cg.microkernel_function(name)?;
    let (a, b, cs, col, bias) = (params.a, params.b, params.c, params.col, params.bias);
    let mut c = Vec::with_capacity(s.mr);
    for i in 0..s.mr {
        let pixel = cg.load_ptr(cg.ptr_elem(cs, cg.c64(i))?)?;
        c.push(cg.gep(pixel, col)?);
    }
    let kc = params.kc;
    // Reduction steps: input channels, or their pairs.
    let steps = if s.dot {
        cg.b.build_right_shift(cg.addc(kc, 1)?, cg.c64(1), false, "")?
    } else {
        kc
    };
    let (accumulate, relu) = (params.accumulate, params.relu);
    let nr = s.nv * cg.lanes;
    let lanes = |v: usize| (s.valid - v * cg.lanes).min(cg.lanes);

    let mut acc = Vec::with_capacity(s.mr * s.nv);
    for _ in 0..s.mr * s.nv {
        acc.push(cg.vec_slot(cg.vf.const_zero())?);
    }
    cg.if_else(
        accumulate,
        || {
            for i in 0..s.mr {
                for v in 0..s.nv {
                    let pc = cg.gepc(c[i], v * cg.lanes)?;
                    cg.store_slot(acc[i * s.nv + v], cg.load_v(pc, lanes(v))?)?;
                }
            }
            Ok(())
        },
        || {
            for v in 0..s.nv {
                let bv = cg.load_v(cg.gepc(bias, v * cg.lanes)?, cg.lanes)?;
                for i in 0..s.mr {
                    cg.store_slot(acc[i * s.nv + v], bv)?;
                }
            }
            Ok(())
        },
    )?;

    let [kh_n, kw_n] = s.taps;
    cg.for_n(kh_n, |kh| {
        cg.for_n(kw_n, |kw| {
            let a_off = cg.add(cg.mulc(kh, s.a_row)?, cg.mulc(kw, s.a_col)?)?;
            let pa = cg.gep(a, a_off)?;
            let tap = cg.add(cg.mulc(kh, kw_n)?, kw)?;
            let pb = cg.gep2(b, tap, s.b_tap)?;
            let tap_steps = cg.b.build_int_mul(tap, steps, "")?;
            // One rank-1 update per input channel (or bf16 pair), unrolled by two where
            // that does not spill ([`unroll_by_two`]; LLVM's unroller is off, see
            // `pass_options`).
            let step = |ic| -> Result<()> {
                let pbi = cg.gep2(pb, ic, nr)?;
                let mut bv = Vec::with_capacity(s.nv);
                for v in 0..s.nv {
                    bv.push(cg.load_v(cg.gepc(pbi, v * cg.lanes)?, cg.lanes)?);
                }
                // B words of one step: `nr` of 4 bytes, cut into cache lines.
                for line in 0..(nr * 4).div_ceil(LINE_BYTES) {
                    cg.prefetch(pbi, PREFETCH_BYTES + line * LINE_BYTES)?;
                }
                // A later kernel's weights, a line a step: spread over the multiplies, their
                // transfer from L3 or DRAM overlaps them (`env::PrefetchLines`); likewise the
                // rows the task's thread packs next.
                if s.prefetch_next {
                    cg.prefetch_l2(params.next, cg.mulc(cg.add(tap_steps, ic)?, LINE_BYTES)?)?;
                }
                if s.prefetch_input {
                    cg.prefetch_l2(
                        params.next_input,
                        cg.mulc(cg.add(tap_steps, ic)?, LINE_BYTES)?,
                    )?;
                }
                let pai = cg.gep(pa, ic)?;
                for i in 0..s.mr {
                    // One pixel's input channel (or bf16 channel pair) in every lane.
                    let x = cg.splat(cg.load_f32(cg.gepc(pai, i * s.a_step)?)?)?;
                    for (v, bv) in bv.iter().enumerate() {
                        let slot = acc[i * s.nv + v];
                        let sum = if s.dot {
                            cg.dot_bf16(cg.load_slot(slot)?, x, *bv)?
                        } else {
                            cg.fma(x, *bv, cg.load_slot(slot)?)?
                        };
                        cg.store_slot(slot, sum)?;
                    }
                }
                Ok(())
            };
            if !unroll_by_two(s, cg.isa.registers) {
                return cg.for_range(cg.c64(0), steps, 1, step);
            }
            let even = cg.b.build_and(steps, cg.c64(!1), "")?;
            cg.for_range(cg.c64(0), even, 2, |ic| {
                step(ic)?;
                step(cg.addc(ic, 1)?)
            })?;
            cg.if_then(
                cg.b.build_int_compare(IntPredicate::NE, even, steps, "")?,
                || step(even),
            )
        })
    })?;

    cg.if_then(relu, || {
        for slot in &acc {
            cg.store_slot(*slot, cg.relu(cg.load_slot(*slot)?)?)?;
        }
        Ok(())
    })?;
    for i in 0..s.mr {
        for v in 0..s.nv {
            let pc = cg.gepc(c[i], v * cg.lanes)?;
            cg.store_v(cg.load_slot(acc[i * s.nv + v])?, pc, lanes(v))?;
        }
    }
    cg.b.build_return(None)?;
    Ok(f)
}
