//! Stage 1: give every non-input value a buffer.

use ir::{Buffer, Graph, NodeId, Op, Placement};

/// Place every unplaced non-input node at channel 0 of a buffer of its own
/// (named after it), with a zero border when [`zero_border`] asks for one.
/// Values already in a block buffer keep it.
pub fn assign_storage(g: &mut Graph) {
    for id in g.schedule().unwrap_or_else(|_| g.node_ids()) {
        let node = g.node(id);
        if node.placement.is_some() || matches!(node.op, Op::Input) {
            continue;
        }
        let name = g.fresh_buffer_name(&node.name);
        let mut buf = Buffer::new(node.ty.clone());
        buf.border = zero_border(g, id);
        g.buffers.insert(name.clone(), buf);
        g.node_mut(id).placement = Some(Placement {
            buffer: name,
            channel_offset: 0,
        });
    }
}

/// The border for the value of `id`: when every user is a padded conv with
/// no prologue (so its padding is plain zeros, e.g. the 3x3 conv after a
/// bottleneck), the largest padding; otherwise none. Graph outputs get none.
pub fn zero_border(g: &Graph, id: NodeId) -> [usize; 2] {
    let users = g.users(id);
    if users.is_empty() || g.outputs().contains(&id) || g.node(id).ty.nchw().is_none() {
        return [0, 0];
    }
    let mut border = [0, 0];
    for u in users {
        match &g.node(u).op {
            Op::Conv2d(c) if c.prologue.is_none() && c.padding != [0, 0] => {
                border[0] = border[0].max(c.padding[0]);
                border[1] = border[1].max(c.padding[1]);
            }
            _ => return [0, 0],
        }
    }
    border
}
