//! Run a planned graph inside one arena at the planned offsets, so a memory
//! plan is tested by execution, not only by [`crate::memory::check`].
//!
//! Every non-input value lives in one `f32` arena of
//! [`ir::Graph::arena_bytes`] bytes, in the physical layout the backends
//! use: NHWC (channels innermost), a buffer of `C` channels and border
//! `[bh, bw]` storing element `(n, c, h, w)` at
//! `((n·(H+2bh) + h+bh)·(W+2bw) + w+bw)·C + c`; other ranks row-major. A
//! node placed at channel `o` of a buffer writes only channels `o..o+C`
//! (and, for a bordered buffer, zeros in its slice of the border); a
//! concatenation that is a view writes nothing; a conv without a prologue
//! whose operand's buffer has a border at least its padding reads that
//! border instead of padding (so a border that is not zero shows).
//!
//! The arena starts as NaN, and every buffer is filled with NaN again right
//! after its last reader (its lifetime recomputed here from the schedule),
//! so reading a value that was never written, was overwritten, or is read
//! after its buffer was declared dead gives NaN or a wrong number and fails
//! the comparison with the reference. Op semantics are `ir::reference`'s:
//! each node runs as a one-op graph through [`ir::reference::run`].
//! The plan is deliberately not checked first.

use ir::reference::{self, Tensor};
use ir::{Buffer, Graph, IrError, NodeId, Op};
use std::collections::BTreeMap;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ExecError {
    #[error("the graph has no memory plan (run `plan-memory` first)")]
    NotPlanned,
    #[error("expected {expected} input tensor(s), found {found}")]
    InputCount { expected: usize, found: usize },
    #[error("input `{name}` has shape {found:?}, expected {expected:?}")]
    InputShape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("node `{node}`: {message}")]
    Storage { node: String, message: String },
    #[error(transparent)]
    Ir(#[from] IrError),
}

/// Run `g` (after `plan-memory`) on `inputs`, one tensor per graph input;
/// returns one tensor per graph output.
pub fn run_planned(g: &Graph, inputs: &[Tensor]) -> Result<Vec<Tensor>, ExecError> {
    ir::verify::verify(g)?;
    let arena_bytes = g.arena_bytes.ok_or(ExecError::NotPlanned)?;
    if inputs.len() != g.inputs().len() {
        return Err(ExecError::InputCount {
            expected: g.inputs().len(),
            found: inputs.len(),
        });
    }
    let mut given: BTreeMap<NodeId, &Tensor> = BTreeMap::new();
    for (&id, t) in g.inputs().iter().zip(inputs) {
        let node = g.node(id);
        if t.shape != node.ty.shape || t.data.len() != t.shape.iter().product::<usize>() {
            return Err(ExecError::InputShape {
                name: node.name.clone(),
                expected: node.ty.shape.clone(),
                found: t.shape.clone(),
            });
        }
        given.insert(id, t);
    }
    let order = g.schedule()?;
    let last_use = buffer_last_use(g, &order);
    let output_buffers: std::collections::BTreeSet<&str> = g
        .outputs()
        .iter()
        .filter_map(|&o| g.node(o).placement.as_ref().map(|p| p.buffer.as_str()))
        .collect();
    let mut arena = Arena {
        data: vec![f32::NAN; arena_bytes / 4],
    };
    for (step, &id) in order.iter().enumerate() {
        let node = g.node(id);
        if matches!(node.op, Op::Input) || g.is_view(id) {
            continue;
        }
        let halo = match &node.op {
            Op::Conv2d(c) if c.prologue.is_none() => c.padding,
            _ => [0, 0],
        };
        let operands = g.operands(id);
        let mut args = Vec::with_capacity(operands.len());
        let mut used_halo = false;
        for &o in &operands {
            if let Some(t) = given.get(&o) {
                args.push((*t).clone());
                continue;
            }
            let (buf, off) = location(g, o)?;
            let h = if operands.len() == 1
                && halo != [0, 0]
                && buf.border[0] >= halo[0]
                && buf.border[1] >= halo[1]
            {
                used_halo = true;
                halo
            } else {
                [0, 0]
            };
            args.push(arena.read(g, o, buf, off, h)?);
        }
        let mut op = node.op.clone();
        if let (true, Op::Conv2d(c)) = (used_halo, &mut op) {
            c.padding = [0, 0];
        }
        let value = eval(g, &node.name, op, &args)?;
        let (buf, off) = location(g, id)?;
        arena.write(g, id, buf, off, &value)?;
        for (name, &last) in &last_use {
            if last == step && !output_buffers.contains(name.as_str()) {
                arena.poison(name, &g.buffers[name])?;
            }
        }
    }
    g.outputs()
        .iter()
        .map(|&o| match given.get(&o) {
            Some(t) => Ok((*t).clone()),
            None => {
                let (buf, off) = location(g, o)?;
                arena.read(g, o, buf, off, [0, 0])
            }
        })
        .collect()
}

/// The buffer and channel offset of a placed node.
fn location(g: &Graph, id: NodeId) -> Result<(&Buffer, usize), ExecError> {
    let node = g.node(id);
    let err = |message: &str| ExecError::Storage {
        node: node.name.clone(),
        message: message.to_owned(),
    };
    let p = node
        .placement
        .as_ref()
        .ok_or_else(|| err("has no placement"))?;
    let buf = g
        .buffers
        .get(&p.buffer)
        .ok_or_else(|| err("is placed in an undeclared buffer"))?;
    Ok((buf, p.channel_offset))
}

/// The last step at which each buffer is read (outputs: the last step).
fn buffer_last_use(g: &Graph, order: &[NodeId]) -> BTreeMap<String, usize> {
    let mut last: BTreeMap<String, usize> = BTreeMap::new();
    let end = order.len().saturating_sub(1);
    for (step, &id) in order.iter().enumerate() {
        let node = g.node(id);
        let mut mark = |n: &ir::Node, s: usize| {
            if let Some(p) = &n.placement {
                let e = last.entry(p.buffer.clone()).or_insert(s);
                *e = (*e).max(s);
            }
        };
        mark(node, step);
        if g.outputs().contains(&id) {
            mark(node, end);
        }
        for o in g.operands(id) {
            mark(g.node(o), step);
        }
    }
    last
}

/// Evaluate one op with the reference executor, as a one-node graph.
fn eval(g: &Graph, name: &str, op: Op, args: &[Tensor]) -> Result<Tensor, ExecError> {
    let mut mini = Graph::new(name);
    for c in op.constants() {
        if !mini.constants.contains_key(c) {
            let constant = g
                .constants
                .get(c)
                .ok_or_else(|| IrError::constant(c, "not declared"))?;
            mini.add_constant(c, constant.clone())?;
        }
    }
    let mut operands = Vec::with_capacity(args.len());
    for (i, a) in args.iter().enumerate() {
        operands.push(mini.add_input(format!("operand{i}"), ir::TensorType::f32(a.shape.clone()))?);
    }
    let out = mini.add_node(name, op, &operands)?;
    mini.set_outputs(vec![out]);
    let mut result = reference::run(&mini, args)?;
    result.pop().ok_or_else(|| ExecError::Storage {
        node: name.to_owned(),
        message: "the reference returned no value".into(),
    })
}

/// The arena: the bytes of every buffer at its offset.
struct Arena {
    data: Vec<f32>,
}

/// Where a node's slice of a buffer lies: element index of each logical
/// `(n, c, h, w)` (for rank 4) or row-major position.
struct Slice {
    base: usize,
    channels: usize,
    offset: usize,
    dims: [usize; 4],
    border: [usize; 2],
    rank4: bool,
}

impl Slice {
    fn new(g: &Graph, id: NodeId, buf: &Buffer, offset: usize) -> Result<Slice, ExecError> {
        let node = g.node(id);
        let err = |m: String| ExecError::Storage {
            node: node.name.clone(),
            message: m,
        };
        let base = buf
            .offset
            .ok_or_else(|| err("its buffer has no arena offset".into()))?;
        if base % 4 != 0 {
            return Err(err(format!("buffer offset {base} is not f32-aligned")));
        }
        match (node.ty.nchw(), buf.ty.nchw()) {
            (Some((n, _, h, w)), Some((_, bc, _, _))) => Ok(Slice {
                base: base / 4,
                channels: bc,
                offset,
                dims: [n, 0, h, w],
                border: buf.border,
                rank4: true,
            }),
            _ => Ok(Slice {
                base: base / 4,
                channels: 0,
                offset: 0,
                dims: [0; 4],
                border: [0, 0],
                rank4: false,
            }),
        }
    }

    /// Arena index of `(n, c, h, w)` where `h`, `w` count from the top-left
    /// of the stored image, border included.
    fn at(&self, n: usize, c: usize, h: usize, w: usize) -> usize {
        let [_, _, hh, ww] = self.dims;
        let (ph, pw) = (hh + 2 * self.border[0], ww + 2 * self.border[1]);
        self.base + ((n * ph + h) * pw + w) * self.channels + self.offset + c
    }
}

impl Arena {
    fn check(&self, node: &str, end: usize) -> Result<(), ExecError> {
        if end > self.data.len() {
            return Err(ExecError::Storage {
                node: node.to_owned(),
                message: format!("reaches element {end} of an arena of {}", self.data.len()),
            });
        }
        Ok(())
    }

    /// The value of `id`, with a halo of `halo` border pixels around each
    /// image (`halo` at most the buffer's border).
    fn read(
        &self,
        g: &Graph,
        id: NodeId,
        buf: &Buffer,
        off: usize,
        halo: [usize; 2],
    ) -> Result<Tensor, ExecError> {
        let node = g.node(id);
        let s = Slice::new(g, id, buf, off)?;
        if !s.rank4 {
            let n = node.ty.num_elements().unwrap_or(0);
            self.check(&node.name, s.base + n)?;
            return Ok(Tensor {
                shape: node.ty.shape.clone(),
                data: self.data[s.base..s.base + n].to_vec(),
            });
        }
        let (n, c, h, w) = node.ty.nchw().unwrap_or_default();
        let (oh, ow) = (h + 2 * halo[0], w + 2 * halo[1]);
        let (sh, sw) = (s.border[0] - halo[0], s.border[1] - halo[1]);
        self.check(
            &node.name,
            s.at(
                n.saturating_sub(1),
                c,
                h + 2 * s.border[0] - 1,
                w + 2 * s.border[1] - 1,
            ),
        )?;
        let mut data = Vec::with_capacity(n * c * oh * ow);
        for ni in 0..n {
            for ci in 0..c {
                for hi in 0..oh {
                    for wi in 0..ow {
                        data.push(self.data[s.at(ni, ci, hi + sh, wi + sw)]);
                    }
                }
            }
        }
        Ok(Tensor {
            shape: vec![n, c, oh, ow],
            data,
        })
    }

    /// Store the value of `id`, and zeros in its slice of the border.
    fn write(
        &mut self,
        g: &Graph,
        id: NodeId,
        buf: &Buffer,
        off: usize,
        t: &Tensor,
    ) -> Result<(), ExecError> {
        let node = g.node(id);
        let s = Slice::new(g, id, buf, off)?;
        if !s.rank4 {
            self.check(&node.name, s.base + t.data.len())?;
            self.data[s.base..s.base + t.data.len()].copy_from_slice(&t.data);
            return Ok(());
        }
        let (n, c, h, w) = node.ty.nchw().unwrap_or_default();
        let [bh, bw] = s.border;
        self.check(
            &node.name,
            s.at(n.saturating_sub(1), c, h + 2 * bh - 1, w + 2 * bw - 1),
        )?;
        for ni in 0..n {
            for ci in 0..c {
                for hi in 0..h + 2 * bh {
                    for wi in 0..w + 2 * bw {
                        let inside = (bh..bh + h).contains(&hi) && (bw..bw + w).contains(&wi);
                        self.data[s.at(ni, ci, hi, wi)] = if inside {
                            t.data[((ni * c + ci) * h + hi - bh) * w + wi - bw]
                        } else {
                            0.0
                        };
                    }
                }
            }
        }
        Ok(())
    }

    /// Fill a dead buffer with NaN.
    fn poison(&mut self, name: &str, buf: &Buffer) -> Result<(), ExecError> {
        let err = |m: &str| ExecError::Storage {
            node: name.to_owned(),
            message: m.to_owned(),
        };
        let start = buf.offset.ok_or_else(|| err("buffer has no offset"))? / 4;
        let len = buf
            .size_bytes()
            .ok_or_else(|| err("buffer size overflows"))?
            / 4;
        self.check(name, start + len)?;
        self.data[start..start + len].fill(f32::NAN);
        Ok(())
    }
}
