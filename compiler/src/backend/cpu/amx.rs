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
use inkwell::values::{BasicMetadataValueEnum, FunctionValue, PointerValue};
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
    /// Pixels of a call (at most 32).
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
    let mt = s.mr.div_ceil(TILE);
    s.mr > 0 && s.nv > 0 && mt * s.nv + mt + s.nv <= TILE_REGISTERS
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
    let c_tile = |t: usize, v: usize| t * nv + v;
    let a_tile = |t: usize| mt * nv + t;
    let b_tile = |v: usize| mt * nv + mt + v;
    let bytes = |words: usize| cg.c64(words * 4);

    for t in 0..mt {
        for v in 0..nv {
            asm(cg, &format!("tilezero %tmm{}", c_tile(t, v)), &[])?;
        }
    }
    // Words of channel pairs: `ceil(kc / 2)`, reduced 16 at a time (the padding adds zeros).
    let words =
        cg.b.build_right_shift(cg.addc(kc, 1)?, cg.c64(1), false, "")?;
    let [kh_n, kw_n] = s.taps;
    cg.for_n(kh_n, |kh| {
        cg.for_n(kw_n, |kw| {
            let a_off = cg.add(cg.mulc(kh, s.a_row)?, cg.mulc(kw, s.a_col)?)?;
            let pa = cg.gep(a, a_off)?;
            let tap = cg.add(cg.mulc(kh, kw_n)?, kw)?;
            let pb = cg.gep2(b, tap, s.b_tap)?;
            cg.for_range(cg.c64(0), words, TILE, |q| {
                let pa = cg.gep(pa, q)?;
                let pb = cg.gep2(pb, q, nr)?;
                for t in 0..mt {
                    let at = cg.gepc(pa, t * TILE * s.a_step)?;
                    let text = format!("tileloadd ($0,$1,1), %tmm{}", a_tile(t));
                    asm(cg, &text, &[at.into(), bytes(s.a_step).into()])?;
                }
                for v in 0..nv {
                    let bt = cg.gepc(pb, v * TILE)?;
                    let text = format!("tileloadd ($0,$1,1), %tmm{}", b_tile(v));
                    asm(cg, &text, &[bt.into(), bytes(nr).into()])?;
                }
                for t in 0..mt {
                    for v in 0..nv {
                        let text = format!(
                            "tdpbf16ps %tmm{}, %tmm{}, %tmm{}",
                            b_tile(v),
                            a_tile(t),
                            c_tile(t, v)
                        );
                        asm(cg, &text, &[])?;
                    }
                }
                Ok(())
            })
        })
    })?;

    // The C tiles, each 16 rows of 16 floats, through the stack to the vector epilogue.
    let len = u32::try_from(mt * nv * TILE * TILE).unwrap_or(u32::MAX);
    let sums = cg.entry_alloca(cg.f32.array_type(len).into(), "tiles")?;
    for t in 0..mt {
        for v in 0..nv {
            let at = cg.gepc(sums, c_tile(t, v) * TILE * TILE)?;
            let text = format!("tilestored %tmm{}, ($0,$1,1)", c_tile(t, v));
            asm(cg, &text, &[at.into(), bytes(TILE).into()])?;
        }
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
