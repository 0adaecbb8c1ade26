//! The ops of DenseNet inference, each defined once: its attributes, the
//! constants it reads and its shape rule.
//!
//! Semantics are PyTorch's (`torch.nn.functional`), on logical NCHW tensors:
//! the reference executor (`crate::reference`) is the executable definition.

use crate::constant::Constant;
use crate::types::TensorType;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A per-channel affine map followed by an optional ReLU:
/// `y[n,c,h,w] = max(x[n,c,h,w] * scale[c] + shift[c], 0)`.
///
/// As an op it is a BatchNorm in inference form; as the *prologue* of a conv
/// or pool it is applied to the consumer's real input pixels only, never to
/// the zero (or, for max pool, -inf) padding the consumer adds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelAffine {
    pub scale: String,
    pub shift: String,
    pub relu: bool,
}

/// 2-D convolution, groups = 1, dilation = 1. Weight `[O, I, KH, KW]`,
/// optional bias `[O]`; an optional fused prologue on the input and an
/// optional fused ReLU epilogue on the output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conv2d {
    pub weight: String,
    pub bias: Option<String>,
    pub out_channels: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub prologue: Option<ChannelAffine>,
    pub relu: bool,
}

/// BatchNorm in inference form:
/// `(x - running_mean) / sqrt(running_var + eps) * weight + bias`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchNorm {
    pub weight: String,
    pub bias: String,
    pub running_mean: String,
    pub running_var: String,
    pub eps: f32,
}

/// Average or max pooling (`floor` output size, PyTorch's defaults).
/// Average pooling counts padded positions (`count_include_pad = true`);
/// max pooling pads with -inf. The optional prologue applies to real
/// pixels only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pool2d {
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub prologue: Option<ChannelAffine>,
}

/// Fully connected layer: `y = x W^T + b`, weight `[O, I]`, bias `[O]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Linear {
    pub weight: String,
    pub bias: Option<String>,
    pub out_features: usize,
}

/// A classifier head on `[N, C]` logits (`--head`), applied row by row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Head {
    /// `1 / (1 + exp(-x))`, elementwise.
    Sigmoid,
    /// `softmax(x, dim=1)`: `exp(x - max) / sum(exp(x - max))` per row.
    Softmax,
    /// torchxrayvision's forward: sigmoid, then `op_norm` with per-class
    /// thresholds `t` (constant `[C]`): `y < t ? y / (2t) : 1 - (1 - y) / (2(1 - t))`;
    /// a NaN threshold gives 0.5.
    SigmoidOpNorm { thresholds: String },
}

impl Head {
    /// Apply the head to one row of logits, in f64 (the reference).
    pub fn apply_row(&self, row: &mut [f64], thresholds: Option<&[f32]>) {
        let sigmoid = |x: f64| 1.0 / (1.0 + (-x).exp());
        match self {
            Head::Sigmoid => row.iter_mut().for_each(|x| *x = sigmoid(*x)),
            Head::Softmax => {
                let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let mut sum = 0.0;
                for x in row.iter_mut() {
                    *x = (*x - max).exp();
                    sum += *x;
                }
                row.iter_mut().for_each(|x| *x /= sum);
            }
            Head::SigmoidOpNorm { .. } => {
                let t = thresholds.unwrap_or(&[]);
                for (c, x) in row.iter_mut().enumerate() {
                    let y = sigmoid(*x);
                    let t = t.get(c).map_or(f64::NAN, |&t| f64::from(t));
                    *x = op_norm(y, t);
                }
            }
        }
    }
}

/// torchxrayvision's `op_norm` for one sigmoid output `y` and threshold `t`.
pub fn op_norm(y: f64, t: f64) -> f64 {
    if t.is_nan() {
        0.5
    } else if y < t {
        y / (t * 2.0)
    } else {
        1.0 - (1.0 - y) / ((1.0 - t) * 2.0)
    }
}

/// Backwards-compatible name for the prologue type.
pub type Prologue = ChannelAffine;

/// An operation of the graph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Op {
    /// A graph input; its type is the node's type.
    Input,
    Conv2d(Conv2d),
    BatchNorm(BatchNorm),
    /// Per-channel affine (+ReLU) as a standalone op.
    ChannelAffine(ChannelAffine),
    Relu,
    /// Concatenation along the channel axis (axis 1), operands in order.
    Concat,
    AvgPool2d(Pool2d),
    MaxPool2d(Pool2d),
    /// `adaptive_avg_pool2d(x, 1)`: `[N,C,H,W] -> [N,C,1,1]`, with an
    /// optional fused prologue.
    GlobalAvgPool {
        prologue: Option<ChannelAffine>,
    },
    /// `[N, ...] -> [N, prod(...)]`.
    Flatten,
    Linear(Linear),
    /// A classifier head on `[N, C]`: same shape out.
    Head(Head),
}

impl Op {
    /// The name used by the text form.
    pub fn mnemonic(&self) -> &'static str {
        match self {
            Op::Input => "input",
            Op::Conv2d(_) => "conv2d",
            Op::BatchNorm(_) => "batch_norm",
            Op::ChannelAffine(_) => "channel_affine",
            Op::Relu => "relu",
            Op::Concat => "concat",
            Op::AvgPool2d(_) => "avg_pool2d",
            Op::MaxPool2d(_) => "max_pool2d",
            Op::GlobalAvgPool { .. } => "global_avg_pool",
            Op::Flatten => "flatten",
            Op::Linear(_) => "linear",
            Op::Head(Head::Sigmoid) => "sigmoid",
            Op::Head(Head::Softmax) => "softmax",
            Op::Head(Head::SigmoidOpNorm { .. }) => "sigmoid_op_norm",
        }
    }

    /// The fused prologue, for ops that can carry one.
    pub fn prologue(&self) -> Option<&ChannelAffine> {
        match self {
            Op::Conv2d(c) => c.prologue.as_ref(),
            Op::AvgPool2d(p) | Op::MaxPool2d(p) => p.prologue.as_ref(),
            Op::GlobalAvgPool { prologue } => prologue.as_ref(),
            _ => None,
        }
    }

    /// Names of the constants the op reads, in a fixed order.
    pub fn constants(&self) -> Vec<&str> {
        fn push_affine<'a>(out: &mut Vec<&'a str>, a: &'a ChannelAffine) {
            out.push(a.scale.as_str());
            out.push(a.shift.as_str());
        }
        let mut out = Vec::new();
        match self {
            Op::Conv2d(c) => {
                if let Some(p) = &c.prologue {
                    push_affine(&mut out, p);
                }
                out.push(c.weight.as_str());
                if let Some(b) = &c.bias {
                    out.push(b.as_str());
                }
            }
            Op::BatchNorm(b) => {
                out.extend([
                    b.weight.as_str(),
                    b.bias.as_str(),
                    b.running_mean.as_str(),
                    b.running_var.as_str(),
                ]);
            }
            Op::ChannelAffine(a) => push_affine(&mut out, a),
            Op::AvgPool2d(p) | Op::MaxPool2d(p) => {
                if let Some(a) = &p.prologue {
                    push_affine(&mut out, a);
                }
            }
            Op::GlobalAvgPool { prologue: Some(a) } => push_affine(&mut out, a),
            Op::Linear(l) => {
                out.push(l.weight.as_str());
                if let Some(b) = &l.bias {
                    out.push(b.as_str());
                }
            }
            Op::Head(Head::SigmoidOpNorm { thresholds }) => out.push(thresholds.as_str()),
            Op::Input
            | Op::Relu
            | Op::Concat
            | Op::Flatten
            | Op::Head(_)
            | Op::GlobalAvgPool { prologue: None } => {}
        }
        out
    }

    /// Rename every constant reference through `f` (used by passes that
    /// create new constants and by the weight importer).
    pub fn rename_constants(&mut self, mut f: impl FnMut(&str) -> Option<String>) {
        let mut re = |s: &mut String| {
            if let Some(n) = f(s) {
                *s = n;
            }
        };
        let re_affine = |a: &mut ChannelAffine, re: &mut dyn FnMut(&mut String)| {
            re(&mut a.scale);
            re(&mut a.shift);
        };
        match self {
            Op::Conv2d(c) => {
                if let Some(p) = &mut c.prologue {
                    re_affine(p, &mut re);
                }
                re(&mut c.weight);
                if let Some(b) = &mut c.bias {
                    re(b);
                }
            }
            Op::BatchNorm(b) => {
                re(&mut b.weight);
                re(&mut b.bias);
                re(&mut b.running_mean);
                re(&mut b.running_var);
            }
            Op::ChannelAffine(a) => re_affine(a, &mut re),
            Op::AvgPool2d(p) | Op::MaxPool2d(p) => {
                if let Some(a) = &mut p.prologue {
                    re_affine(a, &mut re);
                }
            }
            Op::GlobalAvgPool { prologue: Some(a) } => re_affine(a, &mut re),
            Op::Linear(l) => {
                re(&mut l.weight);
                if let Some(b) = &mut l.bias {
                    re(b);
                }
            }
            Op::Head(Head::SigmoidOpNorm { thresholds }) => re(thresholds),
            Op::Input
            | Op::Relu
            | Op::Concat
            | Op::Flatten
            | Op::Head(_)
            | Op::GlobalAvgPool { prologue: None } => {}
        }
    }

    /// The shape rule: the output type for the given operand types, checking
    /// operand count, ranks, channel counts and the shapes of the constants
    /// the op reads. The error is a message; callers add the node name.
    pub fn infer_type(
        &self,
        inputs: &[&TensorType],
        constants: &BTreeMap<String, Constant>,
    ) -> Result<TensorType, String> {
        let expect_arity = |n: usize| -> Result<(), String> {
            if inputs.len() == n {
                Ok(())
            } else {
                Err(format!(
                    "{} takes {n} operand(s), found {}",
                    self.mnemonic(),
                    inputs.len()
                ))
            }
        };
        let rank4 = |t: &TensorType| -> Result<(usize, usize, usize, usize), String> {
            t.nchw().ok_or_else(|| {
                format!(
                    "{} expects a rank-4 NCHW operand, found {t}",
                    self.mnemonic()
                )
            })
        };
        let check_const = |name: &str, want: &[usize]| -> Result<(), String> {
            match constants.get(name) {
                None => Err(format!("constant `{name}` is not declared")),
                Some(c) if c.shape != want => Err(format!(
                    "constant `{name}` has shape {:?}, expected {:?}",
                    c.shape, want
                )),
                Some(_) => Ok(()),
            }
        };
        let check_affine = |a: &ChannelAffine, c: usize| -> Result<(), String> {
            check_const(&a.scale, &[c])?;
            check_const(&a.shift, &[c])
        };
        match self {
            Op::Input => Err("input nodes have no operands to infer from".into()),
            Op::Conv2d(conv) => {
                expect_arity(1)?;
                let (n, c, h, w) = rank4(inputs[0])?;
                if let Some(p) = &conv.prologue {
                    check_affine(p, c)?;
                }
                let [kh, kw] = conv.kernel;
                check_const(&conv.weight, &[conv.out_channels, c, kh, kw])?;
                if let Some(b) = &conv.bias {
                    check_const(b, &[conv.out_channels])?;
                }
                let ho = window_out(h, kh, conv.stride[0], conv.padding[0])?;
                let wo = window_out(w, kw, conv.stride[1], conv.padding[1])?;
                if conv.out_channels == 0 {
                    return Err("conv2d with zero output channels".into());
                }
                Ok(TensorType {
                    dtype: inputs[0].dtype,
                    shape: vec![n, conv.out_channels, ho, wo],
                })
            }
            Op::BatchNorm(bn) => {
                expect_arity(1)?;
                let (_, c, _, _) = rank4(inputs[0])?;
                for name in [&bn.weight, &bn.bias, &bn.running_mean, &bn.running_var] {
                    check_const(name, &[c])?;
                }
                if !(bn.eps.is_finite() && bn.eps >= 0.0) {
                    return Err(format!(
                        "batch_norm eps must be finite and >= 0, found {}",
                        bn.eps
                    ));
                }
                Ok(inputs[0].clone())
            }
            Op::ChannelAffine(a) => {
                expect_arity(1)?;
                let (_, c, _, _) = rank4(inputs[0])?;
                check_affine(a, c)?;
                Ok(inputs[0].clone())
            }
            Op::Relu => {
                expect_arity(1)?;
                Ok(inputs[0].clone())
            }
            Op::Concat => {
                if inputs.is_empty() {
                    return Err("concat needs at least one operand".into());
                }
                let (n, _, h, w) = rank4(inputs[0])?;
                let mut channels = 0usize;
                for (i, t) in inputs.iter().enumerate() {
                    let (ni, ci, hi, wi) = rank4(t)?;
                    if (ni, hi, wi) != (n, h, w) || t.dtype != inputs[0].dtype {
                        return Err(format!(
                            "concat operand {i} is {t}, incompatible with operand 0 {}",
                            inputs[0]
                        ));
                    }
                    channels = channels
                        .checked_add(ci)
                        .ok_or("concat channel count overflows")?;
                }
                Ok(TensorType {
                    dtype: inputs[0].dtype,
                    shape: vec![n, channels, h, w],
                })
            }
            Op::AvgPool2d(p) | Op::MaxPool2d(p) => {
                expect_arity(1)?;
                let (n, c, h, w) = rank4(inputs[0])?;
                if let Some(a) = &p.prologue {
                    check_affine(a, c)?;
                }
                for i in 0..2 {
                    if p.padding[i] > p.kernel[i] / 2 {
                        return Err(format!(
                            "pool padding {:?} exceeds half the kernel {:?}",
                            p.padding, p.kernel
                        ));
                    }
                }
                let ho = window_out(h, p.kernel[0], p.stride[0], p.padding[0])?;
                let wo = window_out(w, p.kernel[1], p.stride[1], p.padding[1])?;
                Ok(TensorType {
                    dtype: inputs[0].dtype,
                    shape: vec![n, c, ho, wo],
                })
            }
            Op::GlobalAvgPool { prologue } => {
                expect_arity(1)?;
                let (n, c, h, w) = rank4(inputs[0])?;
                if h == 0 || w == 0 {
                    return Err("global_avg_pool over an empty spatial extent".into());
                }
                if let Some(a) = prologue {
                    check_affine(a, c)?;
                }
                Ok(TensorType {
                    dtype: inputs[0].dtype,
                    shape: vec![n, c, 1, 1],
                })
            }
            Op::Flatten => {
                expect_arity(1)?;
                let t = inputs[0];
                let Some((&n, rest)) = t.shape.split_first() else {
                    return Err("flatten of a rank-0 tensor".into());
                };
                let inner = rest
                    .iter()
                    .try_fold(1usize, |a, &d| a.checked_mul(d))
                    .ok_or("flatten size overflows")?;
                Ok(TensorType {
                    dtype: t.dtype,
                    shape: vec![n, inner],
                })
            }
            Op::Linear(l) => {
                expect_arity(1)?;
                let t = inputs[0];
                let &[n, i] = t.shape.as_slice() else {
                    return Err(format!("linear expects a rank-2 operand, found {t}"));
                };
                check_const(&l.weight, &[l.out_features, i])?;
                if let Some(b) = &l.bias {
                    check_const(b, &[l.out_features])?;
                }
                Ok(TensorType {
                    dtype: t.dtype,
                    shape: vec![n, l.out_features],
                })
            }
            Op::Head(h) => {
                expect_arity(1)?;
                let t = inputs[0];
                let &[_, c] = t.shape.as_slice() else {
                    return Err(format!(
                        "{} expects rank-2 [N, C] logits, found {t}",
                        self.mnemonic()
                    ));
                };
                if c == 0 {
                    return Err(format!("{} over zero classes", self.mnemonic()));
                }
                if let Head::SigmoidOpNorm { thresholds } = h {
                    check_const(thresholds, &[c])?;
                }
                Ok(t.clone())
            }
        }
    }
}

/// Output extent of a sliding window (`floor` mode), or an error if the
/// window does not fit even once.
pub fn window_out(
    input: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Result<usize, String> {
    if kernel == 0 || stride == 0 {
        return Err(format!(
            "kernel {kernel} and stride {stride} must be positive"
        ));
    }
    let padded = padding
        .checked_mul(2)
        .and_then(|p| p.checked_add(input))
        .ok_or("padded extent overflows")?;
    if padded < kernel || input == 0 {
        return Err(format!(
            "spatial extent {input} (padding {padding}) is smaller than the kernel {kernel}"
        ));
    }
    Ok((padded - kernel) / stride + 1)
}
