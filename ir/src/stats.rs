//! Model statistics: parameter count, multiply-accumulates, layer counts.
//!
//! Counting follows torchvision / fvcore conventions: parameters are conv,
//! BatchNorm affine and linear weights and biases (BatchNorm running
//! statistics are buffers, not parameters); MACs are those of convolutions
//! and linear layers only.

use crate::graph::Graph;
use crate::ops::Op;
use serde::Serialize;
use std::collections::BTreeSet;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub struct GraphStats {
    pub params: u64,
    pub macs: u64,
    pub conv_layers: u64,
    pub linear_layers: u64,
}

/// Statistics of `g`. Saturates instead of overflowing.
pub fn stats(g: &Graph) -> GraphStats {
    let mut s = GraphStats::default();
    let mut counted: BTreeSet<String> = BTreeSet::new();
    let mut count = |s: &mut GraphStats, name: &str| {
        if counted.insert(name.to_owned()) {
            if let Some(c) = g.constants.get(name) {
                s.params = s.params.saturating_add(c.num_elements() as u64);
            }
        }
    };
    for id in g.node_ids() {
        let node = g.node(id);
        let operands = g.operands(id);
        match &node.op {
            Op::Conv2d(c) => {
                s.conv_layers += 1;
                count(&mut s, &c.weight);
                if let Some(b) = &c.bias {
                    count(&mut s, b);
                }
                let cin = operands
                    .first()
                    .and_then(|&o| g.node(o).ty.nchw())
                    .map_or(0, |t| t.1) as u64;
                let out = node.ty.num_elements().unwrap_or(usize::MAX) as u64;
                let k = (c.kernel[0] * c.kernel[1]) as u64;
                s.macs = s
                    .macs
                    .saturating_add(out.saturating_mul(cin).saturating_mul(k));
            }
            Op::BatchNorm(b) => {
                count(&mut s, &b.weight);
                count(&mut s, &b.bias);
            }
            Op::Linear(l) => {
                s.linear_layers += 1;
                count(&mut s, &l.weight);
                if let Some(b) = &l.bias {
                    count(&mut s, b);
                }
                let fin = operands
                    .first()
                    .and_then(|&o| g.node(o).ty.shape.get(1).copied())
                    .unwrap_or(0) as u64;
                let out = node.ty.num_elements().unwrap_or(usize::MAX) as u64;
                s.macs = s.macs.saturating_add(out.saturating_mul(fin));
            }
            _ => {}
        }
    }
    s
}
