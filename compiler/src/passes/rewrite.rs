//! The rewrite driver: local rules that match one node and return a
//! [`Patch`], applied by one loop to a fixpoint.
//!
//! A rule only reads the graph; the driver applies its patch, retypes what
//! the patch touched (and what depends on it), and after each sweep removes
//! dead nodes, constants and buffers. Nodes that are already dead (no users,
//! not an output) are not offered to the rules.

use super::PassError;
use ir::{Constant, Graph, IrError, NodeId, Op};
use std::collections::BTreeSet;

/// A local rewrite: look at `node` and say how to change the graph.
pub trait Rule: Sync {
    fn name(&self) -> &'static str;
    /// `Ok(None)` when the rule does not apply to `node`.
    fn apply(&self, g: &Graph, node: NodeId) -> Result<Option<Patch>, PassError>;
}

/// A set of edits, applied in this order: new constants, new ops, new
/// operand lists, renames (all at once, so names can be swapped), then
/// use replacements (operand edges and graph outputs).
#[derive(Debug, Default)]
pub struct Patch {
    constants: Vec<(String, Constant)>,
    ops: Vec<(NodeId, Op)>,
    operands: Vec<(NodeId, Vec<NodeId>)>,
    names: Vec<(NodeId, String)>,
    uses: Vec<(NodeId, NodeId)>,
}

impl Patch {
    pub fn new() -> Self {
        Patch::default()
    }

    /// Declare a constant under a fresh name derived from `base`; returns
    /// the name.
    pub fn add_constant(&mut self, g: &Graph, base: &str, c: Constant) -> String {
        let mut name = g.fresh_constant_name(base);
        let mut i = 1;
        while self.constants.iter().any(|(n, _)| *n == name) {
            name = g.fresh_constant_name(&format!("{base}.{i}"));
            i += 1;
        }
        self.constants.push((name.clone(), c));
        name
    }

    /// Give `node` a new op (its type is recomputed).
    pub fn set_op(&mut self, node: NodeId, op: Op) -> &mut Self {
        self.ops.push((node, op));
        self
    }

    /// Give `node` new operands (its type is recomputed).
    pub fn set_operands(&mut self, node: NodeId, operands: Vec<NodeId>) -> &mut Self {
        self.operands.push((node, operands));
        self
    }

    pub fn rename(&mut self, node: NodeId, name: String) -> &mut Self {
        self.names.push((node, name));
        self
    }

    /// Every remaining use of `old` (after the operand edits) uses `new`.
    pub fn replace_uses(&mut self, old: NodeId, new: NodeId) -> &mut Self {
        self.uses.push((old, new));
        self
    }

    /// Apply to `g`.
    pub fn apply(self, g: &mut Graph) -> Result<(), IrError> {
        let mut touched: BTreeSet<NodeId> = BTreeSet::new();
        for (name, c) in self.constants {
            g.add_constant(name, c)?;
        }
        for (id, op) in self.ops {
            g.node_mut(id).op = op;
            touched.insert(id);
        }
        for (id, operands) in self.operands {
            g.set_operands(id, &operands);
            touched.insert(id);
        }
        for (id, _) in &self.names {
            let tmp = g.fresh_node_name(&format!("{}.renaming", g.node(*id).name));
            g.rename_node(*id, tmp)?;
        }
        for (id, name) in self.names {
            if g.node_by_name(&name).is_some() {
                return Err(IrError::node(
                    name,
                    "a rename collides with an existing node",
                ));
            }
            g.rename_node(id, name)?;
        }
        for (old, new) in self.uses {
            touched.extend(g.users(old));
            g.replace_all_uses(old, new);
        }
        retype(g, &touched)
    }
}

/// Recompute the types of `touched` and of everything downstream whose
/// operand types changed.
///
/// Most patches keep every type (a fusion, a fold): then only the touched
/// nodes are retyped, a few at a time until they agree, without a schedule
/// of the whole graph (one per patch made the passes cubic in the layers of
/// a dense block, whose concatenations have quadratically many edges). Only
/// when a type changes does the whole downstream graph get retyped, in
/// schedule order.
fn retype(g: &mut Graph, touched: &BTreeSet<NodeId>) -> Result<(), IrError> {
    if touched.is_empty() {
        return Ok(());
    }
    let before: Vec<(NodeId, ir::TensorType)> = touched
        .iter()
        .map(|&id| (id, g.node(id).ty.clone()))
        .collect();
    // Touched nodes may feed each other: repeat until a round changes nothing.
    let mut error = None;
    for _ in 0..=touched.len() {
        error = None;
        let mut moved = false;
        for &id in touched {
            let ty = g.node(id).ty.clone();
            match g.retype(id) {
                Ok(()) => moved |= g.node(id).ty != ty,
                Err(e) => error = Some(e),
            }
        }
        if !moved {
            break;
        }
    }
    let changed: BTreeSet<NodeId> = before
        .iter()
        .filter(|(id, ty)| g.node(*id).ty != *ty)
        .map(|(id, _)| *id)
        .collect();
    if changed.is_empty() {
        return error.map_or(Ok(()), Err);
    }
    retype_downstream(g, touched, changed)
}

/// [`retype`] over the whole graph in schedule order; `changed` holds the
/// touched nodes whose type already changed.
fn retype_downstream(
    g: &mut Graph,
    touched: &BTreeSet<NodeId>,
    mut changed: BTreeSet<NodeId>,
) -> Result<(), IrError> {
    for id in g.schedule()? {
        let stale = touched.contains(&id) || g.operands(id).iter().any(|o| changed.contains(o));
        if stale {
            let before = g.node(id).ty.clone();
            g.retype(id)?;
            if g.node(id).ty != before {
                changed.insert(id);
            }
        }
    }
    Ok(())
}

/// Sweeps before the driver gives up (each sweep must make progress).
const MAX_SWEEPS: usize = 32;

/// Apply `rules` over `g` until none applies; returns whether anything
/// changed. Each sweep visits the nodes in schedule order and applies the
/// first rule that matches each live node.
pub fn rewrite(g: &mut Graph, rules: &[&dyn Rule]) -> Result<bool, PassError> {
    let mut changed = g.remove_dead();
    let mut fired: Vec<&'static str> = Vec::new();
    for _ in 0..MAX_SWEEPS {
        fired.clear();
        for id in g.schedule()? {
            if !is_live(g, id) {
                continue;
            }
            for rule in rules {
                if let Some(patch) = rule.apply(g, id)? {
                    patch.apply(g)?;
                    fired.push(rule.name());
                    break;
                }
            }
        }
        // A sweep where no rule fired left the graph as the last `remove_dead` did.
        if fired.is_empty() {
            return Ok(changed);
        }
        g.remove_dead();
        changed = true;
    }
    fired.sort_unstable();
    fired.dedup();
    Err(PassError::NoFixpoint {
        sweeps: MAX_SWEEPS,
        rules: fired.join(", "),
    })
}

/// A node whose value is still used.
pub fn is_live(g: &Graph, id: NodeId) -> bool {
    g.contains(id) && (g.has_users(id) || g.outputs().contains(&id))
}

/// `id` is a graph output.
pub fn is_output(g: &Graph, id: NodeId) -> bool {
    g.outputs().contains(&id)
}

/// The single consumer of `id`, when it has exactly one and is not a graph
/// output (so the value can disappear into that consumer).
pub fn sole_user(g: &Graph, id: NodeId) -> Option<NodeId> {
    match g.users(id).as_slice() {
        [u] if !is_output(g, id) && g.operands(*u).len() == 1 => Some(*u),
        _ => None,
    }
}
