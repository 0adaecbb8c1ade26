//! Helpers shared by the `passes` tests: configs, deterministic random
//! weights (random BN statistics, never identity), and the oracle
//! comparison (reference executor on the unoptimised graph).

use compiler::builder::{build, ConfigOverrides, DenseNetConfig};
use compiler::passes::{optimize, PipelineReport};
use ir::reference::Tensor;
use ir::Graph;

/// The bound every optimised-vs-unoptimised comparison must meet, in
/// `Tensor::rel_error` (`||a - b||_inf / ||b||_inf`).
pub const TOL: f64 = 1e-5;

/// Bind every constant of `g` to deterministic random data (random BN
/// statistics and signs: no BN is the identity, every shift is non-zero).
pub fn randomize(g: &mut Graph, seed: u64) {
    compiler::weights::randomize(g, seed);
}

/// One random input per graph input, in `[-1, 1)`.
pub fn inputs(g: &Graph, seed: u64) -> Vec<Tensor> {
    g.inputs()
        .iter()
        .enumerate()
        .map(|(i, &id)| {
            let shape = g.node(id).ty.shape.clone();
            Tensor::random_uniform(shape, seed.wrapping_add(i as u64), -1.0, 1.0)
        })
        .collect()
}

/// A preset with overrides applied.
pub fn config(arch: &str, o: ConfigOverrides) -> DenseNetConfig {
    DenseNetConfig::resolve(Some(arch), &o).expect("valid config")
}

/// A built graph with random weights.
pub fn random_graph(cfg: &DenseNetConfig, batch: usize, seed: u64) -> Graph {
    let mut g = build(cfg, batch).expect("builds");
    randomize(&mut g, seed);
    g
}

/// The whole pipeline, verified after every pass.
pub fn optimized(g: &Graph) -> (Graph, PipelineReport) {
    let mut o = g.clone();
    let report = optimize(&mut o, true).unwrap_or_else(|e| panic!("pipeline: {e}"));
    (o, report)
}

/// Assert `got` equals `want` within [`TOL`], output by output.
pub fn assert_close(what: &str, got: &[Tensor], want: &[Tensor]) {
    assert_eq!(got.len(), want.len(), "{what}: number of outputs");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        let e = a.rel_error(b).expect("same shapes");
        eprintln!("{what}: output {i}: relative error {e:e}");
        assert!(
            e <= TOL,
            "{what}: output {i} differs, relative error {e:e} > {TOL:e}"
        );
    }
}

/// Reference on `unoptimised` vs both the reference and the arena executor
/// on `optimised`.
pub fn assert_same_function(what: &str, unoptimised: &Graph, optimised: &Graph, seed: u64) {
    let x = inputs(unoptimised, seed);
    let want = ir::reference::run(unoptimised, &x).expect("reference runs the original");
    let got = ir::reference::run(optimised, &x).expect("reference runs the optimised graph");
    assert_close(&format!("{what} (reference)"), &got, &want);
    if optimised.arena_bytes.is_some() {
        let got = compiler::plan_exec::run_planned(optimised, &x).expect("arena executor runs");
        assert_close(&format!("{what} (arena)"), &got, &want);
    }
}

/// Run the pipeline up to and including `pass` on a copy of `g`.
pub fn after(g: &Graph, pass: &str) -> Graph {
    let mut o = g.clone();
    compiler::passes::run_pipeline(
        &mut o,
        &mut compiler::passes::PipelineOptions {
            stop_after: Some(pass.to_owned()),
            verify: true,
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("pipeline to {pass}: {e}"));
    o
}
