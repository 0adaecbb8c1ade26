//! From a memory-planned graph to the kernel list every backend compiles.
//!
//! Each node becomes one [`KernelDesc`] reading its operand's view and
//! writing its own ([`View::of_value`]). Concatenations that are views
//! (`ir::Graph::is_view`) and flattens whose output aliases their operand
//! write nothing; a flatten into a buffer of its own is an identity copy.
//! Graph inputs are not placed by the memory plan (the caller owns them):
//! they get dense NHWC storage after the planned arena, 64-byte aligned.

use super::kernel::{Affine, KernelDesc, KernelOp, View};
use super::BackendError;
use ir::{Graph, Op};
use std::sync::Arc;

/// The kernels of a planned graph and where its inputs and outputs live.
#[derive(Debug, Clone)]
pub struct GraphKernels {
    /// In schedule order.
    pub kernels: Vec<KernelDesc>,
    /// One per graph input: dense NHWC, after the planned arena.
    pub inputs: Vec<View>,
    /// One per graph output (a rank-2 `[N, C]` output is `[N, 1, 1, C]`).
    pub outputs: Vec<View>,
    /// Arena bytes including the inputs.
    pub arena_bytes: usize,
}

fn err(node: &str, message: impl Into<String>) -> BackendError {
    BackendError::Graph {
        node: node.to_string(),
        message: message.into(),
    }
}

/// Map every node of `g` (after `plan-memory`) to its kernel.
pub fn kernels_of(g: &Graph) -> Result<GraphKernels, BackendError> {
    let planned = g
        .arena_bytes
        .ok_or_else(|| err(&g.name, "the graph has no memory plan"))?;
    let mut next = planned.div_ceil(64) * 64;
    let mut inputs = Vec::new();
    for &id in g.inputs() {
        let node = g.node(id);
        let (n, c, h, w) = node
            .ty
            .nchw()
            .ok_or_else(|| err(&node.name, format!("input of type {} is not NCHW", node.ty)))?;
        let v = View::dense(next, n, h, w, c);
        next = v.end_bytes().div_ceil(64) * 64;
        inputs.push(v);
    }
    let view = |id| match g.inputs().iter().position(|&i| i == id) {
        Some(k) => Ok(inputs[k]),
        None => View::of_value(g, id).map_err(|m| err(&g.node(id).name, m)),
    };
    let mut kernels = Vec::new();
    // The node of each kernel.
    let mut nodes = Vec::new();
    for id in g.schedule().map_err(|e| err(&g.name, e.to_string()))? {
        let node = g.node(id);
        match &node.op {
            Op::Input => continue,
            Op::Concat if g.is_view(id) => continue,
            Op::Concat => {
                return Err(err(
                    &node.name,
                    "a concatenation that copies (not in place)",
                ));
            }
            _ => {}
        }
        let &[operand] = g.operands(id).as_slice() else {
            return Err(err(&node.name, "expected one operand"));
        };
        let (input, output) = (view(operand)?, view(id)?);
        if matches!(node.op, Op::Flatten) {
            if input.h * input.w != 1 {
                return Err(err(&node.name, "flatten of a value with spatial extent"));
            }
            if input != output {
                kernels.push(KernelDesc {
                    name: node.name.clone(),
                    op: KernelOp::Affine(Affine {
                        scale: Arc::new(vec![1.0; input.channels]),
                        shift: Arc::new(vec![0.0; input.channels]),
                        relu: false,
                    }),
                    input,
                    output,
                    output_to_next_only: false,
                });
                nodes.push(id);
            }
            continue;
        }
        let k = KernelDesc::from_ir(&node.name, &node.op, &g.constants, input, output)
            .map_err(|m| err(&node.name, m))?;
        kernels.push(k);
        nodes.push(id);
    }
    // Which outputs only the next kernel reads (`KernelDesc::output_to_next_only`).
    for i in 0..kernels.len().saturating_sub(1) {
        let id = nodes[i];
        kernels[i].output_to_next_only =
            g.users(id) == [nodes[i + 1]] && !g.outputs().contains(&id);
    }
    let outputs = g
        .outputs()
        .iter()
        .map(|&o| view(o))
        .collect::<Result<_, _>>()?;
    Ok(GraphKernels {
        kernels,
        inputs,
        outputs,
        arena_bytes: next,
    })
}
