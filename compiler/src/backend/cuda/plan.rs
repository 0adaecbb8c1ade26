//! From a [`KernelDesc`] to a *plan*: the numbers a kernel is generated
//! from (tiling, geometry, weight offsets) and its launch configuration,
//! all decided at compile time. Plans hold no LLVM state, so the same plan
//! drives the NVPTX emission and the CPU emulator.

use super::addr::{Geom, I32_LIMIT};
use super::mma::Precision;
use super::pack::{pack_b, pack_bias, BShape, WeightsBuilder};
use crate::backend::kernel::{Affine, ConvKernel, KernelDesc, KernelOp, LinearKernel, View};

/// Threads per block of the element-wise kernels (pools, affine).
pub(crate) const ELTWISE_THREADS: usize = 256;
/// Largest pooling window (taps are unrolled).
pub(crate) const MAX_POOL_TAPS: usize = 64;
/// Padding (floats) added to each row of the shared `A` tile: keeps rows
/// 16-byte aligned and spreads the column-wise stores over banks.
pub(crate) const A_ROW_PAD: usize = 4;

/// Grid and block dimensions of one launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Launch {
    pub grid: [u32; 3],
    pub block: [u32; 3],
}

/// A packed per-channel affine: element offsets of `scale` and `shift` in
/// the weights section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AffineRef {
    pub scale: i64,
    pub shift: i64,
    pub relu: bool,
}

impl AffineRef {
    fn pack(a: &Affine, wb: &mut WeightsBuilder) -> AffineRef {
        AffineRef {
            scale: wb.push(&a.scale) as i64,
            shift: wb.push(&a.shift) as i64,
            relu: a.relu,
        }
    }
}

/// The block tile of the implicit GEMM: a block computes `bm` output pixels
/// × `bn` output channels, stepping the reduction `bk` rows at a time; each
/// of its `threads` threads owns a `tm × tn` register tile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tile {
    pub bm: usize,
    pub bn: usize,
    pub bk: usize,
    pub tm: usize,
    pub tn: usize,
    pub threads: usize,
}

impl Tile {
    /// The tile for a GEMM of `m` rows (output pixels) and `n` columns
    /// (output channels): columns rounded up to 16..64, 4 per thread (2
    /// for 16, so that each thread gathers at most 4 `A` elements per
    /// slice); 8 rows per thread for large problems; fewer threads for
    /// small `m`; `bk` = 8.
    pub fn choose(m: usize, n: usize) -> Tile {
        let bn = n.next_power_of_two().clamp(16, 64);
        let tn = if bn == 16 { 2 } else { 4 };
        let cols = bn / tn;
        let tm = if m >= 8192 && bn == 64 { 8 } else { 4 };
        let mut threads = 256;
        while threads > 64 && (threads / cols) * tm >= 2 * m {
            threads /= 2;
        }
        let bm = threads / cols * tm;
        let bk = 8;
        Tile {
            bm,
            bn,
            bk,
            tm,
            tn,
            threads,
        }
    }

    /// The invariants the emission relies on.
    pub fn check(&self) -> Result<(), String> {
        let ok = self.bm.is_multiple_of(self.tm)
            && self.bn.is_multiple_of(self.tn)
            && (self.bm / self.tm) * (self.bn / self.tn) == self.threads
            && (self.bm * self.bk).is_multiple_of(self.threads)
            && self.threads.is_multiple_of(self.bk)
            && self.threads.is_multiple_of(self.bn)
            && self.threads <= 1024;
        if ok {
            Ok(())
        } else {
            Err(format!("inconsistent GEMM tile {self:?}"))
        }
    }

    /// Floats of shared memory: the `A` tile `[bk][bm + pad]` and the `B`
    /// tile `[bk][bn]`.
    pub fn shared_floats(&self) -> (usize, usize) {
        (self.bk * (self.bm + A_ROW_PAD), self.bk * self.bn)
    }
}

/// A convolution (or linear layer) as an implicit GEMM:
/// `Out[m][o] = Σ_k A[m][k] · B[k][o]` with `m` an output pixel, `o` an
/// output channel and `k = (ky * KW + kx) * I + i` (see `pack.rs`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct GemmPlan {
    pub tile: Tile,
    pub input: Geom,
    pub output: Geom,
    pub kernel: [i32; 2],
    pub stride: [i32; 2],
    pub padding: [i32; 2],
    /// GEMM sizes: rows (output pixels), reduction, columns.
    pub m: i32,
    pub k: i32,
    pub n: i32,
    pub k_tiles: u32,
    pub n_pad: i32,
    /// Element offsets in the weights section.
    pub b: i64,
    pub bias: i64,
    pub prologue: Option<AffineRef>,
    pub relu: bool,
    /// SIMT f32 or TF32 tensor cores (`mma.rs`): same tile, same staging.
    pub precision: Precision,
}

/// Max or average pooling, one thread per output element.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PoolPlan {
    pub max: bool,
    pub input: Geom,
    pub output: Geom,
    pub kernel: [i32; 2],
    pub stride: [i32; 2],
    pub padding: [i32; 2],
    pub prologue: Option<AffineRef>,
}

/// Global average pooling, one thread per `(n, c)`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct GapPlan {
    pub input: Geom,
    pub output: Geom,
    pub prologue: Option<AffineRef>,
}

/// A standalone affine (+ReLU), one thread per element (may be in place).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AffinePlan {
    pub input: Geom,
    pub output: Geom,
    pub affine: AffineRef,
}

/// Zeroing an output view's channel slice of its buffer's border, one
/// thread per border element.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BorderPlan {
    pub output: Geom,
}

impl BorderPlan {
    /// Border pixels of one image: the full top and bottom rows, then the
    /// left and right columns of the real rows.
    pub fn pixels_per_image(&self) -> i32 {
        let [bh, bw] = self.output.border;
        let [_, ws] = self.output.stored();
        2 * bh * ws + self.output.h * 2 * bw
    }

    pub fn elements(&self) -> usize {
        self.output.n as usize * self.pixels_per_image() as usize * self.output.channels as usize
    }
}

/// The lowering decision for one kernel.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum KernelPlan {
    Gemm(GemmPlan),
    Pool(PoolPlan),
    Gap(GapPlan),
    Affine(AffinePlan),
    Border(BorderPlan),
}

fn i32s(xs: [usize; 2]) -> [i32; 2] {
    // Callers checked the window sizes against the (32-bit) view extents.
    xs.map(|x| x.min(I32_LIMIT) as i32)
}

fn blocks(total: usize, per_block: usize) -> Result<u32, String> {
    u32::try_from(total.div_ceil(per_block))
        .ok()
        .filter(|&b| b <= i32::MAX as u32)
        .ok_or_else(|| format!("{total} elements need too many blocks"))
}

impl KernelPlan {
    /// Plan `desc` (already validated) and pack its constants into `wb`.
    pub fn new(desc: &KernelDesc, wb: &mut WeightsBuilder) -> Result<KernelPlan, String> {
        let (i, o) = (&desc.input, &desc.output);
        let (gi, go) = (Geom::of(i)?, Geom::of(o)?);
        let pro = |p: &Option<Affine>, wb: &mut WeightsBuilder| {
            p.as_ref().map(|a| AffineRef::pack(a, wb))
        };
        Ok(match &desc.op {
            KernelOp::Conv(c) => KernelPlan::Gemm(GemmPlan::conv(c, i, o, wb)?),
            KernelOp::Linear(l) => KernelPlan::Gemm(GemmPlan::linear(l, i, o, wb)?),
            KernelOp::MaxPool(p) | KernelOp::AvgPool(p) => {
                let taps = p.kernel[0] * p.kernel[1];
                if taps > MAX_POOL_TAPS {
                    return Err(format!(
                        "pooling window of {taps} taps (at most {MAX_POOL_TAPS})"
                    ));
                }
                KernelPlan::Pool(PoolPlan {
                    max: matches!(desc.op, KernelOp::MaxPool(_)),
                    input: gi,
                    output: go,
                    kernel: i32s(p.kernel),
                    stride: i32s(p.stride),
                    padding: i32s(p.padding),
                    prologue: pro(&p.prologue, wb),
                })
            }
            KernelOp::GlobalAvgPool { prologue } => KernelPlan::Gap(GapPlan {
                input: gi,
                output: go,
                prologue: pro(prologue, wb),
            }),
            KernelOp::Affine(a) => KernelPlan::Affine(AffinePlan {
                input: gi,
                output: go,
                affine: AffineRef::pack(a, wb),
            }),
        })
    }

    /// The plan zeroing `desc`'s output border, if its buffer has one.
    pub fn border(desc: &KernelDesc) -> Result<Option<KernelPlan>, String> {
        if desc.output.is_flat() {
            return Ok(None);
        }
        Ok(Some(KernelPlan::Border(BorderPlan {
            output: Geom::of(&desc.output)?,
        })))
    }

    /// Grid and block of the kernel's launch.
    pub fn launch(&self) -> Result<Launch, String> {
        let elt = |total: usize| -> Result<Launch, String> {
            Ok(Launch {
                grid: [blocks(total, ELTWISE_THREADS)?, 1, 1],
                block: [ELTWISE_THREADS as u32, 1, 1],
            })
        };
        match self {
            KernelPlan::Gemm(g) => {
                let t = g.tile;
                let gy = (g.n_pad as usize) / t.bn;
                if gy > 65535 {
                    return Err(format!("{} output channels need too many blocks", g.n));
                }
                Ok(Launch {
                    grid: [blocks(g.m as usize, t.bm)?, gy as u32, 1],
                    block: [t.threads as u32, 1, 1],
                })
            }
            KernelPlan::Pool(p) => elt(p.output.pixels() as usize * p.output.channels as usize),
            KernelPlan::Gap(p) => elt(p.output.pixels() as usize * p.output.channels as usize),
            KernelPlan::Affine(p) => elt(p.output.pixels() as usize * p.output.channels as usize),
            KernelPlan::Border(p) => elt(p.elements()),
        }
    }

    /// Static shared memory in bytes.
    pub fn shared_bytes(&self) -> usize {
        match self {
            KernelPlan::Gemm(g) => {
                let (a, b) = g.tile.shared_floats();
                4 * (a + b)
            }
            _ => 0,
        }
    }

    /// A one-line description for dumps.
    pub fn summary(&self) -> String {
        match self {
            KernelPlan::Gemm(g) => format!(
                "gemm{} m={} n={} k={} tile={}x{}x{} thread={}x{} threads={}",
                match g.precision {
                    Precision::Fp32 => "",
                    Precision::Tf32 => " tf32",
                },
                g.m,
                g.n,
                g.k,
                g.tile.bm,
                g.tile.bn,
                g.tile.bk,
                g.tile.tm,
                g.tile.tn,
                g.tile.threads
            ),
            KernelPlan::Pool(p) => format!(
                "{} {}x{}/{}",
                if p.max { "maxpool" } else { "avgpool" },
                p.kernel[0],
                p.kernel[1],
                p.stride[0]
            ),
            KernelPlan::Gap(_) => "gavgpool".into(),
            KernelPlan::Affine(_) => "affine".into(),
            KernelPlan::Border(p) => format!("zero border {:?}", p.output.border),
        }
    }
}

impl GemmPlan {
    fn conv(
        c: &ConvKernel,
        i: &View,
        o: &View,
        wb: &mut WeightsBuilder,
    ) -> Result<GemmPlan, String> {
        let prologue = c.prologue.as_ref().map(|a| AffineRef::pack(a, wb));
        Self::new(
            i,
            o,
            c.out_channels,
            c.kernel,
            c.stride,
            c.padding,
            &c.weight,
            c.bias.as_deref().map(|b| b.as_slice()),
            prologue,
            c.relu,
            wb,
        )
    }

    fn linear(
        l: &LinearKernel,
        i: &View,
        o: &View,
        wb: &mut WeightsBuilder,
    ) -> Result<GemmPlan, String> {
        Self::new(
            i,
            o,
            l.out_features,
            [1, 1],
            [1, 1],
            [0, 0],
            &l.weight,
            l.bias.as_deref().map(|b| b.as_slice()),
            None,
            l.relu,
            wb,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn new(
        i: &View,
        o: &View,
        out_channels: usize,
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
        weight: &[f32],
        bias: Option<&[f32]>,
        prologue: Option<AffineRef>,
        relu: bool,
        wb: &mut WeightsBuilder,
    ) -> Result<GemmPlan, String> {
        let m = o.pixels();
        let k = kernel[0] * kernel[1] * i.channels;
        if k > I32_LIMIT / 2 || out_channels > I32_LIMIT / 2 {
            return Err(format!("GEMM of k={k}, n={out_channels} is too large"));
        }
        let tile = Tile::choose(m, out_channels);
        tile.check()?;
        let k_pad = k.div_ceil(tile.bk) * tile.bk;
        let n_pad = out_channels.div_ceil(tile.bn) * tile.bn;
        let shape = BShape {
            out_channels,
            in_channels: i.channels,
            kernel,
            k_pad,
            n_pad,
        };
        let b = wb.push(&pack_b(weight, &shape)) as i64;
        let bias = wb.push(&pack_bias(bias, n_pad)) as i64;
        Ok(GemmPlan {
            tile,
            input: Geom::of(i)?,
            output: Geom::of(o)?,
            kernel: i32s(kernel),
            stride: i32s(stride),
            padding: i32s(padding),
            m: m as i32,
            k: k as i32,
            n: out_channels as i32,
            k_tiles: (k_pad / tile.bk) as u32,
            n_pad: n_pad as i32,
            b,
            bias,
            prologue,
            relu,
            precision: Precision::Fp32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_are_consistent() {
        for m in [1, 2, 7, 33, 100, 1000, 5000, 9000, 200_000] {
            for n in [1, 5, 12, 16, 32, 48, 64, 128, 1000] {
                let t = Tile::choose(m, n);
                t.check().unwrap_or_else(|e| panic!("m={m} n={n}: {e}"));
                let (a, b) = t.shared_floats();
                assert!(4 * (a + b) <= 48 * 1024, "{t:?}");
            }
        }
    }
}
