//! Binding tensors to the constants of a graph.
//!
//! Names are normalised first ([`normalize_name`]; finding the network and
//! stripping its wrapper prefix happened before, in `find`); `num_batches_tracked`
//! buffers are ignored; then every constant of the graph must receive a
//! float32 tensor of exactly its shape, and every tensor must name a
//! constant. All problems are collected and reported together, and the
//! graph is changed only when there are none.

use super::error::{BindProblem, WeightError};
use super::{Tensor, TensorData, TensorMap};
use ir::Graph;
use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::sync::Arc;

/// What [`bind`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BindReport {
    /// Number of constants bound (all of the graph's).
    pub bound: usize,
    /// Tensors skipped (`num_batches_tracked`), as the file names them.
    pub ignored: Vec<String>,
    /// `(name in the file, graph name)` of every tensor whose name was
    /// normalised.
    pub renamed: Vec<(String, String)>,
}

/// The torchvision name of a tensor named `name` in a checkpoint:
/// - DataParallel's `module.` prefixes are removed;
/// - old torchvision spellings `denselayerN.norm.1.weight` (`norm.1`,
///   `relu.1`, `conv.1`, `norm.2`, `relu.2`, `conv.2`) become `norm1`, ...,
///   as torchvision's own loader rewrites them;
/// - `features.norm_final.*` (the memory-efficient CIFAR implementation)
///   becomes `features.norm5.*`;
/// - `classifier.0.weight`/`bias`, the Linear that starts a `Sequential`
///   classifier (CheXNet's `Sequential(Linear, Sigmoid)`), becomes
///   `classifier.weight`/`bias`.
pub fn normalize_name(name: &str) -> String {
    let mut n = name;
    while let Some(rest) = n.strip_prefix("module.") {
        n = rest;
    }
    let n = legacy_dense_layer(n).unwrap_or_else(|| n.to_owned());
    if let Some(rest) = n.strip_prefix("features.norm_final.") {
        return format!("features.norm5.{rest}");
    }
    match n.strip_prefix("classifier.0.") {
        Some(rest @ ("weight" | "bias")) => format!("classifier.{rest}"),
        _ => n,
    }
}

/// torchvision's regex, spelled out:
/// `^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$`
/// rewritten to `\1\2`.
fn legacy_dense_layer(name: &str) -> Option<String> {
    let (head, param) = name.rsplit_once('.')?;
    if !matches!(param, "weight" | "bias" | "running_mean" | "running_var") {
        return None;
    }
    let (head, digit) = head.rsplit_once('.')?;
    if !matches!(digit, "1" | "2") {
        return None;
    }
    let (layer, kind) = head.rsplit_once('.')?;
    if !matches!(kind, "norm" | "relu" | "conv") {
        return None;
    }
    let stem = layer.trim_end_matches(|c: char| c.is_ascii_digit());
    if stem.len() == layer.len() || !stem.ends_with("denselayer") {
        return None;
    }
    Some(format!("{head}{digit}.{param}"))
}

fn is_ignored(name: &str) -> bool {
    name.rsplit('.').next() == Some("num_batches_tracked")
}

/// Bind `tensors` to the constants of `graph` (see the module doc).
/// On error the graph is left unchanged and the error lists every problem.
pub fn bind(graph: &mut Graph, tensors: TensorMap) -> Result<BindReport, WeightError> {
    let mut report = BindReport::default();
    let mut problems = Vec::new();
    let mut by_name: BTreeMap<String, (String, Tensor)> = BTreeMap::new();
    for (file_name, tensor) in tensors {
        let name = normalize_name(&file_name);
        if is_ignored(&name) {
            report.ignored.push(file_name);
            continue;
        }
        if name != file_name {
            report.renamed.push((file_name.clone(), name.clone()));
        }
        match by_name.entry(name) {
            Entry::Occupied(e) => problems.push(BindProblem::Duplicate {
                name: e.key().clone(),
                first: e.get().0.clone(),
                second: file_name,
            }),
            Entry::Vacant(e) => {
                e.insert((file_name, tensor));
            }
        }
    }
    for (name, (file_name, tensor)) in &by_name {
        let Some(constant) = graph.constants.get(name) else {
            problems.push(BindProblem::Unexpected {
                name: name.clone(),
                file_name: file_name.clone(),
                shape: tensor.shape.clone(),
            });
            continue;
        };
        let TensorData::F32(data) = &tensor.data else {
            problems.push(BindProblem::DType {
                name: name.clone(),
                dtype: tensor.dtype().to_owned(),
            });
            continue;
        };
        if tensor.shape != constant.shape {
            problems.push(BindProblem::Shape {
                name: name.clone(),
                expected: constant.shape.clone(),
                found: tensor.shape.clone(),
            });
            continue;
        }
        let numel = tensor
            .shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d));
        if numel != Some(data.len()) {
            problems.push(BindProblem::DataLength {
                name: name.clone(),
                shape: tensor.shape.clone(),
                len: data.len(),
            });
        }
    }
    for (name, constant) in &graph.constants {
        if !by_name.contains_key(name) {
            problems.push(BindProblem::Missing {
                name: name.clone(),
                expected: constant.shape.clone(),
            });
        }
    }
    if !problems.is_empty() {
        problems.sort_by(|a, b| problem_name(a).cmp(problem_name(b)));
        return Err(WeightError::Mismatch { problems });
    }
    for (name, (_, tensor)) in by_name {
        if let (Some(c), TensorData::F32(data)) = (graph.constants.get_mut(&name), tensor.data) {
            c.data = Some(Arc::new(data));
            report.bound += 1;
        }
    }
    Ok(report)
}

fn problem_name(p: &BindProblem) -> &str {
    match p {
        BindProblem::Missing { name, .. }
        | BindProblem::Unexpected { name, .. }
        | BindProblem::Shape { name, .. }
        | BindProblem::DType { name, .. }
        | BindProblem::Duplicate { name, .. }
        | BindProblem::DataLength { name, .. } => name,
    }
}

#[cfg(test)]
mod tests {
    use super::normalize_name;

    #[test]
    fn names() {
        let cases = [
            ("features.conv0.weight", "features.conv0.weight"),
            ("module.features.conv0.weight", "features.conv0.weight"),
            ("module.module.classifier.bias", "classifier.bias"),
            (
                "features.denseblock1.denselayer1.norm.1.weight",
                "features.denseblock1.denselayer1.norm1.weight",
            ),
            (
                "features.denseblock4.denselayer16.conv.2.weight",
                "features.denseblock4.denselayer16.conv2.weight",
            ),
            (
                "module.features.denseblock2.denselayer3.norm.2.running_var",
                "features.denseblock2.denselayer3.norm2.running_var",
            ),
            // Not dense layers, or not the legacy pattern: unchanged.
            (
                "features.transition1.norm.1.weight",
                "features.transition1.norm.1.weight",
            ),
            (
                "features.denseblock1.denselayer1.norm.3.weight",
                "features.denseblock1.denselayer1.norm.3.weight",
            ),
            (
                "features.denseblock1.denselayer.norm.1.weight",
                "features.denseblock1.denselayer.norm.1.weight",
            ),
            (
                "features.denseblock1.denselayer1.norm.1.num_batches_tracked",
                "features.denseblock1.denselayer1.norm.1.num_batches_tracked",
            ),
            ("features.norm_final.weight", "features.norm5.weight"),
            (
                "features.norm_final.running_mean",
                "features.norm5.running_mean",
            ),
            ("norm_final.weight", "norm_final.weight"),
            ("classifier.0.weight", "classifier.weight"),
            ("module.classifier.0.bias", "classifier.bias"),
            ("classifier.1.weight", "classifier.1.weight"),
            ("classifier.0.running_mean", "classifier.0.running_mean"),
        ];
        for (from, to) in cases {
            assert_eq!(normalize_name(from), to, "{from}");
        }
    }
}
