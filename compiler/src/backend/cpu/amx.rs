//! The AMX tile micro-kernel: the bf16 micro-kernel of `microkernel.rs` (same signature, same
//! A and B layouts, same result) computed on the AMX tile unit with `tdpbf16ps` (AMX-BF16),
//! for [`VectorIsa::amx`](super::isa::VectorIsa::amx).
//!
//! A tile register holds 16 rows of 64 bytes. One `tdpbf16ps C, A, B` multiplies a 16 × 32
//! bf16 tile of A (16 pixels × 32 input channels, each row 16 words of channel pairs) by a
//! 16 × 32 tile of B (16 channel pairs × 16 output channels, one word per pair and channel:
//! exactly the pair-interleaved packing of the `vdpbf16ps` kernels) into a 16 × 16 f32 tile of
//! C: 8,192 multiplies, 16 per cycle and lane of a zmm FMA. A call covers `mt = ceil(mr / 16)`
//! pixel tiles × `nv` channel tiles (`mt·nv` C tiles, `mt` A tiles and `nv` B tiles of the
//! eight registers: 2 × 2, 2 × 1 or 1 × 3):
//!
//! ```text
//! C[t][v] = 0                                                      (tilezero)
//! for kh < KH, kw < KW, q < ceil(kc / 32):                         (32 channels a step)
//!   A[t] = a[(16t + row)·A_STEP + kh·A_ROW + kw·A_COL + 16q ..]    (tileloadd, stride A_STEP)
//!   B[v] = b[(kh·KW + kw)·B_TAP + (16q + row)·NR + 16v ..]          (tileloadd, stride NR)
//!   C[t][v] += A[t] · B[v]                                          (tdpbf16ps)
//! c[i][col + 16v ..] = relu?(C[i / 16][v][i % 16] + (accumulate ? c[i][..] : bias[16v ..]))
//! ```
//!
//! The C tiles go through a 4 KiB stack buffer (`tilestored`) to the vector epilogue, which
//! stores the `mr` pixels of the call through their pointers, the last vector masked to
//! `VALID`, like the vector kernel.
//!
//! **Groups and passes.** A call may cover more pixel tiles than the registers hold (`mr` up
//! to 64 with two channel tiles): it runs them in *groups* of what fits, *pass* by pass — a
//! pass is one tap row `kh`, and one [`PASS_WORDS`] chunk of K — each group's C tiles going to
//! the stack buffer after a pass and coming back for the next. A pass's weights (24 KiB for
//! DenseNet's 3x3 growth convs, whose nine taps take 72 KiB) then stay in L1 from one group
//! to the next instead of streaming from L2 once per call; in isolation the 3x3's tile loop
//! went from ~63% to ~78% of the `tdpbf16ps` peak (one core). The sums are the same, in the
//! same order, whatever the grouping.
//!
//! **One configuration, whole tiles.** `ldtilecfg` costs about 50 ns (measured on a Sapphire
//! Rapids-class Xeon), as much as 150 cycles of tile multiplies, so every tile is configured
//! once as 16 rows × 64 bytes ([`configure`], at the start of each kernel body that uses the
//! tiles) and never changed. What that asks of the callers (`conv/`):
//! - K is a whole number of 32-channel steps: the panel rows and each tap's packed weights are
//!   zero-padded to a multiple of 32 channels (16 words), so the last step adds zeros;
//! - A tile always loads 16 rows: a call of `mr` pixels that is not a multiple of 16 reads
//!   rows past its pixels, which must be readable (the panels have that slack) but may hold
//!   anything: row `i` of A only reaches row `i` of C, which the epilogue does not store.
//!
//! The tile registers are invisible to LLVM: each instruction is an inline-assembly statement
//! naming its tile registers, with a memory clobber so LLVM keeps them in order with the loads
//! and stores around them.

use super::codegen::{Cg, Result};
use inkwell::module::Linkage;
use inkwell::types::BasicMetadataTypeEnum;
use inkwell::values::{BasicMetadataValueEnum, FunctionValue, IntValue, PointerValue};
use inkwell::AddressSpace;

/// Rows of a tile register, and 32-bit words (f32, or bf16 pairs) in one of its rows.
pub(crate) const TILE: usize = 16;
/// Tile registers (`tmm0` … `tmm7`).
const TILE_REGISTERS: usize = 8;
/// Input channels one `tdpbf16ps` step reduces: a 64-byte row of bf16.
pub(crate) const K_STEP_CHANNELS: usize = 32;

/// The shape of one tile micro-kernel: the strides and sizes of `microkernel.rs`'s `UkSpec`
/// (which builds it), in 32-bit words.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TileShape {
    /// Pixels of a call: register groups of up to 32 (2 pixel tiles), or 16 with 3 channel
    /// tiles.
    pub mr: usize,
    /// Channel tiles (16 output channels each).
    pub nv: usize,
    /// Output channels stored (`<= 16·nv`).
    pub valid: usize,
    /// A words between consecutive pixels.
    pub a_step: usize,
    /// Kernel taps `[KH, KW]`.
    pub taps: [usize; 2],
    /// A words per `kh` and per `kw` step.
    pub a_row: usize,
    pub a_col: usize,
    /// B words per tap.
    pub b_tap: usize,
    /// Store bf16 pairs (word `c / 2` of a pixel holds channels `c`, `c + 1`; whole vectors
    /// only) from the bias: the call is the conv's only K chunk.
    pub store_pairs: bool,
}

/// Words of channel pairs (256 input channels) a pass of a multi-group call reduces ([`emit`]):
/// 16 KiB of weights per 32 output channels, which stay in L1 from one group to the next.
pub(crate) const PASS_WORDS: usize = 128;

/// Pixel tiles (of 16 rows) of a call with `nv` channel tiles: the most that leaves the eight
/// tile registers enough for `mt·nv` C, `mt` A and `nv` B tiles (2 for `nv` ≤ 2, 1 for 3).
pub(crate) fn pixel_tiles(nv: usize) -> usize {
    (1..=2)
        .rev()
        .find(|mt| mt * nv + mt + nv <= TILE_REGISTERS)
        .unwrap_or(1)
}

/// Whether a shape fits the tile registers.
pub(crate) fn fits(s: &TileShape) -> bool {
    let mg = s.mr.div_ceil(TILE).min(pixel_tiles(s.nv));
    s.mr > 0 && s.nv > 0 && mg * s.nv + mg + s.nv <= TILE_REGISTERS
}

/// `asm(text)` with pointer/integer operands, a side effect and a memory clobber.
fn asm<'ctx>(cg: &Cg<'ctx>, text: &str, args: &[BasicMetadataValueEnum<'ctx>]) -> Result<()> {
    let params: Vec<BasicMetadataTypeEnum> = args
        .iter()
        .map(|a| match a {
            BasicMetadataValueEnum::PointerValue(_) => cg.ptr.into(),
            _ => cg.i64.into(),
        })
        .collect();
    let ty = cg.ctx.void_type().fn_type(&params, false);
    let mut constraints: Vec<&str> = args.iter().map(|_| "r").collect();
    constraints.push("~{memory}");
    let f = cg.ctx.create_inline_asm(
        ty,
        text.to_string(),
        constraints.join(","),
        true,
        false,
        None,
        false,
    );
    cg.b.build_indirect_call(ty, f, args, "")?;
    Ok(())
}

/// The module's tile configuration (palette 1, every tile 16 rows × 64 bytes), defined on
/// first use.
fn config<'ctx>(cg: &Cg<'ctx>) -> PointerValue<'ctx> {
    const NAME: &str = "dnc_amx_tile_config";
    if let Some(g) = cg.module.get_global(NAME) {
        return g.as_pointer_value();
    }
    let mut bytes = [0u8; 64];
    bytes[0] = 1; // palette 1
    for t in 0..TILE_REGISTERS {
        bytes[16 + 2 * t..18 + 2 * t].copy_from_slice(&((TILE * 4) as u16).to_le_bytes());
        bytes[48 + t] = TILE as u8;
    }
    let i8 = cg.ctx.i8_type();
    let init = i8.const_array(
        &bytes
            .iter()
            .map(|b| i8.const_int(u64::from(*b), false))
            .collect::<Vec<_>>(),
    );
    let g = cg
        .module
        .add_global(i8.array_type(64), Some(AddressSpace::default()), NAME);
    g.set_initializer(&init);
    g.set_constant(true);
    g.set_linkage(Linkage::Private);
    g.set_alignment(64);
    g.as_pointer_value()
}

/// Load the tile configuration (`ldtilecfg`): once before the tile micro-kernels a kernel
/// body calls (module docs).
pub(crate) fn configure(cg: &Cg<'_>) -> Result<()> {
    asm(cg, "ldtilecfg ($0)", &[config(cg).into()])
}

/// Emit the tile micro-kernel `name` for `s` (the signature of `microkernel.rs`).
pub(crate) fn emit<'ctx>(cg: &Cg<'ctx>, s: &TileShape, name: &str) -> Result<FunctionValue<'ctx>> {
    if !fits(s) || cg.lanes != TILE {
        return Err(crate::backend::BackendError::Codegen(format!(
            "no AMX tile micro-kernel for {s:?} with {}-lane vectors",
            cg.lanes
        )));
    }
    let (f, params) = cg.microkernel_function(name)?;
    let (a, b, cs, col, bias) = (params.a, params.b, params.c, params.col, params.bias);
    let (kc, accumulate, relu) = (params.kc, params.accumulate, params.relu);
    let mt = s.mr.div_ceil(TILE);
    let nv = s.nv;
    let nr = nv * TILE;
    // Pixel tiles in registers at once; a call of more runs them in groups, pass by pass.
    let mg = mt.min(pixel_tiles(nv));
    let groups = mt.div_ceil(mg);
    // Registers of group tile `t` (< mg) and channel tile `v`, and of A and B.
    let c_reg = |t: usize, v: usize| t * nv + v;
    let a_reg = |t: usize| mg * nv + t;
    let b_reg = |v: usize| mg * nv + mg + v;
    // Where the call's pixel tile `t` (< mt), channel tile `v` lands in `sums`.
    let c_tile = |t: usize, v: usize| t * nv + v;
    let bytes = |words: usize| cg.c64(words * 4);
    // The C tiles, each 16 rows of 16 floats, through the stack to the vector epilogue (and,
    // with several groups, between passes).
    let len = u32::try_from(mt * nv * TILE * TILE).unwrap_or(u32::MAX);
    let sums = cg.entry_alloca(cg.f32.array_type(len).into(), "tiles")?;
    // Group `g`'s C tiles (its first `tiles` pixel tiles) into `sums` (`tilestored`), or back.
    let move_group = |g: usize, tiles: usize, store: bool| -> Result<()> {
        for t in 0..tiles {
            for v in 0..nv {
                let at = cg.gepc(sums, c_tile(g * mg + t, v) * TILE * TILE)?;
                let text = if store {
                    format!("tilestored %tmm{}, ($0,$1,1)", c_reg(t, v))
                } else {
                    format!("tileloadd ($0,$1,1), %tmm{}", c_reg(t, v))
                };
                asm(cg, &text, &[at.into(), bytes(TILE).into()])?;
            }
        }
        Ok(())
    };
    // Words of channel pairs: `ceil(kc / 2)`, reduced 16 at a time (the padding adds zeros).
    let words =
        cg.b.build_right_shift(cg.addc(kc, 1)?, cg.c64(1), false, "")?;
    let [kh_n, kw_n] = s.taps;
    // The tap row `kh`'s steps `q0 .. q1` (words) for group `g` of `tiles` pixel tiles.
    let steps =
        |g: usize, tiles: usize, kh: IntValue<'ctx>, q0: IntValue<'ctx>, q1: IntValue<'ctx>| {
            cg.for_n(kw_n, |kw| {
                let a_off = cg.add(cg.mulc(kh, s.a_row)?, cg.mulc(kw, s.a_col)?)?;
                let pa = cg.gep(a, a_off)?;
                let tap = cg.add(cg.mulc(kh, kw_n)?, kw)?;
                let pb = cg.gep2(b, tap, s.b_tap)?;
                cg.for_range(q0, q1, TILE, |q| {
                    let pa = cg.gep(pa, q)?;
                    let pb = cg.gep2(pb, q, nr)?;
                    for t in 0..tiles {
                        let at = cg.gepc(pa, (g * mg + t) * TILE * s.a_step)?;
                        let text = format!("tileloadd ($0,$1,1), %tmm{}", a_reg(t));
                        asm(cg, &text, &[at.into(), bytes(s.a_step).into()])?;
                    }
                    for v in 0..nv {
                        let bt = cg.gepc(pb, v * TILE)?;
                        let text = format!("tileloadd ($0,$1,1), %tmm{}", b_reg(v));
                        asm(cg, &text, &[bt.into(), bytes(nr).into()])?;
                    }
                    for t in 0..tiles {
                        for v in 0..nv {
                            let text = format!(
                                "tdpbf16ps %tmm{}, %tmm{}, %tmm{}",
                                b_reg(v),
                                a_reg(t),
                                c_reg(t, v)
                            );
                            asm(cg, &text, &[])?;
                        }
                    }
                    Ok(())
                })
            })
        };
    let zero = |tiles: usize| -> Result<()> {
        for t in 0..tiles {
            for v in 0..nv {
                asm(cg, &format!("tilezero %tmm{}", c_reg(t, v)), &[])?;
            }
        }
        Ok(())
    };
    let group_tiles = |g: usize| (mt - g * mg).min(mg);
    if groups == 1 {
        zero(mt)?;
        cg.for_n(kh_n, |kh| steps(0, mt, kh, cg.c64(0), words))?;
        move_group(0, mt, true)?;
    } else {
        // Passes (a tap row, a chunk of `PASS_WORDS`), each over every group: the pass's
        // weights stay in L1 from one group to the next instead of streaming from L2 for
        // each. A group's C tiles go to `sums` after each pass and come back for the next.
        cg.for_n(kh_n, |kh| {
            cg.for_range(cg.c64(0), words, PASS_WORDS, |q0| {
                let q1 = cg.umin(cg.addc(q0, PASS_WORDS)?, words)?;
                let first = cg.b.build_and(cg.eqc(kh, 0)?, cg.eqc(q0, 0)?, "")?;
                for g in 0..groups {
                    let tiles = group_tiles(g);
                    cg.if_else(first, || zero(tiles), || move_group(g, tiles, false))?;
                    steps(g, tiles, kh, q0, q1)?;
                    move_group(g, tiles, true)?;
                }
                Ok(())
            })
        })?;
    }
    let lanes = |v: usize| (s.valid - v * TILE).min(TILE);
    if s.store_pairs {
        if !s.valid.is_multiple_of(TILE) {
            return Err(crate::backend::BackendError::Codegen(format!(
                "bf16 pairs stored from a partial channel tile: {s:?}"
            )));
        }
        // Channel `col` is word `col / 2` of the pixel (`col` is a whole number of tiles).
        let words = cg.b.build_right_shift(col, cg.c64(1), false, "")?;
        for i in 0..s.mr {
            let pixel = cg.load_ptr(cg.ptr_elem(cs, cg.c64(i))?)?;
            let c = cg.gep(pixel, words)?;
            // The block's whole channel tiles (the last block of a conv may have fewer).
            for v in 0..s.valid / TILE {
                let (t, row) = (i / TILE, i % TILE);
                let sum = cg.load_v(cg.gepc(sums, (c_tile(t, v) * TILE + row) * TILE)?, TILE)?;
                let y = cg.fadd(sum, cg.load_v(cg.gepc(bias, v * TILE)?, TILE)?)?;
                let y = cg.b.build_select(relu, cg.relu(y)?, y, "")?;
                cg.store_bf16(y.into_vector_value(), cg.gepc(c, v * TILE / 2)?)?;
            }
        }
        cg.b.build_return(None)?;
        return Ok(f);
    }
    for i in 0..s.mr {
        let pixel = cg.load_ptr(cg.ptr_elem(cs, cg.c64(i))?)?;
        let c = cg.gep(pixel, col)?;
        for v in 0..nv {
            let (t, row) = (i / TILE, i % TILE);
            let sum = cg.load_v(cg.gepc(sums, (c_tile(t, v) * TILE + row) * TILE)?, TILE)?;
            let pc = cg.gepc(c, v * TILE)?;
            let from =
                cg.b.build_select(accumulate, pc, cg.gepc(bias, v * TILE)?, "")?;
            let y = cg.fadd(sum, cg.load_v(from.into_pointer_value(), lanes(v))?)?;
            let y = cg.b.build_select(relu, cg.relu(y)?, y, "")?;
            cg.store_v(y.into_vector_value(), pc, lanes(v))?;
        }
    }
    cg.b.build_return(None)?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_fit_the_eight_registers() {
        assert_eq!(pixel_tiles(1), 2);
        assert_eq!(pixel_tiles(2), 2);
        assert_eq!(pixel_tiles(3), 1);
        for nv in 1..=3 {
            let mt = pixel_tiles(nv);
            assert!(mt * nv + mt + nv <= TILE_REGISTERS, "nv {nv}");
        }
    }
}
