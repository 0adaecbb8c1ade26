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

/// SplitMix64: small, deterministic, good enough for test data.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        let u = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * u
    }
}

/// Bind every constant of `g` to random data: convs and linears with
/// He-uniform weights, biases small; BatchNorms with random γ, β, mean and
/// var (so no BN is the identity and every shift is non-zero).
pub fn randomize(g: &mut Graph, seed: u64) {
    let mut rng = Rng::new(seed);
    let mut kind: std::collections::BTreeMap<String, (f32, f32)> = Default::default();
    for id in g.node_ids() {
        match &g.node(id).op {
            Op::BatchNorm(b) => {
                kind.insert(b.weight.clone(), (0.5, 1.5));
                kind.insert(b.bias.clone(), (-0.5, 0.5));
                kind.insert(b.running_mean.clone(), (-0.5, 0.5));
                kind.insert(b.running_var.clone(), (0.25, 2.0));
            }
            Op::Conv2d(c) => {
                if let Some(b) = &c.bias {
                    kind.insert(b.clone(), (-0.2, 0.2));
                }
            }
            Op::Linear(l) => {
                if let Some(b) = &l.bias {
                    kind.insert(b.clone(), (-0.2, 0.2));
                }
            }
            _ => {}
        }
    }
    let names: Vec<String> = g.constants.keys().cloned().collect();
    for name in names {
        let shape = g.constants[&name].shape.clone();
        let n: usize = shape.iter().product();
        let (lo, hi) = kind.get(&name).copied().unwrap_or_else(|| {
            let fan_in: usize = shape.iter().skip(1).product::<usize>().max(1);
            let b = (6.0 / fan_in as f32).sqrt();
            (-b, b)
        });
        let data = (0..n).map(|_| rng.uniform(lo, hi)).collect();
        g.constants.insert(name, Constant::with_data(shape, data));
    }
}

/// One random input per graph input.
pub fn inputs(g: &Graph, seed: u64) -> Vec<Tensor> {
    let mut rng = Rng::new(seed.wrapping_add(1));
    g.inputs()
        .iter()
        .map(|&i| {
            let shape = g.node(i).ty.shape.clone();
            let n = shape.iter().product();
            Tensor {
                shape,
                data: (0..n).map(|_| rng.uniform(-1.0, 1.0)).collect(),
            }
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
