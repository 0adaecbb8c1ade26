//! One artefact for many CPUs (`compile --cpu x86-64-v3,x86-64-v4`): one code variant per
//! CPU, the runtime running the best one the host supports, `--cpu NAME` forcing one. Every
//! variant the host can run must match the reference executor within 1e-4; the others are
//! compiled and their selection checked.

use compiler::backend::cpu::CpuOptions;
use compiler::builder::{build, ConfigOverrides, DenseNetConfig};
use compiler::CompileOptions;
use ir::reference::Tensor;
use runtime::artefact::SectionKind;
use runtime::{Artefact, Device, Error, Model};

fn host_has_avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512vl")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512dq")
}

struct Fixture {
    graph: ir::Graph,
    input: Tensor,
    bytes: Vec<u8>,
    single: Vec<u8>,
}

/// A small DenseNet-BC compiled for AVX2 and AVX-512 in one artefact (and for AVX2 alone).
fn fixture() -> Fixture {
    let (cfg, graph) = small("densenet-bc-100", &[3, 3], 16, 2, 7);
    let cpu = |name: &str| CpuOptions {
        cpu: name.into(),
        ..Default::default()
    };
    let compile = |cpus: Vec<CpuOptions>| {
        let opts = CompileOptions {
            cpus,
            ..Default::default()
        };
        compiler::compile_graph(&cfg, graph.clone(), &opts)
            .and_then(|c| c.to_bytes())
            .expect("compile")
    };
    // The AVX2 variant named first: the compiler still writes the AVX-512 one first.
    let bytes = compile(vec![cpu("x86-64-v3"), cpu("x86-64-v4")]);
    let single = compile(vec![cpu("x86-64-v3")]);
    let input = Tensor::random_uniform(vec![2, 3, 16, 16], 11, -1.0, 1.0);
    Fixture {
        graph,
        input,
        bytes,
        single,
    }
}

/// `arch` with `block_config` at `image_size`, batch `batch`, random weights of `seed`.
fn small(
    arch: &str,
    block_config: &[usize],
    image_size: usize,
    batch: usize,
    seed: u64,
) -> (DenseNetConfig, ir::Graph) {
    let o = ConfigOverrides {
        block_config: Some(block_config.to_vec()),
        image_size: Some(image_size),
        ..Default::default()
    };
    let cfg = DenseNetConfig::resolve(Some(arch), &o).expect("config");
    let mut graph = build(&cfg, batch).expect("build");
    compiler::weights::randomize(&mut graph, seed);
    (cfg, graph)
}

fn run(model: &Model, x: &Tensor) -> Tensor {
    let mut s = model.session(Device::Cpu { threads: 2 }).expect("session");
    let y = s.run(&x.data, &x.shape).expect("run");
    Tensor::from_vec(model.output_shape().to_vec(), y).expect("output")
}

#[test]
fn the_best_supported_variant_runs_and_each_matches_the_reference() {
    let f = fixture();
    let artefact = Artefact::read(&f.bytes).expect("artefact");
    let cpu = artefact.manifest().cpu.clone().expect("cpu target");
    let names: Vec<&str> = cpu.variants.iter().map(|v| v.cpu.as_str()).collect();
    assert_eq!(names, ["x86-64-v4", "x86-64-v3"], "most demanding first");
    assert_eq!(
        cpu.cpu, "x86-64-v4",
        "the top-level target repeats the first variant"
    );
    assert_eq!(
        (cpu.variants[0].isa.as_str(), cpu.variants[1].isa.as_str()),
        ("avx512", "avx2")
    );
    // The first variant sits at offset 0 of both sections (what an older runtime loads).
    assert_eq!(cpu.variants[0].code.offset, 0);
    assert_eq!(cpu.variants[0].weights.offset, 0);
    // 16 and 8 lanes pack the weights differently: two copies.
    assert_ne!(cpu.variants[0].weights, cpu.variants[1].weights);
    let single = Artefact::read(&f.single).expect("single");
    assert!(single
        .manifest()
        .cpu
        .as_ref()
        .expect("cpu")
        .variants
        .is_empty());
    let len = |a: &Artefact, k| a.section(k).map_or(0, <[u8]>::len);
    eprintln!(
        "artefact bytes: AVX2 only {}, AVX2 + AVX-512 {} (weights {} vs {}, code {} vs {})",
        f.single.len(),
        f.bytes.len(),
        len(&single, SectionKind::Weights),
        len(&artefact, SectionKind::Weights),
        len(&single, SectionKind::CpuSharedObject),
        len(&artefact, SectionKind::CpuSharedObject),
    );

    let want = ir::reference::run(&f.graph, std::slice::from_ref(&f.input))
        .expect("reference")
        .remove(0);
    let avx512 = host_has_avx512();
    let best = Model::from_artefact(Artefact::read(&f.bytes).expect("artefact")).expect("load");
    let expected_best = if avx512 { "x86-64-v4" } else { "x86-64-v3" };
    assert_eq!(best.cpu_variant(), Some(expected_best));
    assert_eq!(best.cpu_variants(), ["x86-64-v4", "x86-64-v3"]);
    for name in ["x86-64-v3", "x86-64-v4"] {
        let forced = Model::from_artefact_for_cpu(Artefact::read(&f.bytes).expect("a"), Some(name));
        if name == "x86-64-v4" && !avx512 {
            let e = forced.expect_err("no AVX-512 here").to_string();
            assert!(e.contains("avx512f") && e.contains("lacks"), "{e}");
            eprintln!("x86-64-v4: not run (the host has no AVX-512): {e}");
            continue;
        }
        let model = forced.expect("load");
        assert_eq!(model.cpu_variant(), Some(name));
        let got = run(&model, &f.input);
        let err = got.rel_error(&want).expect("shape");
        eprintln!("{name}: relative error {err:.2e}");
        assert!(err <= 1e-4, "{name}: relative error {err:e}");
    }
    let err = Model::from_artefact_for_cpu(Artefact::read(&f.bytes).expect("a"), Some("znver3"))
        .expect_err("not in the artefact");
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    assert!(err.to_string().contains("x86-64-v4, x86-64-v3"), "{err}");
}

#[test]
fn a_variant_range_outside_its_section_is_refused() {
    let f = fixture();
    let artefact = Artefact::read(&f.bytes).expect("artefact");
    let mut manifest = artefact.manifest().clone();
    let code_len = artefact
        .section(SectionKind::CpuSharedObject)
        .expect("code")
        .len() as u64;
    let cpu = manifest.cpu.as_mut().expect("cpu");
    cpu.variants[1].code.bytes = code_len;
    let e = cpu
        .validate_variants(code_len, 1 << 40)
        .expect_err("past the end");
    assert!(e.to_string().contains("outside"), "{e}");
    cpu.variants[1].code.bytes = 64;
    cpu.variants[1].weights.offset = 3;
    let e = cpu
        .validate_variants(code_len, 1 << 40)
        .expect_err("misaligned");
    assert!(e.to_string().contains("64-byte"), "{e}");
}

/// `--cpu x86-64-v3,x86-64-v4 --precision bf16`: bf16 where the CPU has AVX512_BF16 (the
/// x86-64-v4 variant, with the feature added and required), fp32 on the AVX2 variant; the
/// bf16 variant is preferred where the host has it, the fp32 one runs elsewhere. A single
/// CPU without AVX512_BF16 is an error.
#[test]
fn bf16_variants_fall_back_to_fp32_where_the_cpu_lacks_it() {
    let (cfg, graph) = small("densenet-bc-100", &[2, 2], 12, 1, 21);
    let cpu = |name: &str| CpuOptions {
        cpu: name.into(),
        ..Default::default()
    };
    let opts = |cpus| CompileOptions {
        cpus,
        precision: compiler::backend::precision::Precision::Bf16,
        ..Default::default()
    };
    let bytes = compiler::compile_graph(
        &cfg,
        graph.clone(),
        &opts(vec![cpu("x86-64-v3"), cpu("x86-64-v4")]),
    )
    .and_then(|c| c.to_bytes())
    .expect("compile");
    let artefact = Artefact::read(&bytes).expect("artefact");
    let target = artefact.manifest().cpu.clone().expect("cpu");
    let isas: Vec<(&str, &str, &str)> = target
        .variants
        .iter()
        .map(|v| (v.cpu.as_str(), v.isa.as_str(), v.features.as_str()))
        .collect();
    assert_eq!(
        isas,
        [
            ("x86-64-v4", "avx512+bf16", "+avx512bf16"),
            ("x86-64-v3", "avx2", "")
        ]
    );
    assert_eq!(target.precision, "bf16", "the first variant's");

    let err = compiler::compile_graph(&cfg, graph.clone(), &opts(vec![cpu("x86-64-v3")]))
        .expect_err("no AVX512_BF16 in x86-64-v3")
        .to_string();
    assert!(err.contains("needs AVX512_BF16"), "{err}");

    let x = Tensor::random_uniform(vec![1, 3, 12, 12], 5, -1.0, 1.0);
    let want = ir::reference::run(&graph, std::slice::from_ref(&x))
        .expect("reference")
        .remove(0);
    let bf16 = host_has_avx512() && std::arch::is_x86_feature_detected!("avx512bf16");
    let model = Model::from_artefact(Artefact::read(&bytes).expect("a")).expect("load");
    let (variant, bound) = if bf16 {
        (
            "x86-64-v4",
            f64::from(compiler::backend::cpu::CPU_BF16_REL_BOUND),
        )
    } else {
        eprintln!("note: the host has no AVX512_BF16: the fp32 variant runs");
        ("x86-64-v3", 1e-4)
    };
    assert_eq!(model.cpu_variant(), Some(variant));
    let err = run(&model, &x).rel_error(&want).expect("shape");
    eprintln!("{variant}: relative error {err:.2e}");
    assert!(err <= bound, "{variant}: {err:e}");
    let fp32 = Model::from_artefact_for_cpu(Artefact::read(&bytes).expect("a"), Some("x86-64-v3"))
        .expect("the AVX2 variant runs everywhere");
    let err = run(&fp32, &x).rel_error(&want).expect("shape");
    assert!(err <= 1e-4, "fp32 fallback: {err:e}");
}

/// `--cpu x86-64-v3,znver4,sapphirerapids --precision bf16`: the AMX variant (tile kernels,
/// requiring `amx-tile` and `amx-bf16`) first, then the `vdpbf16ps` one, then fp32; the
/// runtime runs the first the host supports (asking the OS for the tile state), and a forced
/// AMX variant on a host without usable AMX is an error naming the missing feature.
#[test]
fn amx_variant_comes_first_and_runs_only_where_the_host_has_amx() {
    let (cfg, graph) = small("densenet-bc-100", &[2, 2], 12, 1, 22);
    let opts = CompileOptions {
        cpus: ["x86-64-v3", "znver4", "sapphirerapids"]
            .into_iter()
            .map(|name| CpuOptions {
                cpu: name.into(),
                ..Default::default()
            })
            .collect(),
        precision: compiler::backend::precision::Precision::Bf16,
        ..Default::default()
    };
    let bytes = compiler::compile_graph(&cfg, graph.clone(), &opts)
        .and_then(|c| c.to_bytes())
        .expect("compile");
    let artefact = Artefact::read(&bytes).expect("artefact");
    let target = artefact.manifest().cpu.clone().expect("cpu");
    let isas: Vec<(&str, &str)> = target
        .variants
        .iter()
        .map(|v| (v.cpu.as_str(), v.isa.as_str()))
        .collect();
    assert_eq!(
        isas,
        [
            ("sapphirerapids", "avx512+bf16+amx"),
            ("znver4", "avx512+bf16"),
            ("x86-64-v3", "avx2")
        ]
    );
    let amx_features = &target.variants[0].features;
    for f in ["+avx512bf16", "+amx-tile", "+amx-bf16"] {
        assert!(amx_features.split(',').any(|g| g == f), "{amx_features}");
    }
    assert!(!target.variants[1].features.contains("amx"));

    let x = Tensor::random_uniform(vec![1, 3, 12, 12], 6, -1.0, 1.0);
    let want = ir::reference::run(&graph, std::slice::from_ref(&x))
        .expect("reference")
        .remove(0);
    let bf16 = host_has_avx512() && std::arch::is_x86_feature_detected!("avx512bf16");
    let amx = bf16 && runtime::host_has_amx();
    let expected = match (amx, bf16) {
        (true, _) => "sapphirerapids",
        (false, true) => "znver4",
        (false, false) => "x86-64-v3",
    };
    let model = Model::from_artefact(Artefact::read(&bytes).expect("a")).expect("load");
    assert_eq!(model.cpu_variant(), Some(expected));
    let bound = if bf16 {
        f64::from(compiler::backend::cpu::CPU_BF16_REL_BOUND)
    } else {
        1e-4
    };
    let err = run(&model, &x).rel_error(&want).expect("shape");
    eprintln!("{expected}: relative error {err:.2e}");
    assert!(err <= bound, "{expected}: {err:e}");
    let forced =
        Model::from_artefact_for_cpu(Artefact::read(&bytes).expect("a"), Some("sapphirerapids"));
    if amx {
        let err = run(&forced.expect("AMX host"), &x)
            .rel_error(&want)
            .expect("shape");
        assert!(err <= bound, "forced sapphirerapids: {err:e}");
    } else {
        let Err(e) = forced else {
            panic!("the AMX variant loaded on a host without usable AMX");
        };
        let e = e.to_string();
        assert!(e.contains("amx") || e.contains("avx512"), "{e}");
        eprintln!("note: the host has no usable AMX-BF16: {e}");
    }
}

/// The bf16 handoff on the AMX tiles (`ConvPlan::handoffs`): a bottleneck stores its output
/// as bf16 pairs for its 3x3, which would round the same floats when packing them, so the
/// logits are bit-identical with and without it (each bottleneck in one K chunk either way:
/// the blocks are short). With f32 storage the pairs sit at the start of each f32-sized pixel
/// and the 3x3 copies them into its panel; with bf16 storage (`storage.rs`) the bottleneck
/// buffer is a bordered bf16 view and the 3x3 reads its A tiles from it in place
/// (`ConvPlan::rows_in_place`), against a bottleneck that stores bf16 and a 3x3 that packs
/// it without the handoff. The plans must show all that; the artefacts run where the host has
/// AMX and are compiled only elsewhere.
#[test]
fn amx_bf16_handoff_is_bit_identical_to_rounding_in_the_panel() {
    let (cfg, graph) = small("densenet121", &[3, 4, 4, 3], 40, 2, 23);
    let compile = |handoff: bool, storage: bool| {
        let opts = CompileOptions {
            cpus: vec![CpuOptions {
                cpu: "sapphirerapids".into(),
                tile_handoff: handoff,
                bf16_storage: storage,
                ..Default::default()
            }],
            precision: compiler::backend::precision::Precision::Bf16,
            ..Default::default()
        };
        compiler::compile_graph(&cfg, graph.clone(), &opts).expect("compile")
    };
    let count = |c: &compiler::Compiled, what: &str| {
        c.code.cpu[0]
            .kernels
            .iter()
            .filter(|k| k.plan.contains(what))
            .count()
    };
    let run_here = host_has_avx512()
        && std::arch::is_x86_feature_detected!("avx512bf16")
        && runtime::host_has_amx();
    let x = Tensor::random_uniform(vec![2, 3, 40, 40], 7, -1.0, 1.0);
    let logits = |c: &compiler::Compiled| {
        let m = Model::from_artefact(Artefact::read(&c.to_bytes().expect("bytes")).expect("a"))
            .expect("load");
        run(&m, &x)
    };
    let want = ir::reference::run(&graph, std::slice::from_ref(&x))
        .expect("reference")
        .remove(0);
    for storage in [false, true] {
        let (with, without) = (compile(true, storage), compile(false, storage));
        // 14 dense layers: every bottleneck hands off to its 3x3.
        assert_eq!(count(&with, "in_pairs: true"), 14, "storage {storage}");
        assert_eq!(count(&without, "in_pairs: true"), 0, "storage {storage}");
        let in_place = if storage { 14 } else { 0 };
        assert_eq!(count(&with, "rows_in_place: true"), in_place);
        assert_eq!(count(&without, "rows_in_place: true"), 0);
        if !run_here {
            eprintln!("note: the host has no usable AMX-BF16: compiled, not run");
            continue;
        }
        let (a, b) = (logits(&with), logits(&without));
        assert!(
            a.data == b.data,
            "handoff changed the logits (storage {storage})"
        );
        let err = a.rel_error(&want).expect("shape");
        assert!(
            err <= f64::from(compiler::backend::cpu::CPU_BF16_REL_BOUND),
            "{err:e}"
        );
    }
}

/// bf16 storage on the AMX tiles (`backend/cpu/storage.rs`): the dense blocks'
/// concatenations, the stem's output, the bottlenecks' outputs and the transitions' pooled
/// outputs are stored as bf16;
/// the graph input and the logits stay f32. Against the f32 reference the logits stay within
/// the bf16 bound, with an error of the same order as with f32 storage (each stored value is
/// rounded once more: at most twice that error here), and every image keeps its top-1 class.
#[test]
fn amx_bf16_storage_halves_the_activations_within_the_bf16_bound() {
    // Every transition's output a whole number of 16-channel vectors (64, 64, 96): with
    // `[3, 4, 4, 3]` the second writes 104 channels, and the blocks after it stay f32.
    let (cfg, graph) = small("densenet121", &[2, 2, 4, 2], 40, 4, 31);
    let compile = |storage: bool| {
        let opts = CompileOptions {
            cpus: vec![CpuOptions {
                cpu: "sapphirerapids".into(),
                bf16_storage: storage,
                ..Default::default()
            }],
            precision: compiler::backend::precision::Precision::Bf16,
            ..Default::default()
        };
        compiler::compile_graph(&cfg, graph.clone(), &opts).expect("compile")
    };
    let (with, without) = (compile(true), compile(false));
    // Which views of each kernel are bf16, as its plan shows them: `[input, output]`.
    let bf16_io = |c: &compiler::Compiled, name: &str| -> [bool; 2] {
        let k = c.code.cpu[0]
            .kernels
            .iter()
            .find(|k| k.name == name)
            .unwrap_or_else(|| panic!("no kernel {name}"));
        let flags: Vec<bool> = k
            .plan
            .match_indices("bf16: ")
            .map(|(i, _)| k.plan[i + 6..].starts_with("true"))
            .collect();
        [flags[0], flags[1]]
    };
    let expect = [
        ("features.conv0", [false, true]),
        ("features.pool0", [true, true]),
        // The bottleneck's bordered output, handed to the 3x3 (`ConvPlan::handoffs`).
        ("features.denseblock1.denselayer1.conv1", [true, true]),
        ("features.denseblock1.denselayer1.conv2", [true, true]),
        ("features.transition1.pool", [true, true]),
        ("features.transition1.conv", [true, true]),
        ("features.denseblock4.denselayer2.conv2", [true, true]),
        ("avgpool", [true, false]),
        ("classifier", [false, false]),
    ];
    for (name, io) in expect {
        assert_eq!(bf16_io(&with, name), io, "{name} with bf16 storage");
        assert_eq!(bf16_io(&without, name), [false; 2], "{name} without");
    }
    if !(host_has_avx512()
        && std::arch::is_x86_feature_detected!("avx512bf16")
        && runtime::host_has_amx())
    {
        eprintln!("note: the host has no usable AMX-BF16: compiled, not run");
        return;
    }
    let x = Tensor::random_uniform(vec![4, 3, 40, 40], 5, -1.0, 1.0);
    let logits = |c: &compiler::Compiled| {
        let m = Model::from_artefact(Artefact::read(&c.to_bytes().expect("bytes")).expect("a"))
            .expect("load");
        run(&m, &x)
    };
    let (a, b) = (logits(&with), logits(&without));
    assert!(a.data != b.data, "bf16 storage changed nothing");
    let want = ir::reference::run(&graph, std::slice::from_ref(&x))
        .expect("reference")
        .remove(0);
    let (err_a, err_b) = (
        a.rel_error(&want).expect("shape"),
        b.rel_error(&want).expect("shape"),
    );
    eprintln!("relative error: bf16 storage {err_a:.2e}, f32 storage {err_b:.2e}");
    let bound = f64::from(compiler::backend::cpu::CPU_BF16_REL_BOUND);
    assert!(err_a <= bound, "{err_a:e}");
    assert!(err_a <= 2.0 * err_b.max(1e-3), "{err_a:e} vs {err_b:e}");
    let top1 = |t: &Tensor| -> Vec<usize> {
        t.data
            .chunks(t.shape[1])
            .map(|row| {
                (0..row.len())
                    .max_by(|&i, &j| row[i].total_cmp(&row[j]))
                    .expect("classes")
            })
            .collect()
    };
    assert_eq!(top1(&a), top1(&want), "top-1 classes");
}

/// Only code on the AMX tiles requires AMX: a `native` fp32 artefact built on an AMX host
/// records the host's features without its `+amx-*` (whose check asks the OS for the tile
/// state), so it loads wherever the rest of the features are.
#[test]
fn only_tile_code_requires_amx() {
    let (cfg, graph) = small("densenet-bc-100", &[2, 2], 12, 1, 24);
    let opts = CompileOptions {
        cpus: vec![CpuOptions::default()],
        ..Default::default()
    };
    let bytes = compiler::compile_graph(&cfg, graph, &opts)
        .and_then(|c| c.to_bytes())
        .expect("compile");
    let artefact = Artefact::read(&bytes).expect("artefact");
    let features = artefact.manifest().cpu.clone().expect("cpu").features;
    assert!(!features.contains("+amx"), "{features}");
    assert!(!features.is_empty(), "native records the host's features");
}
