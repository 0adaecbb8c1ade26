//! Output heads (`--head logits|softmax|sigmoid|features`, `--op-threshs`): what the
//! compiled model outputs after the classifier.
//!
//! A head is an `ir::Op::Head` node after the classifier (`features` instead removes the
//! classifier, so the output is the pooled feature vector `[N, C]`). A checkpoint carrying
//! torchxrayvision's `op_threshs` buffer gets that model's own forward (sigmoid, then
//! `op_norm`) unless `--head` says otherwise.

use crate::error::CompileError;
use ir::{Constant, Graph, Head, Op};
use std::fmt;
use std::path::Path;
use std::str::FromStr;

/// The name of the thresholds constant of a `sigmoid_op_norm` head.
pub const THRESHOLDS: &str = "op_threshs";

/// What the compiled model outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadKind {
    /// The classifier's output (the default).
    Logits,
    Softmax,
    Sigmoid,
    /// Sigmoid, then torchxrayvision's operating-point normalisation (thresholds from the
    /// checkpoint's `op_threshs` or `--op-threshs`).
    OpNorm,
    /// The pooled feature vector `[N, C]` before the classifier.
    Features,
}

impl HeadKind {
    pub const NAMES: [&'static str; 5] = ["logits", "softmax", "sigmoid", "op-norm", "features"];

    pub fn name(self) -> &'static str {
        match self {
            HeadKind::Logits => "logits",
            HeadKind::Softmax => "softmax",
            HeadKind::Sigmoid => "sigmoid",
            HeadKind::OpNorm => "op-norm",
            HeadKind::Features => "features",
        }
    }
}

impl fmt::Display for HeadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for HeadKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "logits" => HeadKind::Logits,
            "softmax" => HeadKind::Softmax,
            "sigmoid" => HeadKind::Sigmoid,
            "op-norm" | "op_norm" | "opnorm" => HeadKind::OpNorm,
            "features" => HeadKind::Features,
            other => {
                return Err(format!(
                    "unknown head `{other}`: expected one of {}",
                    Self::NAMES.join(", ")
                ))
            }
        })
    }
}

/// Thresholds from `--op-threshs`: a `.npy` file (any shape, `C` values) or `v1,v2,…`
/// (`nan` allowed: that class outputs 0.5).
pub fn parse_thresholds(spec: &str) -> Result<Vec<f32>, String> {
    let path = Path::new(spec);
    if spec.ends_with(".npy") || path.is_file() {
        let t = ir::reference::npy::read(path)
            .map_err(|e| format!("--op-threshs {}: {e}", path.display()))?;
        return Ok(t.data);
    }
    spec.split(',')
        .map(|v| {
            v.trim()
                .parse::<f32>()
                .map_err(|_| format!("--op-threshs: `{}` is not a number", v.trim()))
        })
        .collect()
}

/// What a graph outputs, read off its output node: the head and the output width.
pub fn of_graph(g: &Graph) -> Option<(HeadKind, usize)> {
    let &[out] = g.outputs() else { return None };
    let node = g.node(out);
    let classes = *node.ty.shape.last()?;
    let kind = match &node.op {
        Op::Linear(_) => HeadKind::Logits,
        Op::Head(Head::Sigmoid) => HeadKind::Sigmoid,
        Op::Head(Head::Softmax) => HeadKind::Softmax,
        Op::Head(Head::SigmoidOpNorm { .. }) => HeadKind::OpNorm,
        Op::Flatten | Op::GlobalAvgPool { .. } => HeadKind::Features,
        _ => return None,
    };
    Some((kind, classes))
}

fn err(message: impl Into<String>) -> CompileError {
    CompileError::Options(message.into())
}

/// Put `kind` on the graph's output (the classifier as the builder makes it).
/// `thresholds` is required by, and only accepted with, [`HeadKind::OpNorm`].
pub fn apply(
    g: &mut Graph,
    kind: HeadKind,
    thresholds: Option<Vec<f32>>,
) -> Result<(), CompileError> {
    if thresholds.is_some() && kind != HeadKind::OpNorm {
        return Err(err(format!(
            "--op-threshs applies to the op-norm head (sigmoid + operating-point \
             normalisation), not to --head {kind}"
        )));
    }
    let &[out] = g.outputs() else {
        return Err(err(format!(
            "--head {kind}: the graph has {} outputs, expected one",
            g.outputs().len()
        )));
    };
    let node = g.node(out).clone();
    if !matches!(node.op, Op::Linear(_)) {
        return Err(err(format!(
            "--head {kind} does not fit this graph: its output `{}` is a `{}`, not the \
             classifier (a linear layer)",
            node.name,
            node.op.mnemonic()
        )));
    }
    let classes = node.ty.shape.last().copied().unwrap_or(0);
    let ir_head = match kind {
        HeadKind::Logits => return Ok(()),
        HeadKind::Features => {
            let &[features] = g.operands(out).as_slice() else {
                return Err(err("--head features: the classifier has no single operand"));
            };
            g.set_outputs(vec![features]);
            g.remove_dead();
            return Ok(());
        }
        HeadKind::Sigmoid => Head::Sigmoid,
        HeadKind::Softmax => Head::Softmax,
        HeadKind::OpNorm => {
            let Some(t) = thresholds else {
                return Err(err(
                    "--head op-norm needs thresholds: the checkpoint carries no `op_threshs`; \
                     give --op-threshs FILE.npy|v1,v2,…",
                ));
            };
            if t.len() != classes {
                return Err(err(format!(
                    "{} operating-point thresholds for {classes} classes",
                    t.len()
                )));
            }
            if let Some(bad) = t.iter().find(|v| v.is_infinite()) {
                return Err(err(format!("operating-point threshold {bad} is infinite")));
            }
            let name = g.fresh_constant_name(THRESHOLDS);
            g.add_constant(name.clone(), Constant::with_data(vec![classes], t))
                .map_err(|e| err(e.to_string()))?;
            Head::SigmoidOpNorm { thresholds: name }
        }
    };
    let name = g.fresh_node_name(ir_head_name(&ir_head));
    let id = g
        .add_node(name, Op::Head(ir_head), &[out])
        .map_err(|e| err(format!("--head {kind}: {e}")))?;
    g.set_outputs(vec![id]);
    Ok(())
}

fn ir_head_name(h: &Head) -> &'static str {
    match h {
        Head::Sigmoid => "head.sigmoid",
        Head::Softmax => "head.softmax",
        Head::SigmoidOpNorm { .. } => "head.op_norm",
    }
}

/// The constants that a head reads and that may hold NaN (a NaN threshold outputs 0.5).
pub fn nan_allowed(g: &Graph) -> Vec<String> {
    g.node_ids()
        .into_iter()
        .filter_map(|id| match &g.node(id).op {
            Op::Head(Head::SigmoidOpNorm { thresholds }) => Some(thresholds.clone()),
            _ => None,
        })
        .collect()
}
