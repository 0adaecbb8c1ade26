//! Convolution (and linear, as a 1x1 convolution over `N` pixels) lowered
//! to register-blocked micro-kernels (`microkernel.rs`).
//!
//! Two task shapes:
//! - **GEMM** (1x1, stride 1, no padding): the pixels of the view, flattened
//!   across rows and images, are the GEMM's M dimension. A task is a block of
//!   `mc` pixels × a group of output-channel blocks. With a prologue, each
//!   input-channel chunk of the pixel block is first packed into a panel with
//!   the affine+ReLU applied (vectorised along channels); without one (and
//!   without an input border), the micro-kernel reads the strided input view
//!   directly. Output pixels are addressed one by one, so a block may cross
//!   rows of a bordered output.
//! - **Direct** (any kernel, stride, padding): a task is `owb` output pixels
//!   of one output row × a group of output-channel blocks. The input rows the
//!   task needs are packed into a panel `[KH][span][kc]` with the prologue
//!   applied to real pixels and zeros written for the padding, so the
//!   micro-kernel runs without bounds checks and pad taps contribute 0.
//!
//! With bf16 dot products ([`VectorIsa::bf16`]) every conv packs its input into a panel (the
//! prologue and the rounding to bf16 happen there), the panel and the weights hold 32-bit
//! words of two bf16 input channels, and every A and B stride counts those words.
//!
//! Input channels are processed in chunks of at most `KC_MAX`: the first
//! chunk starts from the bias, later ones accumulate onto the output, and the
//! ReLU epilogue runs with the last.

mod emit;
mod winograd;

pub(crate) use winograd::WinogradPlan;

use super::amx;
use super::codegen::VectorIsa;
use super::env::{prefetches_next, AffineRef, TARGET_TASKS};
use super::pack::{
    pack_bias, pack_conv_weight, pack_conv_weight_bf16, pack_conv_weight_bf16_folded, OcBlocking,
    WeightsBuilder,
};
use crate::backend::kernel::{ConvKernel, LinearKernel, View};

/// Input channels per chunk (the K blocking of the GEMM).
const KC_MAX: usize = 256;
/// Largest direct-conv panel in floats (it lives on the task's stack).
const PANEL_MAX: usize = 24 * 1024;
/// Least work worth a task of its own, in MACs (about a microsecond on one core). A kernel
/// smaller than `TARGET_TASKS` of these — DenseNet-BC's 8x8 layers at batch 1 are 0.3–1 M
/// MACs — is split into fewer, larger tasks: each task repacks its input rows and pays a
/// claim and a call, which at that size cost as much as the work they would balance.
const MIN_TASK_MACS: usize = 40_000;

/// Tasks to aim for: `TARGET_TASKS`, fewer for a kernel of less than that many
/// `MIN_TASK_MACS`, never below 2 (both threads of the smallest pool get work).
fn target_tasks(macs: usize) -> usize {
    (macs / MIN_TASK_MACS).clamp(2, TARGET_TASKS)
}

/// Task shape of a convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Gemm {
        m: usize,
        mc: usize,
        mblocks: usize,
        pack: bool,
    },
    Direct {
        owb: usize,
        n_owb: usize,
        span: usize,
    },
    /// Stride-1 convolutions on the AMX tiles: a task is `rows` whole output rows of one
    /// image (the last block shorter). Its panel holds the `rows + KH - 1` input rows each
    /// once, `span = OW + KW - 1` pixels wide (padding included), and the tile rows run over
    /// the panel's positions `r·span + x` as one pixel sequence: from position `p`, tap
    /// `(kh, kw)` is position `p + kh·span + kw`, a constant stride whatever the row. The
    /// `KW - 1` positions past each row's last output pixel are computed and stored into a
    /// junk vector (their table entries point there), so every tile is full and no input row
    /// is packed twice. (A [`Mode::Direct`] task packs `KH` input rows per output row, and a
    /// 7-pixel row fills 7 of a tile's 16 rows.)
    Rows {
        rows: usize,
        n_rb: usize,
        span: usize,
    },
}

/// Tiling and packing decisions for one convolution.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ConvPlan {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub ic: usize,
    pub oh: usize,
    pub ow: usize,
    pub k: [usize; 2],
    pub s: [usize; 2],
    pub p: [usize; 2],
    input: View,
    output: View,
    prologue: Option<AffineRef>,
    relu: bool,
    pub blocking: OcBlocking,
    pub mr: usize,
    weight_off: usize,
    bias_off: usize,
    pub kc: usize,
    kcp: usize,
    pub mode: Mode,
    pub groups: usize,
    pub bpg: usize,
    /// A GEMM's tasks are numbered group-major ([`weights_stay_per_group`]): the contiguous
    /// task range a thread runs is a few output-channel groups, each over every pixel block,
    /// not a few pixel blocks, each over every group.
    pub groups_outer: bool,
    /// Input channels per A/B word: 2 for bf16 pairs ([`VectorIsa::bf16`]), else 1.
    k_step: usize,
    /// The micro-kernels run on the AMX tiles (`amx.rs`): [`VectorIsa::amx`] and at least
    /// one 32-channel step of input channels (the stem's 3 would be padded to 32). K is then
    /// padded to whole steps: `kcp` and each tap's packed weights.
    pub tiles: bool,
    /// With `tiles`, a direct conv of few input channels (the stem: 3) whose kernel row fits
    /// one tile step, `KW·ceil(I/2) <= 16` words: the `kw` taps are folded into K. A panel
    /// pixel is then just its `ceil(I/2)` words, so the 16 words from an output pixel's first
    /// tap are its whole kernel row (`[kw][pair]`, and what follows, times zero weights), read
    /// by one tile load with rows `stride·ceil(I/2)` words apart: one `tdpbf16ps` step per
    /// `kh` instead of one per tap of 3 channels padded to 32 (7 times fewer for the 7x7 stem).
    /// The weights are `[KH][16][NR]` per block ([`pack_conv_weight_bf16_folded`]).
    pub fold: bool,
    /// The input holds bf16 pairs, `ceil(I/2)` words at each pixel's start (a handoff,
    /// [`ConvPlan::handoffs`]): the panel copies words instead of rounding floats.
    pub in_pairs: bool,
    /// The output is stored as bf16 pairs for the next conv: one K chunk (no f32 partial
    /// sums), the epilogue rounds (`amx.rs`).
    pub out_pairs: bool,
    /// A [`Mode::Rows`] task reads its A tiles from the input buffer in place, no panel
    /// ([`ConvPlan::reads_rows_in_place`] says when).
    pub rows_in_place: bool,
    /// An f32 direct conv of fewer input channels than a vector (the stems: 3): the panel
    /// stores each pixel's `I` channels densely, not a vector apart, so a stride-`s` output
    /// pixel's kernel row is the `KW·I` consecutive floats from `s·I` on; with the weights'
    /// `[KH][KW][I][NR]` layout that is one reduction of `KW·I` steps per kernel row (21 for
    /// the 7x7 stem) instead of `KW` taps of `I` steps, and a panel pixel of 3 floats
    /// instead of a padded 16 ([`row_in_k`]).
    pub row_k: bool,
    /// A packing GEMM task's micro-kernel calls bring the input rows of the next pixel block
    /// into the L2, a line per reduction step: the rows that task, on the same thread, packs
    /// first ([`prefetches_input`]).
    pub prefetch_input: bool,
}

/// Weights of one output-channel group of a GEMM whose tasks take the groups outermost
/// ([`weights_stay_per_group`]): what stays in a core's L2 from one pixel block to the next,
/// with the input rows beside it (the L2 of the x86 servers we target: 512 KiB on Zen 3,
/// 1 MiB on Zen 4/5, 2 MiB on Sapphire Rapids).
const GROUP_WEIGHTS_BYTES: usize = 1 << 20;

/// Whether a GEMM's weights are read once per group rather than once per pixel block: where
/// they outgrow [`GROUP_WEIGHTS_BYTES`] and are at least twice its input. Pixel-block tasks
/// (each over every output channel) share the input between the threads but make each read
/// all the weights, for every pixel block it runs; past the L2 that is from L3, once per
/// block. Group-major tasks give each thread its own groups' weights, kept in its L2 across
/// the pixel blocks, and have it read the whole input, which is the smaller operand here, once
/// per group. On a Xeon (AVX-512, 2 MiB L2), batch 1, 7 interleaved rounds of `bench
/// --profile`, kernels summed: DenseNet-161's 7x7 transition (2112 -> 1056 channels, 8.9 MB of
/// weights, 49 pixels) 1.30 -> 0.98 ms, its 7x7 bottlenecks (up to 1.7 MB) 3.71 -> 3.50 ms,
/// whole run 37.9 -> 36.9 ms (`x86-64-v3`: transition 2.35 -> 1.42 ms, run 59.8 -> 57.4 ms);
/// the 7x7 transitions of DenseNet-201, -169 and -121 0.84 -> 0.70, 0.38 -> 0.34 and 0.23 ->
/// 0.22 ms. DenseNet-161's 14x14 bottlenecks, whose input is as large as their weights,
/// measured 5% slower group-major (hence the input bound).
fn weights_stay_per_group(weight_bytes: usize, input_bytes: usize, blocks: usize) -> bool {
    blocks >= 2 && weight_bytes > GROUP_WEIGHTS_BYTES && weight_bytes >= 2 * input_bytes
}

/// Whether a GEMM conv's tasks prefetch the next task's input rows ([`ConvPlan::prefetch_input`]):
/// where the micro-kernels prefetch the next kernel's weights (f32 on AVX-512,
/// [`prefetches_next`]), in a GEMM that packs a flat f32 input and whose tasks are pixel
/// blocks alone (with output-channel groups the next task may be the same block). A task
/// packs its rows with the prologue applied before its first multiply; without the prefetch
/// they come from L3 then. DenseNet-121 b1 on a Xeon (AVX-512), tasks of one tile row, 15
/// interleaved rounds, bottleneck 1x1s without -> with: 56x56 2.03 -> 1.91 ms, 28x28 2.08 ->
/// 2.01, whole run 12.04 -> 12.00 ms; with eight-row tasks, 56x56 2.07 -> 1.98. A buffer that
/// stays in the L2 (BC-100, DenseNet-121's 14x14 block) measured the same either way.
fn prefetches_input(mode: Mode, i: &View, groups: usize, isa: VectorIsa) -> bool {
    matches!(mode, Mode::Gemm { pack: true, .. })
        && i.is_flat()
        && !i.bf16
        && groups == 1
        && prefetches_next(isa)
}

/// Whether a conv's kernel rows go into K ([`ConvPlan::row_k`]): f32 vector kernels, a kernel
/// wider than one pixel and fewer input channels than a vector.
fn row_in_k(c: &ConvKernel, ic: usize, isa: VectorIsa, tiles: bool) -> bool {
    !tiles && !isa.bf16 && !is_gemm(c) && c.kernel[1] > 1 && ic < isa.lanes
}

/// Register groups of pixel tiles per tile micro-kernel call with several passes.
const CALL_GROUPS: usize = 2;

/// Largest K of a conv that stores bf16 pairs ([`ConvPlan::out_pairs`]): one chunk, so its
/// tiles never accumulate onto what they stored. DenseNet-121's and -BC's bottlenecks all fit.
const KC_MAX_PAIRS: usize = 1024;
/// Panel bytes of such a GEMM task (its rows are K wide): `mc` shrinks to fit.
const PAIRS_PANEL_BYTES: usize = 128 * 1024;

/// Vectors per output-channel block: whole output when it fits three
/// vectors, else blocks of two vectors (or three where that divides better).
fn choose_nv(oc: usize, isa: VectorIsa) -> usize {
    let vecs = oc.div_ceil(isa.lanes);
    if vecs <= 3 {
        vecs
    } else if vecs.is_multiple_of(3) && !vecs.is_multiple_of(2) {
        3
    } else {
        2
    }
}

/// Tile height so that `mr · nv` accumulators + `nv` weights + 1 broadcast
/// fit the vector registers: AVX2's 16 (12x1, 6x2, 4x3), AVX-512's 32
/// (24x1, 14x2, 9x3, 6x4; a broadcast is then an FMA's memory operand, but
/// the count leaves it a register).
fn choose_mr(nv: usize, isa: VectorIsa) -> usize {
    if isa.registers <= 16 {
        return match nv {
            1 => 12,
            2 => 6,
            3 => 4,
            _ => 3,
        };
    }
    ((isa.registers - nv - 1) / nv).clamp(1, 24)
}

/// [`choose_mr`] for a bf16 micro-kernel over several taps (the 7x7 stem, direct 3x3s), which
/// leaves LLVM four more registers: with its tap loops around the pair-unrolled reduction and
/// the weight prefetches, a 14x32 tile kept a dozen vectors on the stack in every loop, 13x32
/// six, 12x32 one (with the prefetches), 11x32 none. DenseNet-121's bf16 stem on a Zen 4:
/// 1.37-1.62 ms as 14x32, 0.80-0.96 ms as 12x32, 0.80-0.89 ms as 10x32 (`bench --profile`,
/// three interleaved rounds). `compiler/tests/cpu/spills.rs` checks every tile
/// DenseNet-121 and BC-100 use.
fn choose_mr_bf16_taps(nv: usize, isa: VectorIsa) -> usize {
    choose_mr(nv, isa).min((isa.registers.saturating_sub(2 * nv + 5) / nv).max(1))
}

/// Cycles of one reduction step of a micro-kernel tile of `rows` pixels × `nv` vectors: its
/// `rows·nv` FMAs issue two per cycle, but each accumulator's FMA waits for the previous one
/// (4 cycles of latency), so a tile of fewer than 8 accumulators still takes 4 cycles.
fn tile_step_cycles(rows: usize, nv: usize) -> usize {
    (rows * nv).div_ceil(2).max(4)
}

/// Cycles a micro-kernel call spends outside its reduction loop (accumulators loaded and
/// stored, pixel pointers read), roughly.
const TILE_CALL_CYCLES: usize = 30;

/// The tile height (at most `mr`) that covers `count` pixels — full tiles plus one remainder
/// tile — in the fewest cycles, for `steps` reduction steps per call (taps × input channels):
/// 8 pixels as 4 + 4 rather than 6 + 2, 7 as 4 + 3 rather than 6 + 1. Ties keep the taller
/// tile.
fn row_tile(count: usize, mr: usize, nv: usize, steps: usize) -> usize {
    let call = |rows: usize| steps * tile_step_cycles(rows, nv) + TILE_CALL_CYCLES;
    let cost = |t: usize| {
        let rem = count % t;
        (count / t) * call(t) + if rem > 0 { call(rem) } else { 0 }
    };
    (1..=mr).rev().min_by_key(|&t| cost(t)).unwrap_or(mr)
}

fn round_up(x: usize, m: usize) -> usize {
    x.div_ceil(m) * m
}

/// A 1x1, stride-1, unpadded conv: a GEMM over pixels.
fn is_gemm(c: &ConvKernel) -> bool {
    c.kernel == [1, 1] && c.stride == [1, 1] && c.padding == [0, 0]
}

/// Whether a conv of `ic` input channels runs on the AMX tiles ([`ConvPlan::tiles`]), and
/// whether with its kernel row folded into K ([`ConvPlan::fold`]).
fn tile_use(c: &ConvKernel, ic: usize, isa: VectorIsa) -> (bool, bool) {
    let fold = isa.amx
        && !is_gemm(c)
        && ic < amx::K_STEP_CHANNELS
        && c.kernel[1] * ic.div_ceil(2) <= amx::TILE;
    (isa.amx && (ic >= amx::K_STEP_CHANNELS || fold), fold)
}

/// Whether the conv, storing bf16 ([`ConvPlan::out_pairs`]), is planned as one K chunk: a GEMM
/// up to [`KC_MAX_PAIRS`] channels; a direct conv whose panel for a whole output row at full
/// K fits [`PANEL_MAX`] (`ConvPlan::new` then never halves the chunk).
fn one_chunk_with_pairs(c: &ConvKernel, i: &View, o: &View, fold: bool) -> bool {
    let ic = i.channels;
    if ic > KC_MAX_PAIRS {
        return false;
    }
    if is_gemm(c) {
        return true;
    }
    let quantum = if fold { 2 } else { amx::K_STEP_CHANNELS };
    let span = (o.w - 1) * c.stride[1] + c.kernel[1];
    c.kernel[0] * span * round_up(ic, quantum) <= PANEL_MAX
}

impl ConvPlan {
    /// Whether the conv can read a bf16 view ([`View::bf16`], `storage.rs`): on the tiles, not
    /// folded (its panel packing converts the input, which it would round to bf16 anyway).
    pub fn loads_bf16(c: &ConvKernel, i: &View, isa: VectorIsa) -> bool {
        let (tiles, fold) = tile_use(c, i.channels, isa);
        tiles && !fold
    }

    /// Whether the conv can write a bf16 view: on the tiles, in one K chunk, whole 16-channel
    /// tiles of output channels (the tile epilogue rounds whole vectors, as for a handoff's
    /// pairs).
    pub fn stores_bf16(c: &ConvKernel, i: &View, o: &View, isa: VectorIsa) -> bool {
        let (tiles, fold) = tile_use(c, i.channels, isa);
        tiles && one_chunk_with_pairs(c, i, o, fold) && c.out_channels.is_multiple_of(amx::TILE)
    }

    pub fn new(
        c: &ConvKernel,
        i: &View,
        o: &View,
        isa: VectorIsa,
        [in_pairs, out_pairs]: [bool; 2],
        wb: &mut WeightsBuilder,
    ) -> ConvPlan {
        let ic = i.channels;
        let lanes = isa.lanes;
        let nv = choose_nv(c.out_channels, isa);
        let blocking = OcBlocking::new(c.out_channels, nv, lanes);
        let gemm = is_gemm(c);
        let (tiles, fold) = tile_use(c, ic, isa);
        let row_k = row_in_k(c, ic, isa, tiles);
        // Channels a panel row and a chunk are a whole number of: vectors, tile steps,
        // (folded) pairs, or (`row_k`) single channels.
        let k_quantum = match (tiles, fold) {
            (_, true) => 2,
            (true, false) => amx::K_STEP_CHANNELS,
            (false, _) if row_k => 1,
            (false, _) => lanes,
        };
        let mut mr = if tiles {
            amx::pixel_tiles(nv) * amx::TILE
        } else if isa.bf16 && c.kernel != [1, 1] {
            choose_mr_bf16_taps(nv, isa)
        } else {
            choose_mr(nv, isa)
        };
        let packed = if fold {
            pack_conv_weight_bf16_folded(&c.weight, ic, c.kernel, &blocking, amx::TILE)
        } else if isa.bf16 {
            let pair_align = if tiles { amx::TILE } else { 1 };
            pack_conv_weight_bf16(&c.weight, ic, c.kernel, &blocking, pair_align)
        } else {
            pack_conv_weight(&c.weight, ic, c.kernel, &blocking)
        };
        let weight_off = wb.push(&packed);
        let bias_off = wb.push(&pack_bias(c.bias.as_deref().map(Vec::as_slice), &blocking));
        let prologue = c.prologue.as_ref().map(|a| AffineRef::pack(a, isa, wb));
        let target = target_tasks(o.pixels() * c.out_channels * ic * c.kernel[0] * c.kernel[1]);
        let mut kc = ic.min(if out_pairs { KC_MAX_PAIRS } else { KC_MAX });
        let (mode, row_tasks) = if gemm {
            let m = o.pixels();
            if !tiles && lanes >= 16 {
                // Tiles of equal height, as few as `mr` allows: 49 pixels as 13+13+13+10, not
                // 14+14+14+7 (DenseNet-121's 7x7 map at batch 1), 64 as eight 8s, not seven
                // 9s and a 1 (BC-100's 8x8). The remainder tile runs at the rate of a full one
                // with the same number of rows per FMA; the shorter, the worse.
                mr = m.div_ceil(m.div_ceil(mr));
            }
            let mut mc = if !tiles && !isa.bf16 && lanes >= 16 {
                // An f32 task of one tile row packs a panel that stays in the L1 (14 pixels ×
                // 256 channels, 14 KiB) for its output-channel blocks to read, instead of
                // eight rows (112 KiB) read back from the L2 by each block. DenseNet-121 b1
                // on a Xeon (AVX-512), 15 interleaved rounds: 56x56 bottlenecks 1.98 ->
                // 1.91 ms, 28x28 2.07 -> 2.01, whole run 12.30 -> 12.00 ms; BC-100 b1 1.83
                // -> 1.78 ms, b64 119.6 -> 116.2 ms. The 8-lane tiles measured no better
                // (`x86-64-v3` on the same Xeon: 28x28 and 14x14 bottlenecks 3-5% slower).
                // Not below the least work worth a task.
                let least = MIN_TASK_MACS.div_ceil(ic * c.out_channels);
                round_up(least, mr).min(mr * 8)
            } else {
                mr * 8
            };
            if out_pairs {
                let rows = PAIRS_PANEL_BYTES / (round_up(kc, k_quantum) / 2 * 4);
                mc = mc.min((rows / mr).max(1) * mr);
            }
            if m.div_ceil(mc) < target {
                mc = round_up(m.div_ceil(target), mr).clamp(mr, mc);
            }
            let mblocks = m.div_ceil(mc);
            // The micro-kernel reads A at a constant pixel stride: a
            // prologue or a bordered input goes through a packed panel, and so does
            // every input of the bf16 kernels (rounded to bf16 there).
            let pack = prologue.is_some() || !i.is_flat() || isa.bf16;
            (
                Mode::Gemm {
                    m,
                    mc,
                    mblocks,
                    pack,
                },
                mblocks,
            )
        } else {
            let span = |owb: usize| (owb - 1) * c.stride[1] + c.kernel[1];
            let panel = |owb: usize, kc: usize| c.kernel[0] * span(owb) * round_up(kc, k_quantum);
            let mut owb = o.w;
            let rows = o.n * o.h;
            if rows < target {
                let want = target.div_ceil(rows);
                owb = round_up(o.w.div_ceil(want), mr).min(o.w);
            }
            while panel(owb, kc) > PANEL_MAX {
                if owb > 2 * mr {
                    owb = round_up(owb / 2, mr);
                } else if kc > k_quantum {
                    kc = round_up(kc / 2, k_quantum);
                } else {
                    break;
                }
            }
            let n_owb = o.w.div_ceil(owb);
            // The tile height for this row segment (a short last segment keeps it too); the
            // tile unit computes whole 16-row tiles whatever the height.
            if !tiles {
                mr = row_tile(owb, mr, nv, c.kernel[0] * c.kernel[1] * kc);
            }
            (
                Mode::Direct {
                    owb,
                    n_owb,
                    span: span(owb),
                },
                rows * n_owb,
            )
        };
        let (mode, row_tasks) = match mode {
            Mode::Direct { .. } if tiles && !fold && c.stride == [1, 1] => {
                let span = o.w + c.kernel[1] - 1;
                let row_words = span * round_up(kc, k_quantum) / 2;
                let rows_max = (PANEL_MAX / row_words).saturating_sub(c.kernel[0] - 1);
                // A tile task does about ten times the MACs of a vector one in the same time:
                // fewer, larger tasks (DenseNet-121's 7x7 growth convs at batch 1: two rows
                // a task, one full 16-row tile, not seven 7-row ones).
                let target =
                    target_tasks(o.pixels() * c.out_channels * ic * c.kernel[0] * c.kernel[1] / 10);
                let mut rows = 1;
                while rows < rows_max.min(o.h) && o.n * o.h.div_ceil(rows + 1) >= target {
                    rows += 1;
                }
                if rows_max >= 1 {
                    let n_rb = o.h.div_ceil(rows);
                    (Mode::Rows { rows, n_rb, span }, o.n * n_rb)
                } else {
                    (mode, row_tasks)
                }
            }
            _ => (mode, row_tasks),
        };
        // On the tiles, a call covers two register groups of pixel tiles where there is more
        // than one pass (a tap row, 256 input channels): each pass's weights then serve both
        // groups from L1 instead of streaming from L2 for each call (`amx.rs`). Tasks keep the
        // granularity of one group; a short one makes a one-group call. DenseNet-121's 3x3s
        // stream 72 KiB of weights per call, its late bottlenecks up to 64 KiB.
        if tiles && !fold && (c.kernel[0] > 1 || kc > 2 * amx::PASS_WORDS) {
            mr *= CALL_GROUPS;
        }
        let blocks = blocking.blocks();
        let mut groups = 1;
        // Output-channel groups split a pixel block's work between tasks that each pack its
        // panel, so each group repacks it. How many pixel tasks make groups not worth that:
        // - on the tiles, where packing costs about what the multiplies do, two (DenseNet-121
        //   bf16 on a Xeon with AMX, 2 threads: b1 5.57 -> 4.74-5.09 ms, b8 45.1 -> 40.3 ms);
        // - a GEMM in 16-lane vectors, half of `TARGET_TASKS`: its multiplies take half the
        //   time of 8-lane ones and its packing, a pass over the input from L2, does not, so
        //   a repack costs more than spreading that many tasks over the threads does.
        //   DenseNet-121's 28x28 bottleneck (512 -> 128 channels, 14 pixel tasks) on one
        //   core of a Xeon (AVX-512): 155-159 GFLOP/s in two groups, 168-173 in one
        //   (`kernels_bench`); a C model of the task, 166 against 181. The 8-lane code
        //   measured the same either way and keeps `TARGET_TASKS`.
        // With groups, a 16-lane GEMM aims for that many tasks too, not `target`: DenseNet-121's
        // 7x7 bottlenecks at batch 1 (4 pixel tasks) run in 2 groups, not 4.
        let (enough_row_tasks, tasks_with_groups) = if tiles {
            (2, target)
        } else if gemm && lanes >= 16 {
            (TARGET_TASKS / 2, TARGET_TASKS / 2)
        } else {
            (target, target)
        };
        if row_tasks < target.min(enough_row_tasks) {
            groups = target
                .min(tasks_with_groups)
                .div_ceil(row_tasks)
                .min(blocks);
        }
        // Weights are f32, or bf16 with bf16 dot products; the input is as its view stores it.
        let weight_bytes = ic * c.out_channels * c.kernel[0] * c.kernel[1] * 4 / isa.k_step();
        let input_bytes = o.pixels() * ic * i.elem_bytes();
        let groups_outer =
            gemm && !tiles && weights_stay_per_group(weight_bytes, input_bytes, blocks);
        if groups_outer {
            // Whole blocks of at most the budget per group (a block's weights are far less).
            let block_bytes = weight_bytes.div_ceil(blocks);
            let bpg_max = (GROUP_WEIGHTS_BYTES / block_bytes).max(1);
            groups = groups.max(blocks.div_ceil(bpg_max)).max(2).min(blocks);
        }
        let bpg = blocks.div_ceil(groups);
        let groups = blocks.div_ceil(bpg);
        let mut plan = ConvPlan {
            n: i.n,
            h: i.h,
            w: i.w,
            ic,
            oh: o.h,
            ow: o.w,
            k: c.kernel,
            s: c.stride,
            p: c.padding,
            input: *i,
            output: *o,
            prologue,
            relu: c.relu,
            blocking,
            mr,
            weight_off,
            bias_off,
            kc,
            kcp: round_up(kc, k_quantum),
            mode,
            groups,
            bpg,
            groups_outer,
            k_step: isa.k_step(),
            tiles,
            fold,
            in_pairs,
            out_pairs,
            rows_in_place: false,
            row_k,
            prefetch_input: prefetches_input(mode, i, groups, isa),
        };
        plan.rows_in_place = plan.reads_rows_in_place();
        plan
    }

    /// [`ConvPlan::rows_in_place`]: whether a [`Mode::Rows`] task reads its A tiles from the
    /// input buffer itself instead of a packed panel. The input is a bf16 handoff (`in_pairs`,
    /// a bf16 view: a pixel's words are its channel pairs) whose every pixel is exactly the K
    /// of one chunk, with a border equal to the padding, so the buffer's stored pixels, row
    /// after row, are the panel's positions `r·span + x` (`span` = the stored row). A last
    /// tile reads up to 15 positions past the task's, beyond the image's last stored pixel for
    /// the last image: the arena has [`ConvPlan::read_slack_bytes`] after the input for them
    /// (their rows of C are never stored).
    fn reads_rows_in_place(&self) -> bool {
        let i = &self.input;
        matches!(self.mode, Mode::Rows { .. })
            && self.in_pairs
            && i.bf16
            && i.border == self.p
            && i.channel_offset == 0
            && i.channels == i.pixel_stride
            && self.kc == self.ic
            && self.kcp == self.ic
    }

    /// Bytes past the end of its input view that the conv may read (`rows_in_place`).
    pub(crate) fn read_slack_bytes(&self) -> usize {
        if self.rows_in_place {
            (amx::TILE + self.k[1]) * self.input.pixel_stride * self.input.elem_bytes()
        } else {
            0
        }
    }

    /// Which convs of `kernels` hand their output to the next one as bf16 pairs
    /// (`[input, output]` per kernel): on the AMX tiles, a 1x1 conv (a bottleneck) whose
    /// output only the next kernel reads, a stride-1 conv on the tiles without a prologue (its
    /// 3x3): that conv would round the same floats to bf16 when packing them, so storing them
    /// rounded gives the same result with half the bytes written and read and no conversion
    /// in the packing. The pairs are whole 32-channel steps; the producer runs in one K
    /// chunk.
    pub fn handoffs(
        kernels: &[crate::backend::kernel::KernelDesc],
        isa: VectorIsa,
    ) -> Vec<[bool; 2]> {
        use crate::backend::kernel::KernelOp;
        let mut io = vec![[false; 2]; kernels.len()];
        if !isa.amx {
            return io;
        }
        for i in 1..kernels.len() {
            let (p, q) = (&kernels[i - 1], &kernels[i]);
            let (KernelOp::Conv(pc), KernelOp::Conv(qc)) = (&p.op, &q.op) else {
                continue;
            };
            let steps =
                |c: usize| c >= amx::K_STEP_CHANNELS && c.is_multiple_of(amx::K_STEP_CHANNELS);
            let producer = pc.kernel == [1, 1]
                && pc.stride == [1, 1]
                && pc.padding == [0, 0]
                && p.input.channels >= amx::K_STEP_CHANNELS
                && p.input.channels <= KC_MAX_PAIRS
                && steps(pc.out_channels);
            // Packed by the direct/row tasks (a 1x1 GEMM consumer would read it unpacked).
            let direct = qc.kernel != [1, 1] || qc.padding != [0, 0];
            let consumer =
                direct && qc.stride == [1, 1] && qc.prologue.is_none() && steps(q.input.channels);
            if p.output_to_next_only && q.input == p.output && producer && consumer {
                io[i - 1][1] = true;
                io[i][0] = true;
            }
        }
        io
    }

    /// A linear layer is a 1x1 convolution over `N` pixels.
    pub fn linear(
        l: &LinearKernel,
        i: &View,
        o: &View,
        isa: VectorIsa,
        wb: &mut WeightsBuilder,
    ) -> ConvPlan {
        let conv = ConvKernel {
            out_channels: l.out_features,
            kernel: [1, 1],
            stride: [1, 1],
            padding: [0, 0],
            weight: l.weight.clone(),
            bias: l.bias.clone(),
            prologue: None,
            relu: l.relu,
        };
        ConvPlan::new(&conv, i, o, isa, [false; 2], wb)
    }

    pub fn tasks(&self) -> usize {
        let rows = match self.mode {
            Mode::Gemm { mblocks, .. } => mblocks,
            Mode::Direct { n_owb, .. } => self.n * self.oh * n_owb,
            Mode::Rows { n_rb, .. } => self.n * n_rb,
        };
        rows * self.groups
    }

    /// Stack bytes of a task call: the panel and the pixel-pointer table.
    pub fn stack_bytes(&self) -> usize {
        self.scratch_floats() * 4 + self.max_block_pixels() * 8
    }

    /// Output pixels one task covers at most.
    fn max_block_pixels(&self) -> usize {
        match self.mode {
            Mode::Gemm { mc, .. } => mc,
            Mode::Direct { owb, .. } => owb,
            Mode::Rows { rows, span, .. } => rows * span,
        }
    }

    pub fn scratch_floats(&self) -> usize {
        match self.mode {
            // `mc` is a multiple of `mr`, so of whole tiles with `tiles`.
            Mode::Gemm { pack: true, mc, .. } => mc * self.kcp_words(),
            Mode::Gemm { pack: false, .. } => 0,
            Mode::Direct { span, .. } => {
                // A last tile's rows past the segment's pixels read up to 15 pixel steps
                // beyond the panel's last row (`amx.rs`); a folded row reads a tile step
                // from its last pixel (zeroed after each row).
                let slack = if self.tiles {
                    (amx::TILE - 1) * self.s[1] * self.kcp_words() + amx::TILE
                } else {
                    0
                };
                self.k[0] * span * self.kcp_words() + slack
            }
            // The panel, 16 positions of slack (a last tile's rows past the last output
            // pixel), then the junk vector of every output channel.
            Mode::Rows { rows, span, .. } => {
                self.rows_junk_offset(rows, span) + self.blocking.blocks() * self.blocking.nr()
            }
        }
    }

    /// Where [`Mode::Rows`]' junk vector starts in the scratch, in words.
    pub(crate) fn rows_junk_offset(&self, rows: usize, span: usize) -> usize {
        ((rows + self.k[0] - 1) * span + amx::TILE) * self.kcp_words()
    }

    /// Whether the micro-kernels multiply bf16 pairs.
    pub(crate) fn dot(&self) -> bool {
        self.k_step == 2
    }

    /// 32-bit words of one pixel's row of the panel: `kcp` f32 channels, or `kcp` bf16
    /// channels in pairs (`kcp` is a whole number of vectors, so even).
    pub(crate) fn kcp_words(&self) -> usize {
        self.kcp / self.k_step
    }

    /// Taps of the packed weights (`kh` only when `fold`) and their words per output
    /// channel.
    pub(crate) fn b_taps(&self) -> (usize, usize) {
        if self.fold {
            (self.k[0], amx::TILE)
        } else {
            (self.k[0] * self.k[1], self.ic_words())
        }
    }

    /// Words of packed weights per tap and output channel: input channels, or their pairs
    /// (padded to whole tile steps with `tiles`).
    pub(crate) fn ic_words(&self) -> usize {
        let words = self.ic.div_ceil(self.k_step);
        if self.tiles {
            round_up(words, amx::TILE)
        } else {
            words
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn plan(hw: usize, ic: usize, oc: usize, k: usize, stride: usize) -> ConvPlan {
        plan_for(hw, ic, oc, k, stride, VectorIsa::AVX2)
    }

    fn plan_for(
        hw: usize,
        ic: usize,
        oc: usize,
        k: usize,
        stride: usize,
        isa: VectorIsa,
    ) -> ConvPlan {
        plan_with(hw, ic, oc, [k, stride], None, isa)
    }

    /// A `k`x`k` conv of stride `stride` (`[k, stride]`), with `prologue` on its input.
    fn plan_with(
        hw: usize,
        ic: usize,
        oc: usize,
        [k, stride]: [usize; 2],
        prologue: Option<crate::backend::kernel::Affine>,
        isa: VectorIsa,
    ) -> ConvPlan {
        let conv = ConvKernel {
            out_channels: oc,
            kernel: [k, k],
            stride: [stride, stride],
            padding: [k / 2, k / 2],
            weight: Arc::new(vec![0.0; oc * ic * k * k]),
            bias: None,
            relu: prologue.is_some(),
            prologue,
        };
        let i = View::dense(0, 1, hw, hw, ic);
        let o_hw = (hw + 2 * (k / 2) - k) / stride + 1;
        let o = View::dense(i.end_bytes(), 1, o_hw, o_hw, oc);
        ConvPlan::new(
            &conv,
            &i,
            &o,
            isa,
            [false; 2],
            &mut WeightsBuilder::default(),
        )
    }

    #[test]
    fn register_blocks_fit_the_register_file() {
        for isa in [VectorIsa::AVX2, VectorIsa::AVX512] {
            for oc in 1..300 {
                let nv = choose_nv(oc, isa);
                let (accumulators, weights, broadcast) = (choose_mr(nv, isa) * nv, nv, 1);
                assert!(
                    accumulators + weights + broadcast <= isa.registers,
                    "{isa} oc {oc}"
                );
            }
        }
        let avx2 = VectorIsa::AVX2;
        assert_eq!(choose_nv(12, avx2), 2);
        assert_eq!(choose_nv(32, avx2), 2);
        assert_eq!(choose_nv(24, avx2), 3);
        assert_eq!(choose_nv(72, avx2), 3);
        let avx512 = VectorIsa::AVX512;
        assert_eq!((choose_nv(12, avx512), choose_mr(1, avx512)), (1, 24));
        assert_eq!((choose_nv(32, avx512), choose_mr(2, avx512)), (2, 14));
        assert_eq!((choose_nv(48, avx512), choose_mr(3, avx512)), (3, 9));
        let bf16 = avx512.with_bf16();
        assert_eq!(choose_mr_bf16_taps(2, bf16), 11);
        assert_eq!(choose_mr_bf16_taps(1, bf16), 24);
        assert_eq!(choose_nv(128, avx512), 2);
    }

    #[test]
    fn densenet121_shapes_split_into_enough_tasks() {
        // (spatial, in, out, kernel, stride): stem, bottlenecks, growth
        // convs and transitions at every resolution of DenseNet-121 at 224.
        let shapes = [
            (224, 3, 64, 7, 2),
            (56, 256, 128, 1, 1),
            (56, 128, 32, 3, 1),
            (28, 512, 128, 1, 1),
            (14, 1024, 128, 1, 1),
            (14, 128, 32, 3, 1),
            (7, 1024, 128, 1, 1),
            (7, 128, 32, 3, 1),
            (7, 1024, 512, 1, 1),
        ];
        for (hw, ic, oc, k, s) in shapes {
            let p = plan(hw, ic, oc, k, s);
            assert!(
                p.tasks() >= TARGET_TASKS,
                "{hw}x{hw} {ic}->{oc} k{k}: {p:?}"
            );
            assert!(p.stack_bytes() <= super::super::MAX_TASK_STACK, "{p:?}");
            let gemm = matches!(p.mode, Mode::Gemm { .. });
            assert_eq!(gemm, k == 1 && s == 1);
        }
    }

    #[test]
    fn wide_vector_gemms_split_pixels_before_output_channels() {
        let avx512 = VectorIsa::AVX512;
        // DenseNet-121's 14x14 bottleneck at batch 1: 14 one-tile pixel tasks, each over
        // every output block (its panel packed once), where 8 lanes also split the blocks.
        let p = plan_for(14, 1024, 128, 1, 1, avx512);
        assert_eq!((p.mr, p.groups, p.tasks()), (14, 1, 14), "{p:?}");
        assert!(plan(14, 1024, 128, 1, 1).groups > 1);
        // Its 7x7 one: 49 pixels as tiles of 13 (13+13+13+10), 4 pixel tasks in 2 groups.
        let p = plan_for(7, 1024, 128, 1, 1, avx512);
        assert_eq!((p.mr, p.groups, p.tasks()), (13, 2, 8), "{p:?}");
        // BC-100's 8x8 bottleneck (one block of 48 channels): eight tiles of 8 pixels, not
        // seven of 9 and one of 1.
        assert_eq!(plan_for(8, 216, 48, 1, 1, avx512).mr, 8);
        // Large maps keep full tiles.
        assert_eq!(plan_for(56, 256, 128, 1, 1, avx512).mr, 14);
        // 8 lanes: the tile height is `choose_mr`'s whatever the pixel count.
        assert_eq!(plan(7, 1024, 128, 1, 1).mr, 6);
    }

    #[test]
    fn gemms_whose_weights_outgrow_the_l2_take_output_channel_groups_outermost() {
        for isa in [
            VectorIsa::AVX2,
            VectorIsa::AVX512,
            VectorIsa::AVX512.with_bf16(),
        ] {
            // DenseNet-161's 7x7 transition (2112 -> 1056 channels: 8.9 MB of f32 weights
            // against 0.4 MB of input): groups of at most 1 MiB of weights, taken group-major,
            // each over every pixel block, and enough of them for the threads.
            let p = plan_for(7, 2112, 1056, 1, 1, isa);
            let group_bytes = p.bpg * p.blocking.nr() * 2112 * 4 / isa.k_step();
            assert!(p.groups_outer, "{isa}: {p:?}");
            assert!(group_bytes <= GROUP_WEIGHTS_BYTES, "{isa}: {p:?}");
            assert!(p.groups >= 2 && p.tasks() >= TARGET_TASKS, "{isa}: {p:?}");
            // Its last 7x7 bottleneck (2160 -> 192, 1.7 MB f32): two groups, one per thread.
            let p = bottleneck(7, 2160, 192, isa);
            assert_eq!((p.groups_outer, p.groups), (!isa.bf16, 2), "{isa}: {p:?}");
            // Its last 14x14 bottleneck: an input as large as the weights keeps pixel tasks
            // over every group.
            assert!(!bottleneck(14, 2064, 192, isa).groups_outer, "{isa}");
            // DenseNet-121's 7x7 bottlenecks: weights that stay in the L2 anyway.
            assert!(!bottleneck(7, 992, 128, isa).groups_outer, "{isa}");
        }
        // The AMX tiles keep their plans.
        let amx = VectorIsa::AVX512.with_amx();
        assert!(!plan_for(7, 2112, 1056, 1, 1, amx).groups_outer);
    }

    /// A bottleneck: a 1x1 conv of `ic` channels with its BatchNorm+ReLU prologue, which
    /// every task packs.
    fn bottleneck(hw: usize, ic: usize, oc: usize, isa: VectorIsa) -> ConvPlan {
        let prologue = crate::backend::kernel::Affine {
            scale: Arc::new(vec![1.5; ic]),
            shift: Arc::new(vec![-0.25; ic]),
            relu: true,
        };
        plan_with(hw, ic, oc, [1, 1], Some(prologue), isa)
    }

    #[test]
    fn wide_f32_gemm_tasks_are_one_tile_row_and_prefetch_the_next_rows() {
        let avx512 = VectorIsa::AVX512;
        // DenseNet-121's 56x56 bottleneck: 224 tasks of one 14-pixel tile, each prefetching
        // the rows of the next.
        let p = bottleneck(56, 256, 128, avx512);
        assert!(
            matches!(
                p.mode,
                Mode::Gemm {
                    mc: 14,
                    pack: true,
                    ..
                }
            ),
            "{p:?}"
        );
        assert_eq!((p.tasks(), p.prefetch_input), (224, true), "{p:?}");
        assert_eq!(p.scratch_floats(), 14 * 256);
        // Its 7x7 one runs in two output-channel groups: the next task may be the same block.
        let p = bottleneck(7, 1024, 128, avx512);
        assert_eq!((p.groups, p.prefetch_input), (2, false), "{p:?}");
        // 8 lanes, bf16 pairs and the AMX tiles keep eight-row tasks, with no row prefetch.
        let p = bottleneck(56, 256, 128, VectorIsa::AVX2);
        assert!(matches!(p.mode, Mode::Gemm { mc: 48, .. }), "{p:?}");
        assert!(!p.prefetch_input);
        let p = bottleneck(56, 256, 128, avx512.with_bf16());
        assert!(matches!(p.mode, Mode::Gemm { mc: 112, .. }), "{p:?}");
        assert!(!p.prefetch_input);
        // An unpacked GEMM (no prologue) reads the input in place and prefetches nothing.
        assert!(!plan_for(56, 256, 128, 1, 1, avx512).prefetch_input);
        // A task is no smaller than the least work worth one (16 x 16 channels: 14 tiles).
        let p = bottleneck(56, 16, 16, avx512);
        let Mode::Gemm { mc, .. } = p.mode else {
            panic!("{p:?}")
        };
        assert!(mc * 16 * 16 >= MIN_TASK_MACS && mc % p.mr == 0, "{p:?}");
    }

    #[test]
    fn few_channel_direct_convs_fold_the_kernel_row_into_k() {
        for isa in [VectorIsa::AVX2, VectorIsa::AVX512] {
            // DenseNet-121's stem: pixels of 3 floats, whole 112-pixel output rows (a panel
            // of 7 rows of 229 pixels), 7 kernel rows of 21 steps.
            let p = plan_for(224, 3, 64, 7, 2, isa);
            assert!(p.row_k, "{isa}: {p:?}");
            assert_eq!(p.kcp_words(), 3);
            assert!(
                matches!(p.mode, Mode::Direct { owb: 112, .. }),
                "{isa}: {p:?}"
            );
            assert_eq!(p.scratch_floats(), 7 * 229 * 3, "{isa}: {p:?}");
            // The CIFAR stem too; not a conv of a vector's channels, a 1-wide kernel or bf16.
            assert!(plan_for(32, 3, 24, 3, 1, isa).row_k);
            assert!(!plan_for(56, 128, 32, 3, 1, isa).row_k);
            assert!(!plan_for(7, 5, 8, 1, 2, isa).row_k);
        }
        assert!(!plan_for(224, 3, 64, 7, 2, VectorIsa::AVX512.with_bf16()).row_k);
    }

    #[test]
    fn tiny_kernels_get_fewer_larger_tasks() {
        // DenseNet-BC-100's 8x8 growth conv at batch 1 (0.33 M MACs): whole rows, not
        // half rows of 6 + 2 pixels.
        let p = plan(8, 48, 12, 3, 1);
        assert_eq!(p.tasks(), 8, "{p:?}");
        assert!(matches!(p.mode, Mode::Direct { owb: 8, .. }), "{p:?}");
        // Large kernels keep the full split.
        assert!(plan(8, 342, 48, 1, 1).tasks() >= TARGET_TASKS);
        assert_eq!(target_tasks(0), 2);
        assert_eq!(target_tasks(usize::MAX / 2), TARGET_TASKS);
    }

    #[test]
    fn short_rows_use_tiles_that_fill_the_pipeline() {
        let steps = 9 * 48;
        assert_eq!(row_tile(8, 6, 2, steps), 4);
        assert_eq!(row_tile(7, 6, 2, steps), 4);
        assert_eq!(row_tile(12, 6, 2, steps), 6);
        assert_eq!(row_tile(32, 6, 2, steps), 4);
        assert_eq!(row_tile(36, 6, 2, steps), 6);
        assert_eq!(row_tile(3, 6, 2, steps), 6);
        // With almost no reduction, the call overhead dominates: fewer, taller tiles.
        assert_eq!(row_tile(32, 6, 2, 1), 6);
        for count in 1..64 {
            for (mr, nv) in [(12, 1), (6, 2), (4, 3), (3, 4)] {
                let t = row_tile(count, mr, nv, steps);
                assert!((1..=mr).contains(&t), "{count} {mr} {nv}");
            }
        }
        // DenseNet-BC's 8x8 growth conv at batch 1: whole 8-pixel rows as two 4-pixel tiles.
        assert_eq!(plan(8, 48, 12, 3, 1).mr, 4);
    }

    #[test]
    fn wide_rows_shrink_the_panel() {
        let p = plan(224, 256, 8, 3, 1);
        assert!(p.scratch_floats() <= PANEL_MAX, "{p:?}");
    }
}
