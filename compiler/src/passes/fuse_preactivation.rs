//! `fuse-preactivation`: a BatchNorm (and the ReLU right after it) becomes
//! a per-channel affine(+ReLU) prologue of each conv or pool that reads it.
//!
//! Rewrites `Consumer(ReLU(BN(x)))` into `Consumer[prologue = affine+relu](x)`
//! for every consumer that is a conv, average or max pool or global average
//! pool without a prologue (torchvision's `norm1/relu1` of every layer, the
//! transitions' `norm/relu` and `norm5/relu5`). A BN without a ReLU gives a
//! prologue without one. Several consumers each get the prologue (sharing
//! the `<bn>.scale` / `<bn>.shift` constants).
//!
//! The prologue applies to the consumer's real input pixels only, never to
//! its padding: PyTorch pads the BN/ReLU output with zeros (a conv, an
//! average pool) or -inf (a max pool), which is what the fused consumer
//! pads its transformed input with.
//!
//! Any other user of the BN (or ReLU) value, or the value being a graph
//! output, keeps a standalone `ChannelAffine` node (ReLU fused when the BN
//! fed only that ReLU). So after this pass no `BatchNorm` op is left.
//! Leaves alone: ReLUs not after a BN (`fuse-epilogue`), and consumers that
//! already have a prologue (they read the `ChannelAffine` node).

use super::affine::bn_to_affine;
use super::rewrite::{is_output, rewrite, Patch, Rule};
use super::{Pass, PassError};
use ir::ops::ChannelAffine;
use ir::{Graph, NodeId, Op};

#[derive(Debug, Clone, Copy)]
pub struct FusePreactivation;

impl FusePreactivation {
    pub const NAME: &'static str = "fuse-preactivation";
}

impl Pass for FusePreactivation {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn run(&self, g: &mut Graph) -> Result<bool, PassError> {
        rewrite(g, &[&PreactivationRule])
    }
}

struct PreactivationRule;

impl Rule for PreactivationRule {
    fn name(&self) -> &'static str {
        "bn-relu-prologue"
    }

    fn apply(&self, g: &Graph, id: NodeId) -> Result<Option<Patch>, PassError> {
        let node = g.node(id);
        let Op::BatchNorm(bn) = &node.op else {
            return Ok(None);
        };
        let &[x] = g.operands(id).as_slice() else {
            return Ok(None);
        };
        let channels = node.ty.nchw().map_or(0, |t| t.1);
        // The value the consumers see: the ReLU's when the BN feeds only it.
        let (tail, relu) = match g.users(id).as_slice() {
            [r] if !is_output(g, id) && matches!(g.node(*r).op, Op::Relu) => (*r, true),
            _ => (id, false),
        };
        let mut patch = Patch::new();
        let affine = bn_to_affine(g, &mut patch, &node.name, bn, channels, relu)?;
        let mut keep_node = is_output(g, tail);
        for u in g.users(tail) {
            match with_prologue(&g.node(u).op, &affine) {
                Some(op) if g.operands(u).len() == 1 => {
                    patch.set_op(u, op).set_operands(u, vec![x]);
                }
                _ => keep_node = true,
            }
        }
        if keep_node {
            patch.set_op(id, Op::ChannelAffine(affine));
            if tail != id {
                patch.replace_uses(tail, id);
            }
        }
        Ok(Some(patch))
    }
}

/// `op` with `affine` as its prologue, when it can take one.
fn with_prologue(op: &Op, affine: &ChannelAffine) -> Option<Op> {
    let p = Some(affine.clone());
    match op {
        Op::Conv2d(c) if c.prologue.is_none() => {
            let mut c = c.clone();
            c.prologue = p;
            Some(Op::Conv2d(c))
        }
        Op::AvgPool2d(q) if q.prologue.is_none() => {
            let mut q = q.clone();
            q.prologue = p;
            Some(Op::AvgPool2d(q))
        }
        Op::MaxPool2d(q) if q.prologue.is_none() => {
            let mut q = q.clone();
            q.prologue = p;
            Some(Op::MaxPool2d(q))
        }
        Op::GlobalAvgPool { prologue: None } => Some(Op::GlobalAvgPool { prologue: p }),
        _ => None,
    }
}
