//! `fold-batchnorm`: a BatchNorm directly after a convolution folds into
//! the convolution's weights and bias.
//!
//! Rewrites `BN(Conv(x))` into `Conv'(x)` with, per output channel `o`,
//! `s = γ/√(var+ε)`, `W'[o] = W[o]·s`, `b'[o] = (b[o] − mean[o])·s + β[o]`
//! (`b = 0` for a conv without a bias), computed in f64 and stored as new
//! constants `<weight>.bnfold` / `<conv>.bias.bnfold`. In torchvision's
//! DenseNet this folds `conv0→norm0` and every `conv1→norm2`.
//!
//! Guarantees: the conv keeps its name, prologue and position; the values
//! are the same up to the f32 rounding of the folded constants; an unbound
//! graph folds to unbound constants of the same shapes.
//!
//! Leaves alone: a BN whose conv output has another user or is a graph
//! output (the other user needs the unnormalised value), a conv that
//! already has a ReLU epilogue (BN after ReLU is not affine in the conv's
//! output), and every other BN (`fuse-preactivation` takes those).

use super::affine::{bn_scale_shift, bound_data};
use super::rewrite::{rewrite, sole_user, Patch, Rule};
use super::{Pass, PassError};
use ir::ops::Conv2d;
use ir::{Constant, Graph, NodeId, Op};

#[derive(Debug, Clone, Copy)]
pub struct FoldBatchNorm;

impl FoldBatchNorm {
    pub const NAME: &'static str = "fold-batchnorm";
}

impl Pass for FoldBatchNorm {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn run(&self, g: &mut Graph) -> Result<bool, PassError> {
        rewrite(g, &[&FoldRule])
    }
}

struct FoldRule;

impl Rule for FoldRule {
    fn name(&self) -> &'static str {
        "conv-bn"
    }

    fn apply(&self, g: &Graph, id: NodeId) -> Result<Option<Patch>, PassError> {
        let Op::BatchNorm(bn) = &g.node(id).op else {
            return Ok(None);
        };
        let &[conv_id] = g.operands(id).as_slice() else {
            return Ok(None);
        };
        let Op::Conv2d(conv) = &g.node(conv_id).op else {
            return Ok(None);
        };
        if conv.relu || sole_user(g, conv_id) != Some(id) {
            return Ok(None);
        }
        let conv_name = &g.node(conv_id).name;
        let bn_name = &g.node(id).name;
        let o = conv.out_channels;
        let wshape = g
            .constants
            .get(&conv.weight)
            .map(|c| c.shape.clone())
            .ok_or_else(|| PassError::Constants {
                node: conv_name.clone(),
                message: format!("weight `{}` is not declared", conv.weight),
            })?;
        let per_out: usize = wshape.iter().skip(1).product();

        let mut patch = Patch::new();
        let (weight, bias) = match bn_scale_shift(g, bn_name, bn)? {
            None => {
                // Unbound: the conv's own constants must be unbound too.
                let mut names = vec![conv.weight.as_str()];
                names.extend(conv.bias.as_deref());
                if bound_data(g, conv_name, &names)?.is_some() {
                    return Err(PassError::Constants {
                        node: bn_name.clone(),
                        message: format!("BN is unbound but conv `{conv_name}` is bound"),
                    });
                }
                (Constant::unbound(wshape), Constant::unbound([o]))
            }
            Some(super::affine::ScaleShift { scale, shift }) => {
                let mut names = vec![conv.weight.as_str()];
                names.extend(conv.bias.as_deref());
                let Some(d) = bound_data(g, conv_name, &names)? else {
                    return Err(PassError::Constants {
                        node: bn_name.clone(),
                        message: format!("BN is bound but conv `{conv_name}` is not"),
                    });
                };
                let lengths_ok = scale.len() == o
                    && d[0].len() == o * per_out
                    && d.get(1).is_none_or(|b| b.len() == o);
                if !lengths_ok {
                    return Err(PassError::Constants {
                        node: bn_name.clone(),
                        message: format!("BN and conv `{conv_name}` disagree on {o} channels"),
                    });
                }
                let w: Vec<f32> = d[0]
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| (f64::from(v) * scale[i / per_out]) as f32)
                    .collect();
                let b: Vec<f32> = (0..o)
                    .map(|c| {
                        let b0 = d.get(1).map_or(0.0, |b| f64::from(b[c]));
                        (b0 * scale[c] + shift[c]) as f32
                    })
                    .collect();
                (Constant::with_data(wshape, w), Constant::with_data([o], b))
            }
        };
        let weight = patch.add_constant(g, &format!("{}.bnfold", conv.weight), weight);
        let bias = patch.add_constant(g, &format!("{conv_name}.bias.bnfold"), bias);
        patch
            .set_op(
                conv_id,
                Op::Conv2d(Conv2d {
                    weight,
                    bias: Some(bias),
                    ..conv.clone()
                }),
            )
            .replace_uses(id, conv_id);
        Ok(Some(patch))
    }
}
