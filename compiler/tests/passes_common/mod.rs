//! Helpers shared by the `passes_*` tests: configs, deterministic random
//! weights (random BN statistics, never identity), and the oracle
//! comparison (reference executor on the unoptimised graph).
#![allow(dead_code)]

use compiler::builder::{build, ConfigOverrides, DenseNetConfig};
use compiler::passes::{optimize, PipelineReport};
use ir::reference::Tensor;
use ir::{Constant, Graph, Op};

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

/// A hand-built graph, for the shapes the builder never makes (other
/// DenseNet implementations). Constants are unbound; call [`randomize`].
#[derive(Debug)]
pub struct Hand {
    pub g: Graph,
}

impl Hand {
    pub fn new(name: &str, input: [usize; 4]) -> (Hand, ir::NodeId) {
        let mut g = Graph::new(name);
        let x = g
            .add_input("input", ir::TensorType::f32(input))
            .expect("input");
        (Hand { g }, x)
    }

    fn channels(&self, x: ir::NodeId) -> usize {
        self.g.node(x).ty.shape[1]
    }

    fn param(&mut self, name: &str, shape: &[usize]) -> String {
        self.g
            .add_constant(name, Constant::unbound(shape))
            .expect("fresh constant");
        name.to_owned()
    }

    #[allow(clippy::too_many_arguments)]
    pub fn conv(
        &mut self,
        name: &str,
        x: ir::NodeId,
        out: usize,
        k: usize,
        stride: usize,
        pad: usize,
        bias: bool,
    ) -> ir::NodeId {
        let cin = self.channels(x);
        let weight = self.param(&format!("{name}.weight"), &[out, cin, k, k]);
        let bias = bias.then(|| self.param(&format!("{name}.bias"), &[out]));
        let op = Op::Conv2d(ir::ops::Conv2d {
            weight,
            bias,
            out_channels: out,
            kernel: [k, k],
            stride: [stride, stride],
            padding: [pad, pad],
            prologue: None,
            relu: false,
        });
        self.g.add_node(name, op, &[x]).expect("conv")
    }

    pub fn bn(&mut self, name: &str, x: ir::NodeId) -> ir::NodeId {
        let c = self.channels(x);
        let p = ["weight", "bias", "running_mean", "running_var"]
            .map(|s| self.param(&format!("{name}.{s}"), &[c]));
        let [weight, bias, running_mean, running_var] = p;
        let op = Op::BatchNorm(ir::ops::BatchNorm {
            weight,
            bias,
            running_mean,
            running_var,
            eps: 1e-5,
        });
        self.g.add_node(name, op, &[x]).expect("bn")
    }

    pub fn op(&mut self, name: &str, op: Op, operands: &[ir::NodeId]) -> ir::NodeId {
        self.g.add_node(name, op, operands).expect("node")
    }

    pub fn pool(kernel: usize, stride: usize, pad: usize) -> ir::ops::Pool2d {
        ir::ops::Pool2d {
            kernel: [kernel, kernel],
            stride: [stride, stride],
            padding: [pad, pad],
            prologue: None,
        }
    }

    /// Finish with `outputs`, verify and bind random weights.
    pub fn finish(mut self, outputs: Vec<ir::NodeId>, seed: u64) -> Graph {
        self.g.set_outputs(outputs);
        ir::verify::verify(&self.g).expect("hand-built graph verifies");
        randomize(&mut self.g, seed);
        self.g
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

/// The op of the node named `name`.
pub fn op_of<'a>(g: &'a Graph, name: &str) -> &'a Op {
    let id = g
        .node_by_name(name)
        .unwrap_or_else(|| panic!("no node `{name}`"));
    &g.node(id).op
}

/// How many nodes have an op of this mnemonic.
pub fn count(g: &Graph, mnemonic: &str) -> usize {
    g.node_ids()
        .into_iter()
        .filter(|&id| g.node(id).op.mnemonic() == mnemonic)
        .count()
}
