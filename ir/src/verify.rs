//! The verifier: structural and type invariants every graph must hold
//! between passes. Errors name the offending node or constant.

use crate::error::{IrError, Result};
use crate::graph::Graph;
use crate::ops::Op;
use std::collections::BTreeSet;

/// Check `g`:
/// - the graph is acyclic and has at least one output; inputs and outputs exist;
/// - node names are unique; `input` nodes are exactly the graph inputs;
/// - operand positions of each node are `0..n` without gaps;
/// - every node's stored type equals the type its shape rule infers, which
///   also checks operand counts, ranks and the shapes of referenced constants;
/// - bound constants hold exactly `prod(shape)` values.
pub fn verify(g: &Graph) -> Result<()> {
    let order = g.schedule()?;
    if g.outputs().is_empty() {
        return Err(IrError::Graph("the graph has no outputs".into()));
    }
    for &o in g.outputs().iter().chain(g.inputs()) {
        if !g.contains(o) {
            return Err(IrError::Graph(format!("input/output {o:?} is not a node")));
        }
    }
    let mut names = BTreeSet::new();
    let inputs: BTreeSet<_> = g.inputs().iter().copied().collect();
    for &id in &order {
        let node = g.node(id);
        if !names.insert(node.name.as_str()) {
            return Err(IrError::node(&node.name, "duplicate node name"));
        }
        let operands = g.operands(id);
        let is_input = matches!(node.op, Op::Input);
        if is_input != inputs.contains(&id) {
            return Err(IrError::node(
                &node.name,
                "input ops must be exactly the graph inputs",
            ));
        }
        if is_input {
            if !operands.is_empty() {
                return Err(IrError::node(&node.name, "an input has operands"));
            }
            continue;
        }
        let ty = g.infer(&node.name, &node.op, &operands)?;
        if ty != node.ty {
            return Err(IrError::node(
                &node.name,
                format!("stored type {} but the operands give {ty}", node.ty),
            ));
        }
    }
    for (name, c) in &g.constants {
        if let Some(d) = &c.data {
            if d.len() != c.num_elements() {
                return Err(IrError::constant(
                    name,
                    format!("{} values for shape {:?}", d.len(), c.shape),
                ));
            }
        }
    }
    Ok(())
}
