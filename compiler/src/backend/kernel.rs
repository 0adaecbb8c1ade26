//! The backend-neutral kernel description: one op instance with its
//! attributes and constants, reading one NHWC view of the activation arena
//! and writing another.
//!
//! Input and output are [`View`]s (see `view.rs`): channel windows of NHWC
//! arena buffers, so a dense block's concatenation costs nothing.
//!
//! Constants are logical (PyTorch layouts: conv weight `[O, I, KH, KW]`,
//! linear weight `[O, I]`); each backend packs them for its own kernels.
//! Semantics are those of the IR ops (`ir::ops`): a prologue applies to real
//! input pixels only, max pooling pads with -inf, average pooling counts the
//! padding.

use ir::graph::Constant;
use ir::ops::{ChannelAffine, Op};
use std::collections::BTreeMap;
use std::sync::Arc;

pub use super::view::{View, ELEM_BYTES};

/// Per-channel `y = x * scale + shift`, then ReLU if `relu`.
#[derive(Debug, Clone, PartialEq)]
pub struct Affine {
    pub scale: Arc<Vec<f32>>,
    pub shift: Arc<Vec<f32>>,
    pub relu: bool,
}

/// Convolution (groups 1, dilation 1) with optional input prologue, bias and
/// ReLU epilogue.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvKernel {
    pub out_channels: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    /// `[O, I, KH, KW]`, row-major.
    pub weight: Arc<Vec<f32>>,
    pub bias: Option<Arc<Vec<f32>>>,
    pub prologue: Option<Affine>,
    pub relu: bool,
}

/// Max or average pooling window.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolKernel {
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub prologue: Option<Affine>,
}

/// Fully connected: input view `[N, 1, 1, I]`, output `[N, 1, 1, O]`.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearKernel {
    pub out_features: usize,
    /// `[O, I]`, row-major.
    pub weight: Arc<Vec<f32>>,
    pub bias: Option<Arc<Vec<f32>>>,
    pub relu: bool,
}

/// A classifier head on `[N, 1, 1, C]` logits, row by row (`ir::Head`).
#[derive(Debug, Clone, PartialEq)]
pub enum HeadKernel {
    Sigmoid,
    Softmax,
    /// Sigmoid, then torchxrayvision's `op_norm` with these `[C]` thresholds.
    SigmoidOpNorm(Arc<Vec<f32>>),
}

/// The op a kernel computes.
#[derive(Debug, Clone, PartialEq)]
pub enum KernelOp {
    Conv(ConvKernel),
    MaxPool(PoolKernel),
    AvgPool(PoolKernel),
    /// Mean over `h × w`; output view `[N, 1, 1, C]`.
    GlobalAvgPool {
        prologue: Option<Affine>,
    },
    Linear(LinearKernel),
    /// Standalone affine (+ReLU); output view has the input's shape and may
    /// be the very same view (in place).
    Affine(Affine),
    /// Output head over each image's `[1, 1, C]` row; the output view may be the input's.
    Head(HeadKernel),
}

impl KernelOp {
    pub fn mnemonic(&self) -> &'static str {
        match self {
            KernelOp::Conv(_) => "conv",
            KernelOp::MaxPool(_) => "maxpool",
            KernelOp::AvgPool(_) => "avgpool",
            KernelOp::GlobalAvgPool { .. } => "gavgpool",
            KernelOp::Linear(_) => "linear",
            KernelOp::Affine(_) => "affine",
            KernelOp::Head(_) => "head",
        }
    }

    /// The kernel class profiles group by: the mnemonic with the window
    /// and a stride other than 1 (`conv1x1`, `conv3x3`, `conv7x7/2`,
    /// `maxpool3x3/2`, `avgpool2x2/2`, `gavgpool`, `linear`, `affine`).
    pub fn class(&self) -> String {
        let window = |k: [usize; 2], s: [usize; 2]| {
            let stride = if s == [1, 1] {
                String::new()
            } else if s[0] == s[1] {
                format!("/{}", s[0])
            } else {
                format!("/{}x{}", s[0], s[1])
            };
            format!("{}{}x{}{stride}", self.mnemonic(), k[0], k[1])
        };
        match self {
            KernelOp::Conv(c) => window(c.kernel, c.stride),
            KernelOp::MaxPool(p) | KernelOp::AvgPool(p) => window(p.kernel, p.stride),
            _ => self.mnemonic().to_owned(),
        }
    }
}

/// One kernel instance: what to compute, from where, to where.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelDesc {
    /// A label for symbols, dumps and profiles (e.g. the graph node's name).
    pub name: String,
    pub op: KernelOp,
    pub input: View,
    pub output: View,
    /// The output is read by one kernel only, the next in schedule order, and is not a graph
    /// output (`graph.rs`): a backend may store it in a form only that kernel reads (the CPU
    /// stores a bottleneck's output as bf16 pairs for its 3x3 conv on the AMX tiles).
    pub output_to_next_only: bool,
}

impl KernelDesc {
    /// Multiply-accumulates (convs, linear) or element visits (others): the
    /// work measure used for throughput reports.
    pub fn macs(&self) -> u64 {
        // Saturating: a description may be measured before it is validated.
        let prod = |xs: &[usize]| xs.iter().fold(1u64, |a, &x| a.saturating_mul(x as u64));
        let (i, o) = (&self.input, &self.output);
        let out = prod(&[o.n, o.h, o.w, o.channels]);
        match &self.op {
            KernelOp::Conv(c) => out.saturating_mul(prod(&[i.channels, c.kernel[0], c.kernel[1]])),
            KernelOp::Linear(_) => out.saturating_mul(i.channels as u64),
            KernelOp::MaxPool(p) | KernelOp::AvgPool(p) => out.saturating_mul(prod(&p.kernel)),
            KernelOp::GlobalAvgPool { .. } | KernelOp::Affine(_) | KernelOp::Head(_) => {
                prod(&[i.n, i.h, i.w, i.channels])
            }
        }
    }

    /// Check the description is self-consistent: view extents, shapes
    /// implied by the op, constant sizes, and that the output does not
    /// alias the input (except an in-place affine on the identical view).
    pub fn validate(&self) -> Result<(), String> {
        let (i, o) = (&self.input, &self.output);
        i.validate("input")?;
        o.validate("output")?;
        if i.n != o.n {
            return Err(format!("batch differs: input {} vs output {}", i.n, o.n));
        }
        let want = |what: &str, got: [usize; 3], exp: [usize; 3]| -> Result<(), String> {
            if got == exp {
                Ok(())
            } else {
                Err(format!(
                    "{what}: output view is (h, w, c) = {got:?}, the op implies {exp:?}"
                ))
            }
        };
        let got = [o.h, o.w, o.channels];
        let check_affine = |a: &Affine| check_affine(a, i.channels);
        match &self.op {
            KernelOp::Conv(c) => {
                let [kh, kw] = c.kernel;
                check_len(
                    "conv weight",
                    &c.weight,
                    c.out_channels * i.channels * kh * kw,
                )?;
                if let Some(b) = &c.bias {
                    check_len("conv bias", b, c.out_channels)?;
                }
                if let Some(p) = &c.prologue {
                    check_affine(p)?;
                }
                let (oh, ow) = window(i, c.kernel, c.stride, c.padding)?;
                want("conv", got, [oh, ow, c.out_channels])?;
            }
            KernelOp::MaxPool(p) | KernelOp::AvgPool(p) => {
                if let Some(a) = &p.prologue {
                    check_affine(a)?;
                }
                if (0..2).any(|d| 2 * p.padding[d] > p.kernel[d]) {
                    return Err(format!(
                        "pool padding {:?} exceeds half the kernel {:?}",
                        p.padding, p.kernel
                    ));
                }
                let (oh, ow) = window(i, p.kernel, p.stride, p.padding)?;
                want("pool", got, [oh, ow, i.channels])?;
            }
            KernelOp::GlobalAvgPool { prologue } => {
                if let Some(a) = prologue {
                    check_affine(a)?;
                }
                want("global_avg_pool", got, [1, 1, i.channels])?;
            }
            KernelOp::Linear(l) => {
                if (i.h, i.w) != (1, 1) {
                    return Err(format!("linear input must be [N,1,1,I], found {i:?}"));
                }
                check_len(
                    "linear weight",
                    &l.weight,
                    product(&[l.out_features, i.channels])?,
                )?;
                if let Some(b) = &l.bias {
                    check_len("linear bias", b, l.out_features)?;
                }
                want("linear", got, [1, 1, l.out_features])?;
            }
            KernelOp::Affine(a) => {
                check_affine(a)?;
                want("affine", got, [i.h, i.w, i.channels])?;
                if i == o {
                    return Ok(());
                }
            }
            KernelOp::Head(h) => {
                if (i.h, i.w) != (1, 1) {
                    return Err(format!("head input must be [N,1,1,C], found {i:?}"));
                }
                if let HeadKernel::SigmoidOpNorm(t) = h {
                    check_len("op_norm thresholds", t, i.channels)?;
                }
                want("head", got, [1, 1, i.channels])?;
                if i == o {
                    return Ok(());
                }
            }
        }
        if i.overlaps(o) {
            return Err(format!("output view {o:?} overlaps input view {i:?}"));
        }
        Ok(())
    }

    /// The kernel for an IR op, with its constants looked up in `constants`.
    /// Ops that the memory plan removes (`input`, `concat`, `flatten`) are
    /// errors here. `Relu` and `BatchNorm` become an [`Affine`].
    pub fn from_ir(
        name: impl Into<String>,
        op: &Op,
        constants: &BTreeMap<String, Constant>,
        input: View,
        output: View,
    ) -> Result<KernelDesc, String> {
        let get = |n: &str| -> Result<Arc<Vec<f32>>, String> {
            constants
                .get(n)
                .ok_or_else(|| format!("constant `{n}` is not declared"))?
                .data
                .clone()
                .ok_or_else(|| format!("constant `{n}` has no data bound"))
        };
        let affine = |a: &ChannelAffine| -> Result<Affine, String> {
            Ok(Affine {
                scale: get(&a.scale)?,
                shift: get(&a.shift)?,
                relu: a.relu,
            })
        };
        let prologue = |p: &Option<ChannelAffine>| p.as_ref().map(affine).transpose();
        let pool = |p: &ir::ops::Pool2d| -> Result<PoolKernel, String> {
            Ok(PoolKernel {
                kernel: p.kernel,
                stride: p.stride,
                padding: p.padding,
                prologue: prologue(&p.prologue)?,
            })
        };
        let kop = match op {
            Op::Conv2d(c) => KernelOp::Conv(ConvKernel {
                out_channels: c.out_channels,
                kernel: c.kernel,
                stride: c.stride,
                padding: c.padding,
                weight: get(&c.weight)?,
                bias: c.bias.as_deref().map(get).transpose()?,
                prologue: prologue(&c.prologue)?,
                relu: c.relu,
            }),
            Op::AvgPool2d(p) => KernelOp::AvgPool(pool(p)?),
            Op::MaxPool2d(p) => KernelOp::MaxPool(pool(p)?),
            Op::GlobalAvgPool { prologue: p } => KernelOp::GlobalAvgPool {
                prologue: prologue(p)?,
            },
            Op::Linear(l) => KernelOp::Linear(LinearKernel {
                out_features: l.out_features,
                weight: get(&l.weight)?,
                bias: l.bias.as_deref().map(get).transpose()?,
                relu: false,
            }),
            Op::ChannelAffine(a) => KernelOp::Affine(affine(a)?),
            Op::Head(h) => KernelOp::Head(match h {
                ir::Head::Sigmoid => HeadKernel::Sigmoid,
                ir::Head::Softmax => HeadKernel::Softmax,
                ir::Head::SigmoidOpNorm { thresholds } => {
                    HeadKernel::SigmoidOpNorm(get(thresholds)?)
                }
            }),
            Op::Relu => KernelOp::Affine(Affine {
                scale: Arc::new(vec![1.0; input.channels]),
                shift: Arc::new(vec![0.0; input.channels]),
                relu: true,
            }),
            Op::BatchNorm(bn) => {
                let (w, b, m, v) = (
                    get(&bn.weight)?,
                    get(&bn.bias)?,
                    get(&bn.running_mean)?,
                    get(&bn.running_var)?,
                );
                let scale: Vec<f32> = w
                    .iter()
                    .zip(v.iter())
                    .map(|(&w, &v)| {
                        (f64::from(w) / (f64::from(v) + f64::from(bn.eps)).sqrt()) as f32
                    })
                    .collect();
                let shift = b
                    .iter()
                    .zip(m.iter())
                    .zip(scale.iter())
                    .map(|((&b, &m), &s)| (f64::from(b) - f64::from(m) * f64::from(s)) as f32)
                    .collect();
                KernelOp::Affine(Affine {
                    scale: Arc::new(scale),
                    shift: Arc::new(shift),
                    relu: false,
                })
            }
            Op::Input | Op::Concat | Op::Flatten => {
                return Err(format!(
                    "`{}` is not a kernel: the memory plan resolves it to views",
                    op.mnemonic()
                ))
            }
        };
        let desc = KernelDesc {
            name: name.into(),
            op: kop,
            input,
            output,
            output_to_next_only: false,
        };
        desc.validate()?;
        Ok(desc)
    }
}

fn product(dims: &[usize]) -> Result<usize, String> {
    dims.iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| format!("constant of shape {dims:?} is too large"))
}

fn check_len(what: &str, data: &[f32], want: usize) -> Result<(), String> {
    if data.len() == want {
        Ok(())
    } else {
        Err(format!(
            "{what} has {} elements, expected {want}",
            data.len()
        ))
    }
}

fn check_affine(a: &Affine, channels: usize) -> Result<(), String> {
    check_len("prologue/affine scale", &a.scale, channels)?;
    check_len("prologue/affine shift", &a.shift, channels)
}

fn window(
    i: &View,
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
) -> Result<(usize, usize), String> {
    let oh = ir::ops::window_out(i.h, kernel[0], stride[0], padding[0])?;
    let ow = ir::ops::window_out(i.w, kernel[1], stride[1], padding[1])?;
    Ok((oh, ow))
}
