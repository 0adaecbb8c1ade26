//! From a [`KernelDesc`] to a *plan* and its *bindings*.
//!
//! The plan holds every number the kernel's code is generated from
//! (tiling, geometry, flags), all decided at compile time; it is the
//! kernel's *shape key*: two descriptions with equal plans get the same
//! code and share one PTX `.entry`. The bindings are what differs between
//! such launches: where each pointer parameter ([`Buf`]) points, as an
//! element offset into the weights section or the arena, and the scalar
//! parameters ([`Scalar`]: a 1x1 GEMM's `K`, which the plan then leaves
//! out). Plans hold no LLVM
//! state, so the same plan drives the NVPTX emission and the CPU emulator.
//!
//! Alignment: the emitted code assumes nothing of its pointers beyond
//! 4-byte alignment (scalar `f32` accesses), which every binding has;
//! weights pieces are moreover 64-byte aligned by [`WeightsBuilder`]. Code
//! that used wider accesses would have to put the alignment it relies on
//! into the plan.

use super::addr::{Geom, I32_LIMIT};
use super::pack::{pack_b, pack_bias, pack_op_norm, BShape, WeightsBuilder, OP_NORM_FLOATS};
use super::precision::{Operand, Precision};
use super::simt::{Buf, Scalar};
use crate::backend::kernel::{
    Affine, ConvKernel, HeadKernel, KernelDesc, KernelOp, LinearKernel, View,
};

/// Threads per block of the element-wise kernels (pools, affine).
pub(crate) const ELTWISE_THREADS: usize = 256;
/// Most threads per block of the head kernel (one block per image row).
pub(crate) const HEAD_MAX_THREADS: usize = 256;
/// Largest pooling window (taps are unrolled).
pub(crate) const MAX_POOL_TAPS: usize = 64;
/// Padding (floats) added to each row of the shared `A` tile of the f32
/// and 16-bit kernels: keeps rows 16-byte aligned and spreads the
/// column-wise stores over banks (TF32's is `Operand::row_pads`).
pub(crate) const A_ROW_PAD: usize = 4;

/// Grid and block dimensions of one launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Launch {
    pub grid: [u32; 3],
    pub block: [u32; 3],
}

/// A per-channel affine (`x · scale[c] + shift[c]`, then ReLU when
/// `relu`): `scale` and `shift` are the [`Buf::Scale`] and [`Buf::Shift`]
/// parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct AffineOp {
    pub relu: bool,
}

/// What a kernel parameter is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Slot {
    /// A pointer into the weights or the arena.
    Buf(Buf),
    /// A 32-bit scalar.
    Scalar(Scalar),
}

/// The floats a kernel may read from a weights piece: a function of the
/// plan, and of the launch's `K` where the plan leaves `K` out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Floats {
    Fixed(usize),
    /// `per_row` floats for each of `K` rounded up to a multiple of `round`.
    PerK {
        per_row: usize,
        round: usize,
    },
}

impl Floats {
    /// The count for a launch whose `K` argument is `k`, if it has one.
    #[cfg(feature = "emulator")]
    pub fn resolve(self, k: Option<u32>) -> Option<usize> {
        match self {
            Floats::Fixed(n) => Some(n),
            Floats::PerK { per_row, round } => {
                Some((k? as usize).div_ceil(round) * round * per_row)
            }
        }
    }
}

/// A parameter of a kernel: what it is and, for a weights piece, how much
/// the kernel may read from it (`Fixed(0)` otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Param {
    pub slot: Slot,
    pub floats: Floats,
}

/// One launch's arguments, in the order of [`KernelPlan::params`]: element
/// offsets into the weights section (weights buffers) or the arena, or a
/// scalar's value.
pub(crate) type Bindings = Vec<(Slot, u64)>;

/// The bindings [`KernelPlan::new`] found, before they are put in
/// parameter order.
#[derive(Default)]
struct Offsets(Vec<(Slot, u64)>);

impl Offsets {
    fn set(&mut self, buf: Buf, at: usize) {
        self.0.push((Slot::Buf(buf), at as u64));
    }

    fn scalar(&mut self, s: Scalar, value: usize) {
        self.0.push((Slot::Scalar(s), value as u64));
    }

    fn affine(&mut self, a: &Affine, wb: &mut WeightsBuilder) -> AffineOp {
        self.set(Buf::Scale, wb.push(&a.scale));
        self.set(Buf::Shift, wb.push(&a.shift));
        AffineOp { relu: a.relu }
    }

    fn views(&mut self, i: &View, o: &View) {
        self.set(Buf::Input, Geom::base_of(i) as usize);
        self.set(Buf::Output, Geom::base_of(o) as usize);
    }

    /// The offsets in the order of `params`; each parameter bound once.
    fn bind(self, params: &[Param]) -> Result<Bindings, String> {
        if self.0.len() != params.len() {
            return Err(format!(
                "{} bindings for {} parameters",
                self.0.len(),
                params.len()
            ));
        }
        params
            .iter()
            .map(|p| {
                self.0
                    .iter()
                    .find(|(b, _)| *b == p.slot)
                    .copied()
                    .ok_or_else(|| format!("parameter {:?} is not bound", p.slot))
            })
            .collect()
    }
}

/// The block tile of the implicit GEMM: a block computes `bm` output pixels
/// × `bn` output channels, stepping the reduction `bk` rows at a time; each
/// of its `threads` threads owns a `tm × tn` register tile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Tile {
    pub bm: usize,
    pub bn: usize,
    pub bk: usize,
    pub tm: usize,
    pub tn: usize,
    pub threads: usize,
    /// Words of padding after each row of the shared `A` tile `[bk][bm +
    /// a_pad]` and the `B` tile `[bk][bn + b_pad]`, chosen per precision
    /// against bank conflicts ([`Tile::with_precision`]).
    pub a_pad: usize,
    pub b_pad: usize,
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
            a_pad: A_ROW_PAD,
            b_pad: 0,
        }
    }

    /// The tile with the shared rows padded for `precision`'s reads
    /// (banks are 4-byte words mod 32; `bm` and `bn` are multiples of 16):
    /// - the `A` gather stores lane `l` at `(l % 8)·(bm + a_pad) + l / 8`,
    ///   conflict-free when the row stride is 4 mod 16 (the eight rows
    ///   start in eight distinct groups of four banks): [`A_ROW_PAD`];
    /// - the f32 kernel reads one row at a time (broadcast or consecutive
    ///   words): no constraint, `B` unpadded;
    /// - the tensor-core fragment reads need the strides
    ///   [`Operand::row_pads`] gives (TF32's `A` reads trade the stores'
    ///   freedom from conflicts for their own, being more numerous).
    pub fn with_precision(self, precision: Precision) -> Tile {
        let (a_pad, b_pad) = precision
            .operand()
            .map_or((A_ROW_PAD, 0), Operand::row_pads);
        Tile {
            a_pad,
            b_pad,
            ..self
        }
    }

    /// Words from one row of the shared `A` tile to the next.
    pub fn a_row(&self) -> usize {
        self.bm + self.a_pad
    }

    /// Words from one row of the shared `B` tile to the next.
    pub fn b_row(&self) -> usize {
        self.bn + self.b_pad
    }

    /// The invariants the emission relies on.
    pub fn check(&self) -> Result<(), String> {
        let ok = self.bm.is_multiple_of(self.tm)
            && self.bn.is_multiple_of(self.tn)
            && (self.bm / self.tm) * (self.bn / self.tn) == self.threads
            && (self.bm * self.bk).is_multiple_of(self.threads)
            && self.threads.is_multiple_of(self.bk)
            && self.threads.is_multiple_of(self.bn)
            && self.bm.is_multiple_of(16)
            && self.bn.is_multiple_of(16)
            && self.threads <= 1024;
        if ok {
            Ok(())
        } else {
            Err(format!("inconsistent GEMM tile {self:?}"))
        }
    }

    /// Floats of shared memory: the `A` tile `[bk][bm + a_pad]` and the
    /// `B` tile `[bk][bn + b_pad]`.
    pub fn shared_floats(&self) -> (usize, usize) {
        (self.bk * self.a_row(), self.bk * self.b_row())
    }
}

/// A convolution (or linear layer) as an implicit GEMM:
/// `Out[m][o] = Σ_k A[m][k] · B[k][o]` with `m` an output pixel, `o` an
/// output channel and `k = (ky * KW + kx) * I + i` (see `pack.rs`).
///
/// A 1x1 GEMM (`k_param`) takes `K = I` as the [`Scalar::K`] argument: its
/// `k`, `k_tiles` and `input.channels` are then 0 here, so that 1x1 GEMMs
/// differing only in their input channels share an entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
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
    /// `K` is the [`Scalar::K`] argument (1x1 kernels).
    pub k_param: bool,
    pub prologue: Option<AffineOp>,
    pub relu: bool,
    /// SIMT f32 or tensor cores (`mma.rs`): same tile and staging, the
    /// shared rows padded for the precision's reads ([`GemmPlan::set_precision`]).
    pub precision: Precision,
}

/// Max or average pooling, one thread per output element.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PoolPlan {
    pub max: bool,
    pub input: Geom,
    pub output: Geom,
    pub kernel: [i32; 2],
    pub stride: [i32; 2],
    pub padding: [i32; 2],
    pub prologue: Option<AffineOp>,
}

/// Global average pooling, one thread per `(n, c)`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct GapPlan {
    pub input: Geom,
    pub output: Geom,
    pub prologue: Option<AffineOp>,
}

/// A standalone affine (+ReLU), one thread per element (may be in place).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct AffinePlan {
    pub input: Geom,
    pub output: Geom,
    pub affine: AffineOp,
}

/// Which output head (`ir::Head`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum HeadOp {
    Sigmoid,
    Softmax,
    /// Sigmoid, then op-norm with the per-class parameters in the
    /// [`Buf::HeadParams`] piece ([`pack_op_norm`]).
    OpNorm,
}

/// An output head over `[N, 1, 1, C]` logits (`head.rs`): one block per
/// image, `threads` (a power of two, 32..=[`HEAD_MAX_THREADS`]) threads
/// striding over its `C` classes. May be in place.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct HeadPlan {
    pub op: HeadOp,
    pub input: Geom,
    pub output: Geom,
    pub threads: usize,
}

impl HeadPlan {
    fn new(
        h: &HeadKernel,
        input: Geom,
        output: Geom,
        wb: &mut WeightsBuilder,
        at: &mut Offsets,
    ) -> Result<HeadPlan, String> {
        let classes = input.channels as usize;
        if classes == 0 || input.pixels() == 0 {
            return Err(format!(
                "head over {} rows of {classes} classes: nothing to compute",
                input.pixels()
            ));
        }
        let op = match h {
            HeadKernel::Sigmoid => HeadOp::Sigmoid,
            HeadKernel::Softmax => HeadOp::Softmax,
            HeadKernel::SigmoidOpNorm(t) => {
                at.set(Buf::HeadParams, wb.push(&pack_op_norm(t)));
                HeadOp::OpNorm
            }
        };
        Ok(HeadPlan {
            op,
            input,
            output,
            threads: classes.next_power_of_two().clamp(32, HEAD_MAX_THREADS),
        })
    }

    /// Classes each thread handles (at least 1).
    pub fn per_thread(&self) -> i32 {
        (self.input.channels as usize).div_ceil(self.threads) as i32
    }

    /// Shared floats: two reduction arrays for softmax (max, sum).
    pub fn shared_floats(&self) -> usize {
        match self.op {
            HeadOp::Softmax => 2 * self.threads,
            _ => 0,
        }
    }
}

/// The lowering decision for one kernel, and its shape key (module docs).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum KernelPlan {
    Gemm(GemmPlan),
    Pool(PoolPlan),
    Gap(GapPlan),
    Affine(AffinePlan),
    Head(HeadPlan),
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
    /// Plan `desc` (already validated), pack its constants into `wb` and
    /// bind its parameters.
    pub fn new(
        desc: &KernelDesc,
        wb: &mut WeightsBuilder,
    ) -> Result<(KernelPlan, Bindings), String> {
        let (i, o) = (&desc.input, &desc.output);
        let (gi, go) = (Geom::of(i)?, Geom::of(o)?);
        let mut at = Offsets::default();
        let plan = match &desc.op {
            KernelOp::Conv(c) => KernelPlan::Gemm(GemmPlan::conv(c, i, o, wb, &mut at)?),
            KernelOp::Linear(l) => KernelPlan::Gemm(GemmPlan::linear(l, i, o, wb, &mut at)?),
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
                    prologue: p.prologue.as_ref().map(|a| at.affine(a, wb)),
                })
            }
            KernelOp::GlobalAvgPool { prologue } => KernelPlan::Gap(GapPlan {
                input: gi,
                output: go,
                prologue: prologue.as_ref().map(|a| at.affine(a, wb)),
            }),
            KernelOp::Head(h) => KernelPlan::Head(HeadPlan::new(h, gi, go, wb, &mut at)?),
            KernelOp::Affine(a) => KernelPlan::Affine(AffinePlan {
                input: gi,
                output: go,
                affine: at.affine(a, wb),
            }),
        };
        at.views(i, o);
        let bindings = at.bind(&plan.params())?;
        Ok((plan, bindings))
    }

    /// The kernel's parameters, in order: weights pieces first, then the
    /// input and output views, then the scalars.
    pub fn params(&self) -> Vec<Param> {
        let w = |buf, floats| Param {
            slot: Slot::Buf(buf),
            floats,
        };
        let a = |buf| w(buf, Floats::Fixed(0));
        let affine = |on: bool, floats: Floats| {
            if on {
                vec![w(Buf::Scale, floats), w(Buf::Shift, floats)]
            } else {
                vec![]
            }
        };
        let channels = |c: i32| Floats::Fixed(c as usize);
        let views = [a(Buf::Input), a(Buf::Output)];
        match self {
            KernelPlan::Gemm(g) => {
                let n_pad = g.n_pad as usize;
                let bk = g.tile.bk;
                let (matrix, channels) = if g.k_param {
                    (
                        Floats::PerK {
                            per_row: n_pad,
                            round: bk,
                        },
                        Floats::PerK {
                            per_row: 1,
                            round: 1,
                        },
                    )
                } else {
                    (
                        Floats::Fixed(g.k_tiles as usize * bk * n_pad),
                        channels(g.input.channels),
                    )
                };
                let mut p = vec![w(Buf::Matrix, matrix), w(Buf::Bias, Floats::Fixed(n_pad))];
                p.extend(affine(g.prologue.is_some(), channels));
                p.extend(views);
                if g.k_param {
                    p.push(Param {
                        slot: Slot::Scalar(Scalar::K),
                        floats: Floats::Fixed(0),
                    });
                }
                p
            }
            KernelPlan::Pool(p) => {
                let mut v = affine(p.prologue.is_some(), channels(p.input.channels));
                v.extend(views);
                v
            }
            KernelPlan::Gap(p) => {
                let mut v = affine(p.prologue.is_some(), channels(p.input.channels));
                v.extend(views);
                v
            }
            KernelPlan::Affine(p) => {
                let mut v = affine(true, channels(p.input.channels));
                v.extend(views);
                v
            }
            KernelPlan::Head(h) => {
                let mut v = Vec::new();
                if h.op == HeadOp::OpNorm {
                    let floats = OP_NORM_FLOATS * h.input.channels as usize;
                    v.push(w(Buf::HeadParams, Floats::Fixed(floats)));
                }
                v.extend(views);
                v
            }
        }
    }

    /// A short name of the kernel kind, for entry symbols.
    pub fn kind(&self) -> String {
        match self {
            KernelPlan::Gemm(g) => format!("gemm{}x{}", g.kernel[0], g.kernel[1]),
            KernelPlan::Pool(p) if p.max => "maxpool".into(),
            KernelPlan::Pool(_) => "avgpool".into(),
            KernelPlan::Gap(_) => "gap".into(),
            KernelPlan::Affine(_) => "affine".into(),
            KernelPlan::Head(h) => match h.op {
                HeadOp::Sigmoid => "sigmoid".into(),
                HeadOp::Softmax => "softmax".into(),
                HeadOp::OpNorm => "opnorm".into(),
            },
        }
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
            KernelPlan::Head(h) => Ok(Launch {
                grid: [blocks(h.input.pixels() as usize, 1)?, 1, 1],
                block: [h.threads as u32, 1, 1],
            }),
        }
    }

    /// Static shared memory in bytes.
    pub fn shared_bytes(&self) -> usize {
        match self {
            KernelPlan::Gemm(g) => {
                let (a, b) = g.tile.shared_floats();
                4 * (a + b)
            }
            KernelPlan::Head(h) => 4 * h.shared_floats(),
            _ => 0,
        }
    }

    /// A one-line description for dumps.
    pub fn summary(&self) -> String {
        match self {
            KernelPlan::Gemm(g) => format!(
                "gemm{} m={} n={} k={} tile={}x{}x{} thread={}x{} threads={}",
                match g.precision {
                    Precision::Fp32 => String::new(),
                    p => format!(" {p}"),
                },
                g.m,
                g.n,
                if g.k_param {
                    "K".into()
                } else {
                    g.k.to_string()
                },
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
            KernelPlan::Head(h) => format!(
                "{} c={} threads={}",
                self.kind(),
                h.input.channels,
                h.threads
            ),
        }
    }
}

impl GemmPlan {
    /// Sets the arithmetic, and the shared-memory padding that goes with it.
    pub fn set_precision(&mut self, precision: Precision) {
        self.precision = precision;
        self.tile = self.tile.with_precision(precision);
    }

    fn conv(
        c: &ConvKernel,
        i: &View,
        o: &View,
        wb: &mut WeightsBuilder,
        at: &mut Offsets,
    ) -> Result<GemmPlan, String> {
        let prologue = c.prologue.as_ref().map(|a| at.affine(a, wb));
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
            at,
        )
    }

    fn linear(
        l: &LinearKernel,
        i: &View,
        o: &View,
        wb: &mut WeightsBuilder,
        at: &mut Offsets,
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
            at,
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
        prologue: Option<AffineOp>,
        relu: bool,
        wb: &mut WeightsBuilder,
        at: &mut Offsets,
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
        at.set(Buf::Matrix, wb.push(&pack_b(weight, &shape)));
        at.set(Buf::Bias, wb.push(&pack_bias(bias, n_pad)));
        let k_param = kernel == [1, 1];
        let mut input = Geom::of(i)?;
        let (k, k_tiles) = if k_param {
            at.scalar(Scalar::K, k);
            input.channels = 0;
            (0, 0)
        } else {
            (k, k_pad / tile.bk)
        };
        Ok(GemmPlan {
            tile,
            input,
            output: Geom::of(o)?,
            kernel: i32s(kernel),
            stride: i32s(stride),
            padding: i32s(padding),
            m: m as i32,
            k: k as i32,
            n: out_channels as i32,
            k_tiles: k_tiles as u32,
            n_pad: n_pad as i32,
            k_param,
            prologue,
            relu,
            precision: Precision::Fp32,
        })
    }
}

/// GEMM sizes `(m, n)` from one pixel to 200k and one channel to 1000,
/// for the tests of the tiles chosen for them.
#[cfg(test)]
pub(crate) fn sample_gemm_sizes() -> impl Iterator<Item = (usize, usize)> {
    let ms = [1, 2, 7, 33, 100, 1000, 5000, 9000, 200_000];
    let ns = [1, 5, 12, 16, 32, 48, 64, 128, 1000];
    ms.into_iter().flat_map(move |m| ns.map(|n| (m, n)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_are_consistent() {
        for (m, n) in sample_gemm_sizes() {
            for p in Precision::ALL {
                let t = Tile::choose(m, n).with_precision(p);
                t.check().unwrap_or_else(|e| panic!("m={m} n={n}: {e}"));
                let (a, b) = t.shared_floats();
                assert!(4 * (a + b) <= 48 * 1024, "{t:?}");
            }
        }
    }
}
