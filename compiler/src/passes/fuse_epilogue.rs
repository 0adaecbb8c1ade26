//! `fuse-epilogue`: a ReLU right after a convolution (or a standalone
//! `ChannelAffine`) becomes that op's ReLU epilogue.
//!
//! Rewrites `ReLU(Conv(x))` into `Conv[relu](x)` — after `fold-batchnorm`
//! this is torchvision's `conv0→relu0` and every `conv1→relu2`, the ReLU
//! applied after the (folded) bias — and `ReLU(ChannelAffine(x))` into
//! `ChannelAffine[relu](x)`.
//!
//! Guarantees: the same values; the producer keeps its name and position.
//! Leaves alone: a producer whose value has another user or is a graph
//! output, a producer that already has a ReLU, and ReLUs after other ops.

use super::rewrite::{rewrite, sole_user, Patch, Rule};
use super::{Pass, PassError};
use ir::{Graph, NodeId, Op};

#[derive(Debug, Clone, Copy)]
pub struct FuseEpilogue;

impl FuseEpilogue {
    pub const NAME: &'static str = "fuse-epilogue";
}

impl Pass for FuseEpilogue {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn run(&self, g: &mut Graph) -> Result<bool, PassError> {
        rewrite(g, &[&ReluEpilogueRule])
    }
}

struct ReluEpilogueRule;

impl Rule for ReluEpilogueRule {
    fn name(&self) -> &'static str {
        "relu-epilogue"
    }

    fn apply(&self, g: &Graph, id: NodeId) -> Result<Option<Patch>, PassError> {
        if !matches!(g.node(id).op, Op::Relu) {
            return Ok(None);
        }
        let &[p] = g.operands(id).as_slice() else {
            return Ok(None);
        };
        if sole_user(g, p) != Some(id) {
            return Ok(None);
        }
        let fused = match &g.node(p).op {
            Op::Conv2d(c) if !c.relu => {
                let mut c = c.clone();
                c.relu = true;
                Op::Conv2d(c)
            }
            Op::ChannelAffine(a) if !a.relu => {
                let mut a = a.clone();
                a.relu = true;
                Op::ChannelAffine(a)
            }
            _ => return Ok(None),
        };
        let mut patch = Patch::new();
        patch.set_op(p, fused).replace_uses(id, p);
        Ok(Some(patch))
    }
}
