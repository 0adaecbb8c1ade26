//! Binding checkpoints to a graph: name normalisation, the checks, the
//! error listing, and an end-to-end check against PyTorch's own output.

use crate::support::{data, densenet, run, Config, Nd};
use compiler::weights::{
    bind, read_tensors, BindProblem, Tensor, TensorData, TensorMap, WeightError,
};

fn mini_graph() -> ir::Graph {
    densenet(&Config::mini(), 1)
}

fn read(name: &str) -> TensorMap {
    read_tensors(&data(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn problems(e: WeightError) -> Vec<BindProblem> {
    match e {
        WeightError::Mismatch { problems } => problems,
        other => panic!("expected a mismatch, got {other}"),
    }
}

/// Constants of the mini graph: 9 BatchNorms x 4, 8 convs, classifier x 2.
const MINI_CONSTANTS: usize = 9 * 4 + 8 + 2;

#[test]
fn every_checkpoint_layout_binds() {
    for (file, renamed) in [
        ("mini_densenet.pth", 0),
        ("mini_densenet.safetensors", 0),
        ("mini_densenet_checkpoint.pth", 0),
        ("mini_densenet_model_key_proto4.pth", 0),
        ("mini_densenet_dataparallel.pth", MINI_CONSTANTS),
        // norm1, conv1, norm2, conv2 of 3 dense layers (4 + 1 + 4 + 1 each).
        ("mini_densenet_legacy_names.pth", 3 * 10),
    ] {
        let mut g = mini_graph();
        let report = bind(&mut g, read(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(g.is_bound(), "{file}");
        assert_eq!(report.bound, MINI_CONSTANTS, "{file}");
        assert_eq!(report.ignored.len(), 9, "{file}: num_batches_tracked");
        assert_eq!(
            report.renamed.len(),
            renamed,
            "{file}: {:?}",
            report.renamed
        );
        ir::verify::verify(&g).expect("a bound graph verifies");
    }
}

#[test]
fn bound_graph_reproduces_pytorch() {
    let golden = read("mini_densenet_golden.safetensors");
    let tensor = |n: &str| Nd {
        shape: golden[n].shape.clone(),
        data: golden[n].as_f32().expect("f32").to_vec(),
    };
    let (x, want) = (tensor("input"), tensor("output"));
    for file in ["mini_densenet.pth", "mini_densenet_legacy_names.pth"] {
        let mut g = mini_graph();
        bind(&mut g, read(file)).expect("binds");
        let y = run(&g, &x);
        assert_eq!(y.shape, want.shape);
        for (a, b) in y.data.iter().zip(&want.data) {
            assert!(
                (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                "{file}: {a} vs {b}"
            );
        }
    }
}

#[test]
fn norm_final_is_norm5() {
    let tensors: TensorMap = read("mini_densenet.safetensors")
        .into_iter()
        .map(|(k, v)| (k.replace("features.norm5.", "features.norm_final."), v))
        .collect();
    let mut g = mini_graph();
    let report = bind(&mut g, tensors).expect("binds");
    assert_eq!(report.renamed.len(), 4);
    assert!(report.renamed.contains(&(
        "features.norm_final.weight".into(),
        "features.norm5.weight".into()
    )));
}

#[test]
fn all_mismatches_are_reported_and_the_graph_is_untouched() {
    let mut tensors = read("mini_densenet.pth");
    tensors.remove("features.conv0.weight");
    tensors.insert(
        "features.extra.weight".into(),
        Tensor::f32([2], vec![1.0, 2.0]),
    );
    tensors.insert(
        "features.norm0.weight".into(),
        Tensor {
            shape: vec![4],
            data: TensorData::Other {
                dtype: "float64".into(),
            },
        },
    );
    tensors.insert("classifier.bias".into(), Tensor::f32([4], vec![0.0; 4]));
    tensors.insert(
        "module.classifier.weight".into(),
        Tensor::f32([3, 6], vec![0.0; 18]),
    );
    tensors.insert("features.norm5.bias".into(), Tensor::f32([6], vec![0.0; 5]));
    // Any dtype of num_batches_tracked is ignored.
    tensors.insert(
        "features.norm0.num_batches_tracked".into(),
        Tensor::f32([], vec![3.0]),
    );
    let mut g = mini_graph();
    let e = bind(&mut g, tensors).expect_err("mismatched");
    let msg = e.to_string();
    assert!(g.constants.values().all(|c| c.data.is_none()), "untouched");
    let mut p = problems(e);
    p.sort_by_key(|p| format!("{p:?}"));
    assert_eq!(
        p,
        vec![
            BindProblem::DType {
                name: "features.norm0.weight".into(),
                dtype: "float64".into()
            },
            BindProblem::DataLength {
                name: "features.norm5.bias".into(),
                shape: vec![6],
                len: 5
            },
            BindProblem::Duplicate {
                name: "classifier.weight".into(),
                first: "classifier.weight".into(),
                second: "module.classifier.weight".into()
            },
            BindProblem::Missing {
                name: "features.conv0.weight".into(),
                expected: vec![4, 2, 3, 3]
            },
            BindProblem::Shape {
                name: "classifier.bias".into(),
                expected: vec![3],
                found: vec![4]
            },
            BindProblem::Unexpected {
                name: "features.extra.weight".into(),
                file_name: "features.extra.weight".into(),
                shape: vec![2]
            },
        ]
    );
    for needle in [
        "missing tensor `features.conv0.weight` (expected shape [4, 2, 3, 3])",
        "unexpected tensor `features.extra.weight` with shape [2]",
        "tensor `classifier.bias` has shape [4], expected [3]",
        "tensor `features.norm0.weight` is float64",
        "`classifier.weight` and `module.classifier.weight` both name `classifier.weight`",
        "1 missing",
        "1 unexpected",
        "1 mis-shaped",
    ] {
        assert!(msg.contains(needle), "`{needle}` not in:\n{msg}");
    }
}

#[test]
fn long_mismatch_lists_are_summarised() {
    let mut g = mini_graph();
    let e = bind(&mut g, TensorMap::new()).expect_err("nothing to bind");
    let msg = e.to_string();
    assert!(msg.starts_with(&format!(
        "the weights do not match the graph ({MINI_CONSTANTS} missing)"
    )));
    assert_eq!(msg.matches("\n  - missing tensor").count(), 10, "{msg}");
    assert!(
        msg.ends_with(&format!("... and {} more", MINI_CONSTANTS - 10)),
        "{msg}"
    );
    assert_eq!(problems(e).len(), MINI_CONSTANTS);
}

#[test]
fn conv_bias_graphs_need_conv_biases() {
    let mut cfg = Config::mini();
    cfg.conv_bias = true;
    let mut g = densenet(&cfg, 1);
    let p = problems(bind(&mut g, read("mini_densenet.pth")).expect_err("no conv biases"));
    assert_eq!(p.len(), 8);
    assert!(p.contains(&BindProblem::Missing {
        name: "features.denseblock1.denselayer2.conv2.bias".into(),
        expected: vec![2]
    }));

    // With the biases present it binds.
    let mut tensors = read("mini_densenet.pth");
    for (name, c) in &g.constants {
        if name.contains("conv") && name.ends_with(".bias") {
            tensors.insert(
                name.clone(),
                Tensor::f32(c.shape.clone(), vec![0.5; c.shape[0]]),
            );
        }
    }
    let report = bind(&mut g, tensors).expect("binds");
    assert_eq!(report.bound, MINI_CONSTANTS + 8);
}

#[test]
fn plain_layers_bind_norm1_and_conv1() {
    let cfg = Config {
        bn_size: 0,
        ..Config::mini()
    };
    let mut g = densenet(&cfg, 1);
    assert!(!g
        .constants
        .keys()
        .any(|k| k.contains(".norm2.") || k.contains(".conv2.")));
    let tensors: TensorMap = g
        .constants
        .iter()
        .map(|(k, c)| {
            let n = c.shape.iter().product();
            (k.clone(), Tensor::f32(c.shape.clone(), vec![0.25; n]))
        })
        .collect();
    bind(&mut g, tensors).expect("binds");
    assert!(g.is_bound());
}
