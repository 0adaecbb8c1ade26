//! The reference executor against PyTorch: every golden fixture of
//! `tools/gen_golden.py`, weights from both the safetensors and the `.pth`
//! file, at ≤ 1e-4 relative error (‖a − b‖∞ / ‖b‖∞).

use compiler::{builder, weights};
use ir::reference::{self, npy, Options, Tensor};
use tests::{golden_cases, golden_config, golden_dir};

const BOUND: f64 = 1e-4;

fn check_case(case: &str, weights_file: &str) {
    let dir = golden_dir(case);
    let (cfg, batch) = golden_config(case).expect("config");
    let mut g = builder::build(&cfg, batch).expect("builds");
    let tensors = weights::read_tensors(&dir.join(weights_file)).expect("reads weights");
    weights::bind(&mut g, tensors).expect("binds");
    let input = npy::read(dir.join("input.npy")).expect("input");
    let want = npy::read(dir.join("output.npy")).expect("output");
    let want_f32 = npy::read(dir.join("output_torch_f32.npy")).expect("f32 output");
    let want_features = npy::read(dir.join("features.npy")).expect("features");
    let mut features: Option<Tensor> = None;
    let out = reference::run_with(&g, &[input], &Options::default(), &mut |node, value| {
        if node.name == "features.norm5" {
            features = Some(value.clone());
        }
    })
    .expect("runs");
    let logits = out[0].rel_error(&want).expect("same shape");
    let logits_f32 = out[0].rel_error(&want_f32).expect("same shape");
    let feats = features
        .expect("features.norm5 ran")
        .rel_error(&want_features)
        .expect("same shape");
    println!("{case} ({weights_file}): logits {logits:.2e}, vs torch f32 {logits_f32:.2e}, features {feats:.2e}");
    assert!(logits <= BOUND, "{case}: logits rel error {logits}");
    assert!(
        logits_f32 <= BOUND,
        "{case}: rel error vs PyTorch f32 {logits_f32}"
    );
    assert!(feats <= BOUND, "{case}: features rel error {feats}");
}

#[test]
fn there_are_golden_fixtures() {
    let cases = golden_cases().expect("fixtures");
    assert!(cases.len() >= 4, "{cases:?}");
}

#[test]
fn reference_matches_pytorch_with_safetensors_weights() {
    for case in golden_cases().expect("fixtures") {
        check_case(&case, "weights.safetensors");
    }
}

#[test]
fn reference_matches_pytorch_with_pth_weights() {
    for case in golden_cases().expect("fixtures") {
        check_case(&case, "weights.pth");
    }
}

#[test]
fn a_wrong_model_for_the_weights_is_a_clear_error() {
    let dir = golden_dir("bc40_cifar");
    let (mut cfg, batch) = golden_config("bc40_cifar").expect("config");
    cfg.growth_rate += 1;
    let mut g = builder::build(&cfg, batch).expect("builds");
    let tensors = weights::read_tensors(&dir.join("weights.pth")).expect("reads");
    let e = weights::bind(&mut g, tensors)
        .expect_err("shapes differ")
        .to_string();
    assert!(
        e.contains("features.denseblock1.denselayer1.conv2.weight"),
        "{e}"
    );
}
