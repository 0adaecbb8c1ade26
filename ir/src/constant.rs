//! Named constants (weights): a shape and, once bound, the f32 data.
//!
//! A module of their own because both the ops (`Op::infer_type` checks the
//! shapes of the constants an op reads) and the graph (which owns them by
//! name) use them.
//! Re-exported as `ir::Constant` and `ir::graph::Constant`.

use std::sync::Arc;

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
