//! The optimised graph against PyTorch: every golden fixture of
//! `tools/gen_golden.py` (in `tests/fixtures/golden`), with the real
//! weights, run inside its planned arena — within 1e-4 of PyTorch and
//! 1e-5 of the reference executor on the unoptimised graph.

use crate::common::{optimized, TOL};
use compiler::builder::{build, ConfigOverrides, DenseNetConfig};
use compiler::plan_exec::run_planned;
use compiler::weights;
use ir::reference::{self, npy};
use std::path::{Path, PathBuf};

fn golden_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/golden")
}

/// The configuration and batch of a case from its `config.json`.
fn case_config(dir: &Path) -> (DenseNetConfig, usize) {
    let text = std::fs::read_to_string(dir.join("config.json")).expect("config.json");
    let mut j: serde_json::Value = serde_json::from_str(&text).expect("json");
    let obj = j.as_object_mut().expect("an object");
    let batch = obj.remove("batch").and_then(|b| b.as_u64()).expect("batch") as usize;
    let eps = obj
        .remove("generator")
        .and_then(|g| g["bn_eps"].as_f64())
        .unwrap_or(1e-5);
    let mut o: ConfigOverrides = serde_json::from_value(j).expect("overrides");
    o.bn_eps = Some(eps as f32);
    let cfg = DenseNetConfig::resolve(Some("densenet121"), &o).expect("valid config");
    (cfg, batch)
}

#[test]
fn optimised_graphs_match_pytorch_on_every_golden_fixture() {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(golden_root())
        .expect("fixtures")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("config.json").exists())
        .collect();
    cases.sort();
    assert!(cases.len() >= 4, "{cases:?}");
    for dir in cases {
        let (cfg, batch) = case_config(&dir);
        let mut g = build(&cfg, batch).expect("builds");
        let tensors = weights::read_tensors(&dir.join("weights.safetensors")).expect("weights");
        weights::bind(&mut g, tensors).expect("binds");
        let (o, report) = optimized(&g);
        assert_eq!(report.memory.expect("memory").concat_copies, 0);
        let input = npy::read(dir.join("input.npy")).expect("input");
        let torch = npy::read(dir.join("output.npy")).expect("output");
        let got = run_planned(&o, std::slice::from_ref(&input)).expect("arena run");
        let unopt = reference::run(&g, &[input]).expect("reference");
        let vs_torch = got[0].rel_error(&torch).expect("shape");
        let vs_ref = got[0].rel_error(&unopt[0]).expect("shape");
        eprintln!(
            "{}: vs PyTorch {vs_torch:.2e}, vs reference {vs_ref:.2e}",
            dir.display()
        );
        assert!(vs_torch <= 1e-4, "{}: {vs_torch}", dir.display());
        assert!(vs_ref <= TOL, "{}: {vs_ref}", dir.display());
    }
}
