//! The output heads on the CUDA target, through the emulator: a small
//! DenseNet (random weights and BatchNorm statistics) with each head
//! compiled by `compiler::compile_graph` for CUDA only, the head launched
//! last, right after the classifier, and its output within 1e-5 absolute of
//! the reference executor on the unoptimised graph; softmax of large logits
//! (no overflow: the row max is subtracted) and sigmoid of huge ones; NaN
//! operating-point thresholds output exactly 0.5, whatever the logit.
//! (The one-op head cases of `support::KERNEL_CASES` run in `ptx.rs`.)

use crate::support::{arena, case, read, write, Case};
use compiler::backend::cuda::{self, emulate, CudaOptions};
use compiler::backend::kernel::KernelOp;
use compiler::builder::{build, ConfigOverrides, DenseNetConfig};
use compiler::driver::{apply_head, HeadKind};
use compiler::CompileOptions;
use ir::ops::Head;
use ir::reference::Tensor;

/// The bound every CUDA head is held to, absolute, against the f64 reference head.
const HEAD_ABS: f64 = 1e-5;

/// Largest absolute difference; NaN where exactly one of a pair is NaN.
fn max_abs(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .map(|(&g, &w)| match (g.is_nan(), w.is_nan()) {
            (true, true) => 0.0,
            (false, false) => (f64::from(g) - f64::from(w)).abs(),
            _ => f64::NAN,
        })
        .fold(
            0.0,
            |m: f64, d| if d.is_nan() { f64::NAN } else { m.max(d) },
        )
}

/// A small DenseNet with `head` on its classifier, and the head's thresholds.
fn net_with(head: HeadKind, seed: u64) -> (DenseNetConfig, ir::Graph) {
    let o = ConfigOverrides {
        block_config: Some(vec![2, 2]),
        growth_rate: Some(8),
        num_init_features: Some(16),
        image_size: Some(33),
        num_classes: Some(37),
        ..Default::default()
    };
    let cfg = DenseNetConfig::resolve(Some("densenet121"), &o).expect("config");
    let mut g = build(&cfg, 3).expect("build");
    compiler::weights::randomize(&mut g, seed);
    let thresholds = (head == HeadKind::OpNorm).then(|| {
        let mut rng = crate::cpu_support::Rng::new(seed);
        crate::support::thresholds(&mut rng, 37)
    });
    apply_head(&mut g, Some(head), thresholds, None).expect("head");
    (cfg, g)
}

#[test]
fn small_densenets_with_each_head_match_the_reference() {
    for (i, head) in [HeadKind::Softmax, HeadKind::Sigmoid, HeadKind::OpNorm]
        .into_iter()
        .enumerate()
    {
        let (cfg, g) = net_with(head, 40 + i as u64);
        let opts = CompileOptions {
            cpus: Vec::new(),
            cuda: Some(Default::default()),
            assemble_ptx: false,
            ..Default::default()
        };
        let compiled = compiler::compile_graph(&cfg, g.clone(), &opts)
            .unwrap_or_else(|e| panic!("{head}: {e}"));
        // The runtime's loader accepts it (the PTX's entries against the launch table).
        runtime::Artefact::read(&compiled.to_bytes().expect("bytes"))
            .unwrap_or_else(|e| panic!("{head}: the loader refuses the artefact: {e}"));
        let info = compiled.manifest().head.as_ref().expect("head recorded");
        assert_eq!((info.kind.as_str(), info.classes), (head.name(), 37));
        let code = compiled.code.cuda.as_ref().expect("cuda code");
        // The head is the last launch, right after the classifier's GEMM.
        let descs = code.descs();
        let n = descs.len();
        assert!(matches!(descs[n - 1].op, KernelOp::Head(_)), "{head}");
        assert!(matches!(descs[n - 2].op, KernelOp::Linear(_)), "{head}");
        let last = code.kernels.last().expect("launches");
        assert_eq!(last.desc, n - 1);
        let kind = match head {
            HeadKind::OpNorm => "opnorm",
            other => other.name(),
        };
        assert!(last.symbol.ends_with(kind), "{head}: {}", last.symbol);
        assert_eq!(last.grid, [3, 1, 1], "{head}: one block per image");

        let net = &compiled.kernels;
        let x = Tensor::random_uniform(g.node(g.inputs()[0]).ty.shape.clone(), 7, -1.0, 1.0);
        let want = ir::reference::run(&g, std::slice::from_ref(&x)).expect("reference");
        let mut mem = arena(net.arena_bytes);
        write(&mut mem, &net.inputs[0], &x);
        emulate::run(code, &mut mem).unwrap_or_else(|e| panic!("{head}: {e}"));
        let got = read(&mem, &net.outputs[0], &want[0].shape);
        let err = max_abs(&got.data, &want[0].data);
        eprintln!("{head}: max |cuda - reference| = {err:e}");
        assert!(err <= HEAD_ABS, "{head}: {err:e}");
        // Probabilities that say something: not all equal, softmax rows summing to 1.
        let (lo, hi) = got
            .data
            .iter()
            .fold((1.0f32, 0.0f32), |(l, h), &v| (l.min(v), h.max(v)));
        assert!(hi - lo > 1e-3, "{head}: outputs in [{lo}, {hi}]");
        if head == HeadKind::Softmax {
            for row in got.data.chunks(37) {
                let s: f32 = row.iter().sum();
                assert!((s - 1.0).abs() < 1e-5, "row sum {s}");
            }
        }
    }
}

/// Run the one-op head case `c` on `input` instead of its own; the output
/// and the f64 reference head (`Head::apply_row`) of the same rows.
fn run_rows(
    c: &Case,
    input: &Tensor,
    head: &Head,
    thresholds: Option<&[f32]>,
) -> (Tensor, Vec<f32>) {
    let compiled = cuda::lower(std::slice::from_ref(&c.desc), &CudaOptions::default())
        .unwrap_or_else(|e| panic!("{}: {e}", c.desc.name));
    let mut mem = arena(compiled.arena_bytes);
    write(&mut mem, &c.desc.input, input);
    emulate::run(&compiled, &mut mem).unwrap_or_else(|e| panic!("{}: {e}", c.desc.name));
    let got = read(&mem, &c.desc.output, &input.shape);
    let classes = input.shape[1];
    let mut want = Vec::with_capacity(input.data.len());
    for row in input.data.chunks(classes) {
        let mut r: Vec<f64> = row.iter().map(|&v| f64::from(v)).collect();
        head.apply_row(&mut r, thresholds);
        want.extend(r.iter().map(|&v| v as f32));
    }
    (got, want)
}

#[test]
fn softmax_of_large_logits_is_stable() {
    let c = case(5, "softmax n3 c300");
    let mut x = c.input.clone();
    // Row 0: logits around 85 (e^90 overflows f32), two maxima; row 1: every
    // logit 1e4 but one; row 2: a row of -1e4 with one 0.
    for (i, v) in x.data[..300].iter_mut().enumerate() {
        *v = 80.0 + (i % 11) as f32;
    }
    x.data[17] = 90.0;
    x.data[250] = 90.0;
    x.data[300..600].fill(1.0e4);
    x.data[301] = 1.0e4 - 3.0;
    x.data[600..].fill(-1.0e4);
    x.data[899] = 0.0;
    let (got, want) = run_rows(&c, &x, &Head::Softmax, None);
    assert!(got.data.iter().all(|v| v.is_finite()), "non-finite output");
    let err = max_abs(&got.data, &want);
    assert!(err <= HEAD_ABS, "{err:e}");
    for row in got.data.chunks(300) {
        let s: f32 = row.iter().sum();
        assert!((s - 1.0).abs() < 1e-5, "row sum {s}");
    }
    assert_eq!(got.data[899], 1.0);
    assert_eq!(got.data[600], 0.0);

    // Sigmoid saturates cleanly: no NaN from `inf / inf`.
    let c = case(6, "sigmoid n1 c40");
    let mut x = c.input.clone();
    x.data[..8].copy_from_slice(&[90.0, -90.0, 1e30, -1e30, f32::MAX, f32::MIN, 0.0, -0.0]);
    let (got, want) = run_rows(&c, &x, &Head::Sigmoid, None);
    // sigmoid(-90) is 8e-40 (a subnormal): 2^129.8 overflows to inf, giving 0.
    assert_eq!(&got.data[..8], &[1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.5, 0.5]);
    assert!(want[1] < 1e-38);
    let err = max_abs(&got.data, &want);
    assert!(err <= HEAD_ABS, "{err:e}");
}

#[test]
fn nan_thresholds_output_one_half() {
    // Classes 3 and 10 have NaN thresholds (`support::thresholds`).
    let c = case(8, "opnorm n2 c12");
    let KernelOp::Head(compiler::backend::kernel::HeadKernel::SigmoidOpNorm(t)) = &c.desc.op else {
        panic!("an op-norm head");
    };
    assert!(t[3].is_nan() && t[10].is_nan() && !t[4].is_nan());
    let t = t.as_slice().to_vec();
    let mut x = c.input.clone();
    // Whatever the logit, NaN and infinities included.
    x.data[3] = f32::NAN;
    x.data[10] = f32::INFINITY;
    x.data[12 + 3] = f32::NEG_INFINITY;
    x.data[12 + 10] = 1e30;
    // Thresholds map to 0.5 elsewhere: a logit whose sigmoid is the threshold.
    x.data[4] = (t[4] / (1.0 - t[4])).ln();
    let head = Head::SigmoidOpNorm {
        thresholds: "t".into(),
    };
    let (got, want) = run_rows(&c, &x, &head, Some(&t));
    for i in [3, 10, 12 + 3, 12 + 10] {
        assert_eq!(got.data[i], 0.5, "class {}", i % 12);
        assert_eq!(want[i], 0.5);
    }
    assert!((got.data[4] - 0.5).abs() < 1e-6, "{}", got.data[4]);
    let err = max_abs(&got.data, &want);
    assert!(err <= HEAD_ABS, "{err:e}");
}

/// The PTX uses the instructions the emulator models: `ex2.approx.f32` (not the
/// flush-to-zero form) and IEEE `div.rn.f32`; softmax reduces in shared memory.
#[test]
fn head_ptx_uses_the_emulated_instructions() {
    for spec in ["softmax n2 c300", "sigmoid c20", "opnorm c20"] {
        let c = case(9, spec);
        let compiled = cuda::lower(std::slice::from_ref(&c.desc), &CudaOptions::default())
            .unwrap_or_else(|e| panic!("{spec}: {e}"));
        let ptx = &compiled.ptx;
        assert!(ptx.contains("ex2.approx.f32"), "{spec}: no ex2.approx.f32");
        assert!(
            !ptx.contains("ex2.approx.ftz"),
            "{spec}: flushes subnormals"
        );
        assert!(ptx.contains("div.rn.f32"), "{spec}: no div.rn.f32");
        let shared = spec.starts_with("softmax");
        assert_eq!(ptx.contains("bar.sync"), shared, "{spec}");
        assert_eq!(
            compiled.entries[0].static_shared_bytes,
            if shared { 2048 } else { 0 }
        );
    }
}

/// `--dump-dir` shows the head at every stage: the IR before and after every pass (it is an
/// ordinary op the passes leave alone), the PTX entry and the last line of the launch table.
#[test]
fn dumps_show_the_head() {
    let (cfg, g) = net_with(HeadKind::OpNorm, 3);
    let dir = std::env::temp_dir().join(format!("densenetc-cuda-heads-{}", std::process::id()));
    let opts = CompileOptions {
        cpus: Vec::new(),
        cuda: Some(Default::default()),
        assemble_ptx: false,
        dump_dir: Some(dir.clone()),
        ..Default::default()
    };
    compiler::compile_graph(&cfg, g, &opts).expect("compile");
    let mut irs: Vec<_> = std::fs::read_dir(&dir)
        .expect("dump dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "ir"))
        .collect();
    irs.sort();
    assert!(irs.len() >= 2, "{irs:?}");
    for ir in &irs {
        let text = std::fs::read_to_string(ir).expect("read");
        assert!(text.contains("sigmoid_op_norm"), "{}", ir.display());
    }
    let ptx = std::fs::read_to_string(dir.join("cuda.ptx")).expect("ptx");
    assert!(ptx.contains("_opnorm("), "no op-norm entry");
    let table = std::fs::read_to_string(dir.join("cuda-launches.txt")).expect("table");
    let last = table
        .lines()
        .rfind(|l| l.starts_with("dnc_"))
        .expect("a launch");
    assert!(
        last.contains("_opnorm ") && last.contains("opnorm c=37"),
        "{last}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
