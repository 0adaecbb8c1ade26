//! The reference executor: the executable definition of every op, and the
//! oracle every pass and backend is checked against.
//!
//! [`run`] verifies the graph, checks that every constant it reads is bound
//! and that the inputs match the graph's input types, then evaluates every
//! node in [`Graph::schedule`] order with plain loops, accumulating in f64
//! and rounding each node's result to f32 (as a PyTorch f32 model stores
//! it). A value is dropped as soon as its last consumer has run, so a
//! DenseNet-121 holds only a few activations at a time. Convolutions and
//! linear layers split their output channels over scoped threads; the
//! result does not depend on the thread count.
//!
//! Parity is measured with [`Tensor::rel_error`] (`||a - b||_inf /
//! ||b||_inf`); the project's bound is `1e-4`.

mod kernels;
pub mod npy;
mod tensor;

pub use tensor::Tensor;

use crate::error::{IrError, Result};
use crate::graph::{Graph, Node, NodeId};
use crate::ops::Op;
use crate::types::DType;
use std::collections::{BTreeSet, HashMap};

/// How to run. `threads == 0` means [`std::thread::available_parallelism`].
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub threads: usize,
}

/// Run `g` on `inputs` (one per graph input, in [`Graph::inputs`] order) and
/// return one tensor per graph output, in [`Graph::outputs`] order.
///
/// Errors (never panics) on a graph the verifier rejects, on unbound
/// constants, on a wrong number of inputs and on an input whose shape is
/// not the graph's.
pub fn run(g: &Graph, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
    run_with(g, inputs, &Options::default(), &mut |_, _| {})
}

/// [`run`] with options, calling `observe(node, value)` on every node's
/// value right after it is computed (inputs included), e.g. to find the
/// first node where a backend diverges.
pub fn run_with(
    g: &Graph,
    inputs: &[Tensor],
    options: &Options,
    observe: &mut dyn FnMut(&Node, &Tensor),
) -> Result<Vec<Tensor>> {
    crate::verify::verify(g)?;
    let order = g.schedule()?;
    check_runnable(g, &order)?;
    check_inputs(g, inputs)?;
    let threads = match options.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        t => t,
    };

    // Remaining consumers of each value; graph outputs count as one more.
    let mut remaining: HashMap<NodeId, usize> =
        order.iter().map(|&id| (id, g.users(id).len())).collect();
    for o in g.outputs() {
        *remaining.entry(*o).or_default() += 1;
    }
    let mut values: HashMap<NodeId, Tensor> = HashMap::new();
    for &id in &order {
        let node = g.node(id);
        let operands: Vec<NodeId> = g.operands(id);
        let value = if matches!(node.op, Op::Input) {
            let pos = g
                .inputs()
                .iter()
                .position(|&i| i == id)
                .ok_or_else(|| IrError::node(&node.name, "input node is not a graph input"))?;
            inputs
                .get(pos)
                .cloned()
                .ok_or_else(|| IrError::node(&node.name, "no tensor given for this input"))?
        } else {
            let mut args = Vec::with_capacity(operands.len());
            for o in &operands {
                args.push(values.get(o).ok_or_else(|| {
                    IrError::node(
                        &node.name,
                        format!("operand `{}` has no value", g.node(*o).name),
                    )
                })?);
            }
            kernels::eval(g, node, &args, threads)?
        };
        if value.shape != node.ty.shape {
            return Err(IrError::node(
                &node.name,
                format!(
                    "computed shape {:?} but the node's type is {}",
                    value.shape, node.ty
                ),
            ));
        }
        observe(node, &value);
        let distinct: BTreeSet<NodeId> = operands.into_iter().collect();
        for o in distinct {
            if let Some(r) = remaining.get_mut(&o) {
                *r = r.saturating_sub(1);
                if *r == 0 {
                    values.remove(&o);
                }
            }
        }
        if remaining.get(&id).copied().unwrap_or(0) > 0 {
            values.insert(id, value);
        }
    }
    g.outputs()
        .iter()
        .map(|o| {
            values
                .get(o)
                .cloned()
                .ok_or_else(|| IrError::node(&g.node(*o).name, "output has no value"))
        })
        .collect()
}

/// Every value is f32 and every constant an op reads has data.
fn check_runnable(g: &Graph, order: &[NodeId]) -> Result<()> {
    for &id in order {
        let node = g.node(id);
        if node.ty.dtype != DType::F32 {
            return Err(IrError::node(
                &node.name,
                format!(
                    "the reference executor runs f32 only, the node is {}",
                    node.ty
                ),
            ));
        }
        for name in node.op.constants() {
            g.constant_data(name).map_err(|e| match e {
                IrError::Constant { name, message } => IrError::Constant {
                    name,
                    message: format!("{message} (read by node `{}`)", node.name),
                },
                other => other,
            })?;
        }
    }
    Ok(())
}

/// One tensor per graph input, each of the input's exact shape.
fn check_inputs(g: &Graph, inputs: &[Tensor]) -> Result<()> {
    if inputs.len() != g.inputs().len() {
        let names: Vec<&str> = g
            .inputs()
            .iter()
            .map(|&i| g.node(i).name.as_str())
            .collect();
        return Err(IrError::Exec(format!(
            "the graph has {} input(s) {names:?}, {} tensor(s) given",
            names.len(),
            inputs.len()
        )));
    }
    for (&id, t) in g.inputs().iter().zip(inputs) {
        let node = g.node(id);
        if t.shape != node.ty.shape {
            return Err(IrError::node(
                &node.name,
                format!(
                    "input of shape {:?} given, the graph expects {:?}",
                    t.shape, node.ty.shape
                ),
            ));
        }
        if t.data.len() != tensor::checked_numel(&t.shape)? {
            return Err(IrError::node(
                &node.name,
                format!("input has {} values for shape {:?}", t.data.len(), t.shape),
            ));
        }
    }
    Ok(())
}
