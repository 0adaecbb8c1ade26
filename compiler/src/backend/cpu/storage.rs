//! bf16 storage of activations on the AMX tiles.
//!
//! **Contract.** [`bf16_views`] returns the kernel list with [`View::bf16`] set on every view
//! of the arena buffers it chooses, and on no other. It chooses a buffer only when
//! - convs run on the AMX tiles ([`VectorIsa::amx`], so `--precision bf16`), where the
//!   choice was measured (below); with vdpbf16ps or f32 arithmetic nothing changes;
//! - every view of it starts at and spans whole vectors of channels (its loads and stores are
//!   whole vectors, [`crate::backend::cpu::codegen::Cg::load_bf16`]; a border is zeroed in
//!   bf16 by its writers, `border.rs`);
//! - a kernel writes it before any reads it, and kernels read it: an intermediate activation
//!   (the runtime fills the graph input and reads the outputs, `live_out`, in f32);
//! - every kernel that writes it can store bf16: a tile conv planned as one K chunk
//!   ([`ConvPlan::stores_bf16`]; its epilogue rounds as for a handoff), a pool, the global
//!   pool;
//! - every kernel that reads it can load bf16: a tile conv that packs a panel
//!   ([`ConvPlan::loads_bf16`]), a pool, the global pool (the linear layer, the standalone
//!   affine and the heads read f32 only, so their inputs stay f32).
//!
//! In DenseNet-121 that is every dense block's concatenation buffer (written by the max pool,
//! the transition convs and the 3x3 growth convs, read by the bottlenecks, the transition
//! pools and the final global pool), the stem's output, the transitions' pooled outputs, and
//! the bottlenecks' bordered outputs that they hand to their 3x3 (`ConvPlan::handoffs`: pairs
//! of channels are then just the buffer's bf16 elements, and the 3x3 may read its A tiles
//! from the buffer itself, `conv/emit.rs`).
//!
//! **Numerics.** A value is rounded to bf16 (to nearest even) once, where it is produced. A
//! tile conv rounds its (prologue-applied) input to bf16 anyway, so a conv without a prologue
//! sees exactly what it saw before; one with a BatchNorm prologue applies it to the rounded
//! value and rounds again; pools reduce rounded values in f32. The logits' error bound of
//! `--precision bf16` on CPU covers it (tested per preset).
//!
//! **Why.** On the tiles the multiplies are no longer the cost; moving f32 activations is:
//! every bottleneck reads the whole concatenation so far, in f32, to round it to bf16 in its
//! panel. Stored bf16, each of those reads (and each write) is half the bytes.
//! `CpuOptions::bf16_storage` (`DNC_BF16_STORAGE=0`) turns it off, for A/B measurement.

use super::codegen::VectorIsa;
use super::conv::ConvPlan;
use crate::backend::kernel::{KernelDesc, KernelOp, View};
use std::collections::HashMap;

/// What identifies an arena buffer among views: its place and geometry (the views of one
/// buffer differ only in their channel window).
type BufferKey = (usize, usize, [usize; 2], usize, usize, usize);

fn buffer_key(v: &View) -> BufferKey {
    (v.offset, v.pixel_stride, v.border, v.n, v.h, v.w)
}

/// The view's loads and stores would be whole vectors.
fn whole_vectors(v: &View, lanes: usize) -> bool {
    v.channel_offset.is_multiple_of(lanes) && v.channels.is_multiple_of(lanes)
}

fn reads_bf16(k: &KernelDesc, isa: VectorIsa) -> bool {
    match &k.op {
        KernelOp::Conv(c) => ConvPlan::loads_bf16(c, &k.input, isa),
        KernelOp::MaxPool(_) | KernelOp::AvgPool(_) | KernelOp::GlobalAvgPool { .. } => true,
        KernelOp::Linear(_) | KernelOp::Affine(_) | KernelOp::Head(_) => false,
    }
}

fn writes_bf16(k: &KernelDesc, isa: VectorIsa) -> bool {
    match &k.op {
        KernelOp::Conv(c) => ConvPlan::stores_bf16(c, &k.input, &k.output, isa),
        KernelOp::MaxPool(_) | KernelOp::AvgPool(_) | KernelOp::GlobalAvgPool { .. } => true,
        KernelOp::Linear(_) | KernelOp::Affine(_) | KernelOp::Head(_) => false,
    }
}

/// `kernels` with the views of the buffers chosen for bf16 storage marked (module docs).
/// `live_out` are the graph outputs' views.
pub(crate) fn bf16_views(
    kernels: &[KernelDesc],
    isa: VectorIsa,
    live_out: &[View],
) -> Vec<KernelDesc> {
    let mut out = kernels.to_vec();
    if !isa.amx {
        return out;
    }
    // Per buffer: [every access can be bf16, a kernel reads it, a kernel writes it].
    let mut verdict: HashMap<BufferKey, [bool; 3]> = HashMap::new();
    for k in kernels {
        let read = reads_bf16(k, isa) && whole_vectors(&k.input, isa.lanes);
        // Read before any kernel wrote it: filled by the runtime (the graph input), in f32.
        let e = verdict.entry(buffer_key(&k.input)).or_insert([false; 3]);
        e[0] &= read;
        e[1] = true;
        let write = writes_bf16(k, isa) && whole_vectors(&k.output, isa.lanes);
        let e = verdict
            .entry(buffer_key(&k.output))
            .or_insert([true, false, false]);
        e[0] &= write;
        e[2] = true;
    }
    for v in live_out {
        verdict.insert(buffer_key(v), [false; 3]);
    }
    let chosen = |v: &View| verdict.get(&buffer_key(v)) == Some(&[true; 3]);
    for k in &mut out {
        k.input.bf16 = chosen(&k.input);
        k.output.bf16 = chosen(&k.output);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::kernel::{ConvKernel, PoolKernel};
    use std::sync::Arc;

    fn conv(name: &str, k: usize, oc: usize, input: View, output: View) -> KernelDesc {
        KernelDesc {
            name: name.into(),
            op: KernelOp::Conv(ConvKernel {
                out_channels: oc,
                kernel: [k, k],
                stride: [1, 1],
                padding: [k / 2, k / 2],
                weight: Arc::new(vec![0.5; oc * input.channels * k * k]),
                bias: None,
                prologue: None,
                relu: false,
            }),
            input,
            output,
            output_to_next_only: false,
        }
    }

    fn gap(input: View, output: View) -> KernelDesc {
        KernelDesc {
            name: "gap".into(),
            op: KernelOp::GlobalAvgPool { prologue: None },
            input,
            output,
            output_to_next_only: false,
        }
    }

    /// A miniature dense block: the graph input `x` (64 channels) → conv into channels 0..64
    /// of the block buffer `blk` (96 channels) → 3x3 conv of that prefix into channels 64..96
    /// → global pool of the whole buffer into `y`, the output.
    fn block(growth: usize) -> (Vec<KernelDesc>, [View; 3]) {
        let x = View::dense(0, 2, 6, 6, 64);
        let blk = View::dense(x.end_bytes(), 2, 6, 6, 64 + growth);
        let y = View::dense(blk.end_bytes(), 2, 1, 1, 64 + growth);
        let ks = vec![
            conv("stem", 1, 64, x, blk.slice(0, 64)),
            conv("grow", 3, growth, blk.slice(0, 64), blk.slice(64, growth)),
            gap(blk, y),
        ];
        (ks, [x, blk, y])
    }

    fn flags(ks: &[KernelDesc]) -> Vec<[bool; 2]> {
        ks.iter().map(|k| [k.input.bf16, k.output.bf16]).collect()
    }

    fn amx() -> VectorIsa {
        VectorIsa::AVX512.with_bf16().with_amx()
    }

    #[test]
    fn intermediate_buffers_of_tile_convs_and_pools_are_bf16() {
        let (ks, [_, _, y]) = block(32);
        let out = bf16_views(&ks, amx(), &[y]);
        // The input (read first) and the output (live out, read by no kernel) stay f32.
        assert_eq!(flags(&out), [[false, true], [true, true], [true, false]]);
        for k in &out {
            k.validate().expect("valid views");
        }
    }

    #[test]
    fn anything_short_of_every_access_keeps_f32() {
        // (Except a border, which does not keep f32.)
        let (ks, [_, _, y]) = block(32);
        // Not on the tiles: nothing changes.
        let avx512 = VectorIsa::AVX512.with_bf16();
        assert_eq!(bf16_views(&ks, avx512, &[y]), ks);
        // A slice of 24 channels is not whole vectors: the whole buffer stays f32.
        let (ks24, [_, _, y24]) = block(24);
        assert_eq!(bf16_views(&ks24, amx(), &[y24]), ks24);
        // A bordered buffer is fine (its writers zero the border in bf16).
        let mut bordered = ks.clone();
        for k in &mut bordered[1..] {
            k.input = k.input.with_border([1, 1]);
        }
        bordered[0].output = bordered[0].output.with_border([1, 1]);
        bordered[1].output = bordered[1].output.with_border([1, 1]);
        assert_eq!(
            flags(&bf16_views(&bordered, amx(), &[y])),
            [[false, true], [true, true], [true, false]]
        );
        // A reader that loads f32 only (an affine, here in place of the pool).
        let mut affine = ks.clone();
        affine[2].op = KernelOp::Affine(crate::backend::kernel::Affine {
            scale: Arc::new(vec![1.0; 96]),
            shift: Arc::new(vec![0.0; 96]),
            relu: false,
        });
        affine[2].output = affine[2].input;
        assert!(flags(&bf16_views(&affine, amx(), &[y]))
            .iter()
            .all(|f| *f == [false; 2]));
        // A pool reading it is fine; one whose view is live out is not.
        let mut pool = ks;
        pool[2].op = KernelOp::MaxPool(PoolKernel {
            kernel: [1, 1],
            stride: [1, 1],
            padding: [0, 0],
            prologue: None,
        });
        let blk = pool[2].input;
        assert_eq!(
            flags(&bf16_views(&pool, amx(), &[y])),
            [[false, true], [true, true], [true, false]]
        );
        assert_eq!(bf16_views(&pool, amx(), &[blk]), pool);
    }
}
