//! The graph: nodes in a petgraph DAG, named constants, inputs and outputs.
//!
//! Edges run from producer to consumer and carry the operand position, so a
//! node's operands are ordered. Node names are unique; the schedule is a
//! deterministic topological order (Kahn's algorithm, lowest index first),
//! so printing, planning and execution agree on one order.

use crate::error::{IrError, Result};
use crate::ops::Op;
use crate::types::TensorType;
use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use petgraph::visit::EdgeRef;
use petgraph::Direction;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::sync::Arc;

pub type NodeId = NodeIndex<u32>;

/// A node: a unique name, the op and the type of the value it produces.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub name: String,
    pub op: Op,
    pub ty: TensorType,
}

/// A named f32 constant (a weight). `data` is `None` while the graph is only
/// a shape-level description (e.g. `densenetc inspect --arch`).
#[derive(Debug, Clone, PartialEq)]
pub struct Constant {
    pub shape: Vec<usize>,
    pub data: Option<Arc<Vec<f32>>>,
}

impl Constant {
    pub fn unbound(shape: impl Into<Vec<usize>>) -> Self {
        Constant {
            shape: shape.into(),
            data: None,
        }
    }

    pub fn with_data(shape: impl Into<Vec<usize>>, data: Vec<f32>) -> Self {
        Constant {
            shape: shape.into(),
            data: Some(Arc::new(data)),
        }
    }

    pub fn num_elements(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A DenseNet (or any) inference graph.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    pub name: String,
    dag: StableDiGraph<Node, usize>,
    pub constants: BTreeMap<String, Constant>,
    inputs: Vec<NodeId>,
    outputs: Vec<NodeId>,
}

impl Graph {
    pub fn new(name: impl Into<String>) -> Self {
        Graph {
            name: name.into(),
            ..Default::default()
        }
    }

    /// Declare a constant. Redeclaring a name is an error.
    pub fn add_constant(&mut self, name: impl Into<String>, constant: Constant) -> Result<()> {
        let name = name.into();
        if let Some(d) = &constant.data {
            if d.len() != constant.num_elements() {
                return Err(IrError::constant(
                    name,
                    format!("{} values for shape {:?}", d.len(), constant.shape),
                ));
            }
        }
        if self.constants.contains_key(&name) {
            return Err(IrError::constant(name, "declared twice"));
        }
        self.constants.insert(name, constant);
        Ok(())
    }

    /// Add a graph input of the given type.
    pub fn add_input(&mut self, name: impl Into<String>, ty: TensorType) -> Result<NodeId> {
        let name = name.into();
        self.check_fresh_name(&name)?;
        let id = self.dag.add_node(Node {
            name,
            op: Op::Input,
            ty,
        });
        self.inputs.push(id);
        Ok(id)
    }

    /// Add a node, inferring its type from its operands.
    pub fn add_node(
        &mut self,
        name: impl Into<String>,
        op: Op,
        operands: &[NodeId],
    ) -> Result<NodeId> {
        let name = name.into();
        self.check_fresh_name(&name)?;
        let ty = self.infer(&name, &op, operands)?;
        let id = self.dag.add_node(Node { name, op, ty });
        for (i, &o) in operands.iter().enumerate() {
            self.dag.add_edge(o, id, i);
        }
        Ok(id)
    }

    /// The type `op` would produce over `operands`, errors naming `name`.
    pub fn infer(&self, name: &str, op: &Op, operands: &[NodeId]) -> Result<TensorType> {
        let mut tys = Vec::with_capacity(operands.len());
        for &o in operands {
            let n = self
                .dag
                .node_weight(o)
                .ok_or_else(|| IrError::node(name, format!("operand {o:?} does not exist")))?;
            tys.push(&n.ty);
        }
        op.infer_type(&tys, &self.constants)
            .map_err(|m| IrError::node(name, m))
    }

    fn check_fresh_name(&self, name: &str) -> Result<()> {
        if name.is_empty() {
            return Err(IrError::Graph("empty node name".into()));
        }
        if self.node_by_name(name).is_some() {
            return Err(IrError::node(name, "a node with this name already exists"));
        }
        Ok(())
    }

    pub fn set_outputs(&mut self, outputs: Vec<NodeId>) {
        self.outputs = outputs;
    }

    pub fn inputs(&self) -> &[NodeId] {
        &self.inputs
    }

    pub fn outputs(&self) -> &[NodeId] {
        &self.outputs
    }

    /// The node `id`. Panics on a dangling id: ids come from this graph.
    pub fn node(&self, id: NodeId) -> &Node {
        &self.dag[id]
    }

    pub fn node_mut(&mut self, id: NodeId) -> &mut Node {
        &mut self.dag[id]
    }

    pub fn contains(&self, id: NodeId) -> bool {
        self.dag.contains_node(id)
    }

    pub fn node_count(&self) -> usize {
        self.dag.node_count()
    }

    /// All node ids in index order.
    pub fn node_ids(&self) -> Vec<NodeId> {
        self.dag.node_indices().collect()
    }

    pub fn node_by_name(&self, name: &str) -> Option<NodeId> {
        self.dag.node_indices().find(|&i| self.dag[i].name == name)
    }

    /// Operands of `id`, in operand order.
    pub fn operands(&self, id: NodeId) -> Vec<NodeId> {
        let mut e: Vec<(usize, NodeId)> = self
            .dag
            .edges_directed(id, Direction::Incoming)
            .map(|e| (*e.weight(), e.source()))
            .collect();
        e.sort();
        e.into_iter().map(|(_, n)| n).collect()
    }

    /// Distinct consumers of `id`, in index order.
    pub fn users(&self, id: NodeId) -> Vec<NodeId> {
        let set: BTreeSet<NodeId> = self
            .dag
            .edges_directed(id, Direction::Outgoing)
            .map(|e| e.target())
            .collect();
        set.into_iter().collect()
    }

    /// Replace the operands of `id` (its op and type are left alone; call
    /// [`Graph::retype`] if they change).
    pub fn set_operands(&mut self, id: NodeId, operands: &[NodeId]) {
        let old: Vec<_> = self
            .dag
            .edges_directed(id, Direction::Incoming)
            .map(|e| e.id())
            .collect();
        for e in old {
            self.dag.remove_edge(e);
        }
        for (i, &o) in operands.iter().enumerate() {
            self.dag.add_edge(o, id, i);
        }
    }

    /// Recompute the type of `id` from its operands; errors name the node.
    pub fn retype(&mut self, id: NodeId) -> Result<()> {
        let ops = self.operands(id);
        let node = &self.dag[id];
        if matches!(node.op, Op::Input) {
            return Ok(());
        }
        let ty = self.infer(&node.name, &node.op, &ops)?;
        self.dag[id].ty = ty;
        Ok(())
    }

    /// Make every use of `old` (operand edges and graph outputs) use `new`.
    pub fn replace_all_uses(&mut self, old: NodeId, new: NodeId) {
        let uses: Vec<_> = self
            .dag
            .edges_directed(old, Direction::Outgoing)
            .map(|e| (e.id(), e.target(), *e.weight()))
            .collect();
        for (e, target, pos) in uses {
            self.dag.remove_edge(e);
            self.dag.add_edge(new, target, pos);
        }
        for o in &mut self.outputs {
            if *o == old {
                *o = new;
            }
        }
    }

    /// Remove a node and its edges.
    pub fn remove_node(&mut self, id: NodeId) -> Option<Node> {
        self.inputs.retain(|&i| i != id);
        self.outputs.retain(|&i| i != id);
        self.dag.remove_node(id)
    }

    /// Remove nodes whose values reach no output, then constants no op
    /// reads. Graph inputs are kept. Returns whether anything was removed.
    pub fn remove_dead(&mut self) -> bool {
        let mut live: BTreeSet<NodeId> = BTreeSet::new();
        let mut stack: Vec<NodeId> = self.outputs.clone();
        while let Some(n) = stack.pop() {
            if live.insert(n) {
                stack.extend(self.operands(n));
            }
        }
        let dead: Vec<_> = self
            .dag
            .node_indices()
            .filter(|n| !live.contains(n) && !self.inputs.contains(n))
            .collect();
        let mut changed = !dead.is_empty();
        for n in dead {
            self.dag.remove_node(n);
        }
        let used: BTreeSet<String> = self
            .dag
            .node_weights()
            .flat_map(|n| n.op.constants().into_iter().map(str::to_owned))
            .collect();
        let before = self.constants.len();
        self.constants.retain(|k, _| used.contains(k));
        changed |= self.constants.len() != before;
        changed
    }

    /// A deterministic topological order of all nodes (Kahn's algorithm,
    /// lowest node index first among the ready nodes). Errors on a cycle.
    pub fn schedule(&self) -> Result<Vec<NodeId>> {
        let mut indeg: BTreeMap<NodeId, usize> = BTreeMap::new();
        for n in self.dag.node_indices() {
            indeg.insert(n, self.dag.edges_directed(n, Direction::Incoming).count());
        }
        let mut ready: BinaryHeap<Reverse<NodeId>> = indeg
            .iter()
            .filter(|(_, &d)| d == 0)
            .map(|(&n, _)| Reverse(n))
            .collect();
        let mut order = Vec::with_capacity(indeg.len());
        while let Some(Reverse(n)) = ready.pop() {
            order.push(n);
            for e in self.dag.edges_directed(n, Direction::Outgoing) {
                let d = indeg
                    .get_mut(&e.target())
                    .ok_or_else(|| IrError::Graph("edge to a missing node".into()))?;
                *d -= 1;
                if *d == 0 {
                    ready.push(Reverse(e.target()));
                }
            }
        }
        if order.len() != indeg.len() {
            return Err(IrError::Graph("the graph has a cycle".into()));
        }
        Ok(order)
    }

    /// Data of a bound constant.
    pub fn constant_data(&self, name: &str) -> Result<&Arc<Vec<f32>>> {
        let c = self
            .constants
            .get(name)
            .ok_or_else(|| IrError::constant(name, "not declared"))?;
        c.data
            .as_ref()
            .ok_or_else(|| IrError::constant(name, "has no data bound (no weights loaded)"))
    }

    /// A constant name not yet in use, derived from `base`.
    pub fn fresh_constant_name(&self, base: &str) -> String {
        if !self.constants.contains_key(base) {
            return base.to_owned();
        }
        (1..)
            .map(|i| format!("{base}.{i}"))
            .find(|n| !self.constants.contains_key(n))
            .unwrap_or_else(|| base.to_owned())
    }

    /// A node name not yet in use, derived from `base`.
    pub fn fresh_node_name(&self, base: &str) -> String {
        let taken: BTreeSet<&str> = self.dag.node_weights().map(|n| n.name.as_str()).collect();
        if !taken.contains(base) {
            return base.to_owned();
        }
        (1..)
            .map(|i| format!("{base}.{i}"))
            .find(|n| !taken.contains(n.as_str()))
            .unwrap_or_else(|| base.to_owned())
    }

    /// True when every declared constant has data.
    pub fn is_bound(&self) -> bool {
        self.constants.values().all(|c| c.data.is_some())
    }
}
