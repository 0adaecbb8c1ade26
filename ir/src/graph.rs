//! The graph: nodes in a petgraph DAG, named constants, inputs and outputs.
//!
//! Edges run from producer to consumer and carry the operand position, so a
//! node's operands are ordered. Node names are unique; the schedule is a
//! deterministic topological order (Kahn's algorithm, lowest index first),
//! so printing, planning and execution agree on one order. Names are indexed
//! (a hash map kept by every method that adds, removes or renames a node), so
//! looking one up or checking that one is fresh costs O(1), not a scan: a
//! builder adds nodes one by one and checks each name.
//!
//! Storage is described here too, independently of any backend: a node may
//! be *placed* in a channel slice of a named [`Buffer`] (the in-place
//! concatenation of a dense block), and once memory is planned every buffer
//! has a byte offset in one arena of [`Graph::arena_bytes`] bytes.

pub use crate::constant::Constant;
use crate::error::{IrError, Result};
use crate::ops::Op;
use crate::types::TensorType;
use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use petgraph::visit::{EdgeRef, IntoEdgeReferences};
use petgraph::Direction;
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet};
use std::sync::{Arc, OnceLock};

pub type NodeId = NodeIndex<u32>;

/// A node: a unique name, the op, the type of the value it produces and,
/// optionally, where that value is stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub name: String,
    pub op: Op,
    pub ty: TensorType,
    /// `None`: the value is a tensor of its own (until memory planning gives
    /// it a buffer). Graph inputs are owned by the caller and never placed.
    pub placement: Option<Placement>,
}

/// Where a node's value lives: channels `channel_offset ..
/// channel_offset + C` of buffer `buffer` (same N, H, W and dtype); a value
/// of another rank fills a buffer of exactly its type at offset 0.
///
/// A node placed in a buffer writes only its own channel slice. A
/// [`Op::Concat`] whose operands sit back to back in its own slice of the
/// same buffer writes nothing: it is a *view* (see [`Graph::is_view`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Placement {
    pub buffer: String,
    pub channel_offset: usize,
}

/// A named activation buffer: a logical tensor, usually `[N, C, H, W]`,
/// that several nodes may share by channel slices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Buffer {
    /// Logical type of the whole buffer, border excluded.
    pub ty: TensorType,
    /// `[rows, cols]` of zeros stored around every image (above and below,
    /// left and right), so a consumer with padding up to the border needs
    /// no bounds checks. The writers of the buffer store these zeros.
    pub border: [usize; 2],
    /// Byte offset in the arena, once memory is planned.
    pub offset: Option<usize>,
}

impl Buffer {
    /// An unplanned buffer of type `ty` without a border.
    pub fn new(ty: TensorType) -> Self {
        Buffer {
            ty,
            border: [0, 0],
            offset: None,
        }
    }

    /// Bytes of storage, border included; `None` on overflow, or for a
    /// border on a type that is not rank 4.
    pub fn size_bytes(&self) -> Option<usize> {
        if self.border == [0, 0] {
            return self.ty.size_bytes();
        }
        let (n, c, h, w) = self.ty.nchw()?;
        let h = h.checked_add(self.border[0].checked_mul(2)?)?;
        let w = w.checked_add(self.border[1].checked_mul(2)?)?;
        [n, c, h, w, self.ty.dtype.size_bytes()]
            .into_iter()
            .try_fold(1usize, |a, d| a.checked_mul(d))
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
    /// Declared buffers, by name (see [`Placement`]).
    pub buffers: BTreeMap<String, Buffer>,
    /// Size of the activation arena once memory is planned: every buffer
    /// then has an offset and every non-input node a placement.
    pub arena_bytes: Option<usize>,
    /// Node ids by name. Kept by `add_*`, `remove_*` and [`Graph::rename_node`]; a name
    /// changed through [`Graph::node_mut`] is not seen (the verifier reports it).
    by_name: HashMap<String, NodeId>,
    /// The schedule, once computed, until a node or an edge is added or removed (every
    /// such change goes through a method here, which drops it): the passes, the verifier
    /// and the memory planner ask for it many times over an unchanged graph.
    schedule: OnceLock<Vec<NodeId>>,
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
            name: name.clone(),
            op: Op::Input,
            ty,
            placement: None,
        });
        self.by_name.insert(name, id);
        self.schedule.take();
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
        let id = self.dag.add_node(Node {
            name: name.clone(),
            op,
            ty,
            placement: None,
        });
        self.by_name.insert(name, id);
        self.schedule.take();
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

    /// The node `id`, to change its op, type or placement; rename with
    /// [`Graph::rename_node`], which keeps the name index.
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

    /// The node named `name` (O(1): the name index).
    pub fn node_by_name(&self, name: &str) -> Option<NodeId> {
        self.by_name
            .get(name)
            .copied()
            .filter(|&id| self.dag.node_weight(id).is_some_and(|n| n.name == name))
    }

    /// Rename `id` to `name`, which must be fresh (a node may keep its own name).
    pub fn rename_node(&mut self, id: NodeId, name: impl Into<String>) -> Result<()> {
        let name = name.into();
        if self.dag[id].name == name {
            return Ok(());
        }
        self.check_fresh_name(&name)?;
        let old = std::mem::replace(&mut self.dag[id].name, name.clone());
        if self.by_name.get(&old) == Some(&id) {
            self.by_name.remove(&old);
        }
        self.by_name.insert(name, id);
        Ok(())
    }

    /// Whether the name index agrees with the nodes' names (the verifier's check that no
    /// node was renamed behind the index's back).
    pub fn names_indexed(&self) -> bool {
        self.by_name.len() == self.dag.node_count()
            && self
                .dag
                .node_indices()
                .all(|id| self.by_name.get(&self.dag[id].name) == Some(&id))
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

    /// Whether any node uses `id` (cheaper than [`Graph::users`]: a value of a
    /// dense block has as many users as the block has layers after it).
    pub fn has_users(&self, id: NodeId) -> bool {
        self.dag
            .edges_directed(id, Direction::Outgoing)
            .next()
            .is_some()
    }

    /// The consumer of each use of `id`, in no particular order (a consumer that reads `id`
    /// twice appears twice); [`Graph::users`] without the set and the allocation.
    pub fn user_edges(&self, id: NodeId) -> impl Iterator<Item = NodeId> + '_ {
        self.dag
            .edges_directed(id, Direction::Outgoing)
            .map(|e| e.target())
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
        self.schedule.take();
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
        self.schedule.take();
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
        let node = self.dag.remove_node(id)?;
        self.schedule.take();
        self.unindex(&node.name, id);
        Some(node)
    }

    fn unindex(&mut self, name: &str, id: NodeId) {
        if self.by_name.get(name) == Some(&id) {
            self.by_name.remove(name);
        }
    }

    /// Remove nodes whose values reach no output, then constants no op
    /// reads and buffers no node is placed in. Graph inputs are kept.
    /// Returns whether anything was removed.
    pub fn remove_dead(&mut self) -> bool {
        // Liveness by node index; operands in any order (no sort, no set: a dense block's
        // concatenations have quadratically many edges).
        let mut live = vec![false; self.index_bound()];
        let mut stack: Vec<NodeId> = self.outputs.clone();
        while let Some(n) = stack.pop() {
            if let Some(l) = live.get_mut(n.index()).filter(|l| !**l) {
                *l = true;
                stack.extend(self.dag.neighbors_directed(n, Direction::Incoming));
            }
        }
        let dead: Vec<_> = self
            .dag
            .node_indices()
            .filter(|n| !live[n.index()] && !self.inputs.contains(n))
            .collect();
        let mut changed = !dead.is_empty();
        for n in dead {
            if let Some(node) = self.dag.remove_node(n) {
                self.unindex(&node.name, n);
            }
            self.schedule.take();
        }
        // Borrowed names in hash sets: no copy of every name on every call.
        let used: HashSet<&str> = self
            .dag
            .node_weights()
            .flat_map(|n| n.op.constants())
            .collect();
        let before = self.constants.len();
        self.constants.retain(|k, _| used.contains(k.as_str()));
        changed |= self.constants.len() != before;
        let placed: HashSet<&str> = self
            .dag
            .node_weights()
            .filter_map(|n| n.placement.as_ref().map(|p| p.buffer.as_str()))
            .collect();
        let before = self.buffers.len();
        self.buffers.retain(|k, _| placed.contains(k.as_str()));
        changed |= self.buffers.len() != before;
        changed
    }

    /// True when `id` is a concatenation that writes nothing: it is placed
    /// at `(B, o)` and its operands are placed in `B` back to back from `o`.
    pub fn is_view(&self, id: NodeId) -> bool {
        let node = &self.dag[id];
        let (Op::Concat, Some(p)) = (&node.op, &node.placement) else {
            return false;
        };
        let mut at = p.channel_offset;
        for o in self.operands(id) {
            let operand = &self.dag[o];
            match (&operand.placement, operand.ty.nchw()) {
                (Some(q), Some((_, c, _, _))) if q.buffer == p.buffer && q.channel_offset == at => {
                    at += c;
                }
                _ => return false,
            }
        }
        true
    }

    /// A buffer name not yet in use, derived from `base`.
    pub fn fresh_buffer_name(&self, base: &str) -> String {
        if !self.buffers.contains_key(base) {
            return base.to_owned();
        }
        (1..)
            .map(|i| format!("{base}.{i}"))
            .find(|n| !self.buffers.contains_key(n))
            .unwrap_or_else(|| base.to_owned())
    }

    /// One more than the largest node index (node indices are below it).
    fn index_bound(&self) -> usize {
        self.dag
            .node_indices()
            .map(|n| n.index() + 1)
            .max()
            .unwrap_or(0)
    }

    /// A deterministic topological order of all nodes (Kahn's algorithm,
    /// lowest node index first among the ready nodes). Errors on a cycle.
    /// Computed once per shape of the graph (see the `schedule` field).
    pub fn schedule(&self) -> Result<Vec<NodeId>> {
        if let Some(order) = self.schedule.get() {
            return Ok(order.clone());
        }
        let order = self.kahn()?;
        // Another thread may have set it meanwhile, to the same order.
        let _ = self.schedule.set(order.clone());
        Ok(order)
    }

    fn kahn(&self) -> Result<Vec<NodeId>> {
        // In-degrees by node index (a vector, not a map: this runs after every pass, over
        // edges that grow with the square of a dense block's layers).
        // Counted in one sequential walk over the edge storage.
        let mut indeg = vec![0usize; self.index_bound()];
        for e in self.dag.edge_references() {
            indeg[e.target().index()] += 1;
        }
        let nodes = self.dag.node_count();
        let mut ready: BinaryHeap<Reverse<NodeId>> = self
            .dag
            .node_indices()
            .filter(|n| indeg[n.index()] == 0)
            .map(Reverse)
            .collect();
        let mut order = Vec::with_capacity(nodes);
        while let Some(Reverse(n)) = ready.pop() {
            order.push(n);
            for e in self.dag.edges_directed(n, Direction::Outgoing) {
                let d = indeg
                    .get_mut(e.target().index())
                    .ok_or_else(|| IrError::Graph("edge to a missing node".into()))?;
                *d -= 1;
                if *d == 0 {
                    ready.push(Reverse(e.target()));
                }
            }
        }
        if order.len() != nodes {
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
        if self.node_by_name(base).is_none() {
            return base.to_owned();
        }
        (1..)
            .map(|i| format!("{base}.{i}"))
            .find(|n| self.node_by_name(n).is_none())
            .unwrap_or_else(|| base.to_owned())
    }

    /// True when every declared constant has data.
    pub fn is_bound(&self) -> bool {
        self.constants.values().all(|c| c.data.is_some())
    }
}
