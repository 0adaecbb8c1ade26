//! The CUDA backend without a GPU.
//!
//! - Every kernel kind (odd channel counts, stride 2, prologues, slices of
//!   a wider buffer, in place) is lowered to PTX and run by the CPU
//!   emulator of the same emission code, which checks bounds, grid
//!   coverage (each output element stored exactly once) and shared-memory
//!   races; results must be within 1e-4 of the reference executor, and the
//!   arena outside the output view must be untouched.
//! - Whole small DenseNets run kernel after kernel through block buffers.
//! - The PTX assembles with `ptxas` for sm_80 and sm_90 with no spills in
//!   the conv kernels (skipped, with a printed reason, without ptxas).
//! - A snapshot pins the PTX of a tiny kernel list.
//! - The same in `--precision tf32|fp16|bf16` (tensor-core GEMMs): assembly
//!   without spills and a snapshot each; their numerics are in
//!   `mma.rs`.
//! - Kernels of equal shape share one `.entry`: DenseNet-121 gets one entry
//!   per distinct shape, and launches of a shared entry with their own
//!   weights and views each compute their reference.

use crate::support::{arena, case, ptxas_or_skip, read, write, Case, KERNEL_CASES};
use compiler::backend::cuda::{self, emulate, ptxas, CudaOptions, Precision};
use compiler::backend::graph::{kernels_of, GraphKernels};
use compiler::backend::kernel::{KernelDesc, KernelOp};
use compiler::backend::BackendError;
use compiler::builder::{build, ConfigOverrides, DenseNetConfig, Stem, PRESETS};
use compiler::passes::optimize;
use ir::reference::Tensor;

fn cases() -> Vec<Case> {
    KERNEL_CASES
        .iter()
        .enumerate()
        .map(|(i, spec)| case(100 + i as u64, spec))
        .collect()
}

fn is_conv(d: &KernelDesc) -> bool {
    matches!(d.op, KernelOp::Conv(_) | KernelOp::Linear(_))
}

#[test]
fn emulated_kernels_match_the_reference() {
    for c in cases() {
        let name = &c.desc.name;
        let compiled = cuda::lower(std::slice::from_ref(&c.desc), &CudaOptions::default())
            .unwrap_or_else(|e| panic!("{name}: lowering failed: {e}"));
        let mut mem = arena(compiled.arena_bytes);
        write(&mut mem, &c.desc.input, &c.input);
        let before = mem.clone();
        emulate::run(&compiled, &mut mem).unwrap_or_else(|e| panic!("{name}: {e}"));
        let got = read(&mem, &c.desc.output, &c.reference.shape);
        let err = got.rel_error(&c.reference).expect("shape");
        assert!(
            err <= 1e-4,
            "{name}: relative error {err:e} ({})",
            compiled.kernels[0].plan
        );
        let out = c.desc.output;
        let mut inside = vec![false; mem.len()];
        for n in 0..out.n {
            for y in 0..out.h {
                for x in 0..out.w {
                    for ch in 0..out.channels {
                        inside[out.element(n, y, x, ch)] = true;
                    }
                }
            }
        }
        // Nothing else changes, the output buffer's border included (the
        // CPU's padding: CUDA kernels leave it alone).
        for (e, (now, was)) in mem.iter().zip(&before).enumerate() {
            assert!(
                inside[e] || now.to_bits() == was.to_bits(),
                "{name}: arena element {e} outside the output view changed"
            );
        }
    }
}

/// Small DenseNets through the real pipeline (BN folding, prologue
/// fusion, transition reorder, concat in place, memory plan with zero
/// borders), every kernel writing its slice of a block buffer.
fn planned(arch: &str, o: &ConfigOverrides, batch: usize, seed: u64) -> (ir::Graph, GraphKernels) {
    let cfg = DenseNetConfig::resolve(Some(arch), o).expect("config");
    let mut g = build(&cfg, batch).expect("build");
    compiler::weights::randomize(&mut g, seed);
    let mut p = g.clone();
    optimize(&mut p, true).expect("pipeline");
    let kernels = kernels_of(&p).expect("kernels");
    (g, kernels)
}

fn small_nets() -> Vec<(&'static str, ConfigOverrides, usize)> {
    vec![
        (
            "densenet-bc-100",
            ConfigOverrides {
                block_config: Some(vec![2, 3, 2]),
                image_size: Some(11),
                ..Default::default()
            },
            2,
        ),
        (
            "densenet121",
            ConfigOverrides {
                block_config: Some(vec![2, 2]),
                growth_rate: Some(8),
                num_init_features: Some(16),
                image_size: Some(33),
                num_classes: Some(10),
                conv_bias: Some(true),
                ..Default::default()
            },
            1,
        ),
        (
            "densenet-40",
            ConfigOverrides {
                block_config: Some(vec![3, 2]),
                image_size: Some(9),
                stem: Some(Stem::Cifar),
                ..Default::default()
            },
            1,
        ),
    ]
}

#[test]
fn emulated_planned_densenets_match_the_reference() {
    for (i, (arch, o, batch)) in small_nets().into_iter().enumerate() {
        let (g, net) = planned(arch, &o, batch, 3 + i as u64);
        let x: Vec<Tensor> = g
            .inputs()
            .iter()
            .map(|&id| Tensor::random_uniform(g.node(id).ty.shape.clone(), 9, -1.0, 1.0))
            .collect();
        let want = ir::reference::run(&g, &x).expect("reference");
        let compiled = cuda::lower(&net.kernels, &CudaOptions::default()).expect("lower");
        assert!(compiled.arena_bytes <= net.arena_bytes);
        let mut mem = arena(net.arena_bytes);
        for (v, t) in net.inputs.iter().zip(&x) {
            write(&mut mem, v, t);
        }
        emulate::run(&compiled, &mut mem).unwrap_or_else(|e| panic!("{arch}: {e}"));
        let got = read(&mem, &net.outputs[0], &want[0].shape);
        let err = got.rel_error(&want[0]).expect("shape");
        assert!(err <= 1e-4, "{arch} b{batch}: relative error {err:e}");
        // With bottlenecks, the dense layers of a block share their 3x3
        // conv's entry (DenseNet-40's 3x3 convs read ever more channels).
        assert!(
            arch == "densenet-40" || compiled.entries.iter().any(|e| e.launches > 1),
            "{arch}: no shared entry"
        );
    }
}

/// `d` without what a launch binds (weights, view offsets, a 1x1 GEMM's
/// input channels) or names: two descriptions with equal `shape`s need the
/// same code.
fn shape(d: &KernelDesc) -> KernelDesc {
    use std::sync::Arc;
    let none = || Arc::new(Vec::new());
    let strip = |a: &mut Option<compiler::backend::kernel::Affine>| {
        if let Some(a) = a {
            (a.scale, a.shift) = (none(), none());
        }
    };
    let mut d = d.clone();
    d.name.clear();
    for v in [&mut d.input, &mut d.output] {
        (v.offset, v.channel_offset) = (0, 0);
    }
    match &mut d.op {
        KernelOp::Conv(c) => {
            if c.kernel == [1, 1] {
                d.input.channels = 0;
            }
            c.weight = none();
            c.bias = c.bias.as_ref().map(|_| none());
            strip(&mut c.prologue);
        }
        KernelOp::Linear(l) => {
            d.input.channels = 0;
            l.weight = none();
            l.bias = l.bias.as_ref().map(|_| none());
        }
        KernelOp::MaxPool(p) | KernelOp::AvgPool(p) => strip(&mut p.prologue),
        KernelOp::GlobalAvgPool { prologue } => strip(prologue),
        KernelOp::Affine(a) => (a.scale, a.shift) = (none(), none()),
        KernelOp::Head(_) => {}
    }
    d
}

/// DenseNet-121 at 32x32: one `.entry` per distinct kernel shape (and per
/// distinct bordered output geometry, for the border zeroing), every
/// launch of one entry with its own arguments; the 58 3x3 growth convs
/// share 4 entries, one per resolution, and so do the 58 1x1 bottlenecks
/// (their input channels are an argument).
#[test]
fn densenet121_gets_one_entry_per_kernel_shape() {
    let o = ConfigOverrides {
        image_size: Some(32),
        ..Default::default()
    };
    let (_, net) = planned("densenet121", &o, 1, 2);
    let compiled = cuda::lower(&net.kernels, &CudaOptions::default()).expect("lower");
    let mut shapes: Vec<KernelDesc> = Vec::new();
    for d in &net.kernels {
        let s = shape(d);
        if !shapes.contains(&s) {
            shapes.push(s);
        }
    }
    eprintln!(
        "densenet121 32x32: {} launches, {} entries, {} KiB of PTX",
        compiled.kernels.len(),
        compiled.entries.len(),
        compiled.ptx.len() / 1024
    );
    // One launch per kernel description (borders are left alone), one
    // entry per shape.
    assert_eq!(compiled.kernels.len(), net.kernels.len());
    assert_eq!(compiled.entries.len(), shapes.len());
    assert_eq!(
        compiled.ptx.matches(".entry").count(),
        compiled.entries.len()
    );
    let conv3x3: Vec<_> = compiled
        .entries
        .iter()
        .filter(|e| e.symbol.ends_with("_gemm3x3"))
        .collect();
    assert_eq!(conv3x3.len(), 4, "{conv3x3:?}");
    assert_eq!(conv3x3.iter().map(|e| e.launches).sum::<usize>(), 58);
    // Bottlenecks (58), transitions (3) and the classifier: 4 + 3 + 1 entries.
    let gemm1x1: Vec<_> = compiled
        .entries
        .iter()
        .filter(|e| e.symbol.ends_with("_gemm1x1"))
        .collect();
    assert_eq!(gemm1x1.len(), 8, "{gemm1x1:?}");
    assert_eq!(gemm1x1.iter().map(|e| e.launches).sum::<usize>(), 62);
    for (i, e) in compiled.entries.iter().enumerate() {
        let launches: Vec<_> = compiled.kernels.iter().filter(|l| l.entry == i).collect();
        assert_eq!(launches.len(), e.launches, "{}", e.symbol);
        for l in &launches {
            assert_eq!(l.symbol, e.symbol);
            assert_eq!(l.block[0], e.threads);
            let kinds: Vec<cuda::ParamKind> = l.params.iter().map(|p| p.kind()).collect();
            assert_eq!(kinds, e.params, "{}", e.symbol);
        }
        // No two launches of an entry bind the same arguments.
        for (i, a) in launches.iter().enumerate() {
            for b in &launches[i + 1..] {
                assert_ne!(a.params, b.params, "{}", e.symbol);
            }
        }
    }
}

/// Two convs of one shape in different buffers, each with its own weights
/// and input: one entry, two launches with their own arguments, and each
/// output matches its own reference through the emulator.
#[test]
fn launches_of_a_shared_entry_bind_their_own_weights_and_views() {
    let spec = "conv n2 c16 9x11 oc12 k3 p1 pro bias relu block";
    let (a, mut b) = (case(21, spec), case(22, spec));
    let shift = a.desc.output.end_bytes().next_multiple_of(64) + 4 * 7;
    b.desc.input.offset += shift;
    b.desc.output.offset += shift;
    let descs = [a.desc.clone(), b.desc.clone()];
    let compiled = cuda::lower(&descs, &CudaOptions::default()).expect("lower");
    assert_eq!(compiled.kernels.len(), 2);
    assert_eq!(compiled.entries.len(), 1, "{:?}", compiled.entries);
    assert_eq!(compiled.ptx.matches(".entry").count(), 1);
    assert_eq!(compiled.kernels[0].symbol, compiled.kernels[1].symbol);
    assert_ne!(compiled.kernels[0].params, compiled.kernels[1].params);
    let mut mem = arena(compiled.arena_bytes);
    write(&mut mem, &a.desc.input, &a.input);
    write(&mut mem, &b.desc.input, &b.input);
    emulate::run(&compiled, &mut mem).unwrap_or_else(|e| panic!("{e}"));
    for c in [&a, &b] {
        let got = read(&mem, &c.desc.output, &c.reference.shape);
        let err = got.rel_error(&c.reference).expect("shape");
        assert!(err <= 1e-4, "{}: relative error {err:e}", c.desc.name);
    }
    // The second launch bound to the first's weights computes the wrong conv.
    let mut crossed = compiled.clone();
    crossed.kernels[1].params[..4].copy_from_slice(&compiled.kernels[0].params[..4]);
    let mut mem = arena(compiled.arena_bytes);
    write(&mut mem, &a.desc.input, &a.input);
    write(&mut mem, &b.desc.input, &b.input);
    emulate::run(&crossed, &mut mem).expect("in bounds");
    let got = read(&mem, &b.desc.output, &b.reference.shape);
    assert!(got.rel_error(&b.reference).expect("shape") > 1e-3);
}

fn report_table(compiled: &cuda::CompiledCuda, report: &ptxas::PtxasReport) -> String {
    let mut s = format!("ptxas {} report:\n", report.arch);
    for spec in &compiled.kernels {
        let k = report.kernel(&spec.symbol);
        s += &format!(
            "  {:<18} regs {:>3} spill st/ld {:>3}/{:<3} smem {:>6}  grid {:?} block {}  {}\n",
            spec.symbol.chars().take(18).collect::<String>(),
            k.map_or(0, |k| k.registers),
            k.map_or(0, |k| k.spill_store_bytes),
            k.map_or(0, |k| k.spill_load_bytes),
            k.map_or(0, |k| k.shared_bytes),
            spec.grid,
            spec.block[0],
            spec.plan
        );
    }
    s
}

fn assemble_all(test: &str, descs: &[KernelDesc]) {
    assemble_all_in(test, descs, Precision::Fp32);
}

fn assemble_all_in(test: &str, descs: &[KernelDesc], precision: Precision) {
    let Some(ptxas) = ptxas_or_skip(test) else {
        return;
    };
    for arch in ["sm_80", "sm_90"] {
        let opts = CudaOptions {
            arch: arch.into(),
            precision,
            ..CudaOptions::default()
        };
        let mut compiled = cuda::lower(descs, &opts).expect("lower");
        assert!(compiled.ptx.contains(&format!(".target {arch}")));
        let gemms = descs.iter().filter(|d| is_conv(d)).count();
        for p in TENSOR_CORES {
            assert_eq!(
                compiled.ptx.contains(&mma_instruction(p)),
                precision == p && gemms > 0,
                "{arch} {precision}: {p}'s mma"
            );
        }
        let report = compiled
            .assemble(&ptxas)
            .unwrap_or_else(|e| panic!("{arch}: {e}"));
        eprintln!("{test}\n{}", report_table(&compiled, &report));
        assert_eq!(compiled.cubin.as_deref(), Some(&report.cubin[..]));
        assert!(report.cubin.starts_with(b"\x7fELF"));
        assert_eq!(
            report.kernels.len(),
            compiled.entries.len(),
            "{}",
            report.log
        );
        for spec in &compiled.kernels {
            let desc = &descs[spec.desc];
            let k = report
                .kernel(&spec.symbol)
                .unwrap_or_else(|| panic!("{arch}: no report for {}", spec.symbol));
            assert!(
                !(is_conv(desc) && k.spills()),
                "{arch}: {} spills: {k:?}",
                spec.symbol
            );
            assert!(k.registers * spec.block[0] <= 65536, "{arch}: {k:?}");
        }
    }
}

#[test]
fn ptx_of_every_kernel_kind_assembles_for_sm80_and_sm90() {
    let descs: Vec<KernelDesc> = cases().into_iter().map(|c| c.desc).collect();
    assemble_all("every kernel kind", &descs);
}

#[test]
fn ptx_of_a_planned_densenet_assembles() {
    let (arch, o, batch) = small_nets().remove(1);
    let (_, net) = planned(arch, &o, batch, 7);
    assemble_all("planned small densenet121", &net.kernels);
}

/// The emulator's coverage check is live: a grid one block short leaves
/// output elements unwritten, and it says so.
#[test]
fn emulator_reports_a_short_grid() {
    for spec in ["conv n2 c6 9x9 oc20 k3 p1 pro", "max c5 20x20 k3 s1 p1"] {
        let c = case(5, spec);
        let mut compiled =
            cuda::lower(std::slice::from_ref(&c.desc), &CudaOptions::default()).expect("lower");
        compiled.kernels[0].grid[0] -= 1;
        let mut mem = arena(compiled.arena_bytes);
        write(&mut mem, &c.desc.input, &c.input);
        match emulate::run(&compiled, &mut mem) {
            Err(emulate::EmuError::Coverage { message, .. }) => {
                assert!(message.contains("stored 0 times"), "{message}")
            }
            other => panic!("{spec}: expected a coverage error, got {other:?}"),
        }
    }
}

#[test]
fn unknown_architectures_are_rejected() {
    let c = case(1, "max c4 4x4 k2 s2");
    let opts = CudaOptions {
        arch: "sm_75".into(),
        ..CudaOptions::default()
    };
    match cuda::lower(&[c.desc], &opts) {
        Err(BackendError::Target(m)) => assert!(m.contains("sm_75") && m.contains("sm_80"), "{m}"),
        other => panic!("expected a target error, got {other:?}"),
    }
}

#[test]
fn invalid_kernels_are_rejected() {
    let mut c = case(1, "conv c4 4x4 oc4 k3 p1");
    c.desc.output.channels = 5;
    let err = cuda::lower(&[c.desc], &CudaOptions::default()).expect_err("invalid");
    assert!(
        matches!(err, BackendError::InvalidKernel { index: 0, .. }),
        "{err}"
    );
}

/// The PTX of a tiny list: a 3x3 conv with prologue into a block slice and
/// a max pool. Regenerate with `INSTA_UPDATE=always` after a deliberate change.
#[test]
fn ptx_snapshot_tiny() {
    let descs = [
        case(1, "conv c3 4x4 oc4 k3 p1 pro bias relu block").desc,
        case(2, "max c5 4x4 k3 s2 p1").desc,
    ];
    let compiled = cuda::lower(&descs, &CudaOptions::default()).expect("lower");
    insta::assert_snapshot!("cuda_ptx_tiny", compiled.ptx);
}

fn presets_assemble_without_spills(test: &str, presets: &[&str]) {
    presets_assemble_without_spills_in(test, presets, Precision::Fp32);
}

fn presets_assemble_without_spills_in(test: &str, presets: &[&str], precision: Precision) {
    if ptxas_or_skip(test).is_none() {
        return;
    }
    for arch in presets {
        let (_, net) = planned(arch, &ConfigOverrides::default(), 1, 1);
        let t = std::time::Instant::now();
        let opts = CudaOptions {
            precision,
            ..CudaOptions::default()
        };
        let compiled = cuda::lower(&net.kernels, &opts).expect("lower");
        eprintln!(
            "{arch} b1: {} launches lowered in {:.2?}, {} KiB of PTX",
            compiled.kernels.len(),
            t.elapsed(),
            compiled.ptx.len() / 1024
        );
        assemble_all_in(&format!("{arch} {precision}"), &net.kernels, precision);
    }
}

/// DenseNet-121 and DenseNet-40 at batch 1, through the real pipeline: the
/// PTX for sm_80 and sm_90 assembles with no spills in any conv kernel.
#[test]
fn densenet121_and_densenet40_assemble_without_spills() {
    presets_assemble_without_spills("densenet121/40", &["densenet121", "densenet-40"]);
}

/// Every preset (about 4 minutes on 2 cores):
/// `cargo test -p compiler --test cuda ptx:: -- --ignored`.
#[test]
#[ignore = "slow: every preset through ptxas twice"]
fn every_preset_assembles_without_spills() {
    presets_assemble_without_spills("every preset", PRESETS);
}

/// The tensor-core precisions.
const TENSOR_CORES: [Precision; 3] = [Precision::Tf32, Precision::Fp16, Precision::Bf16];

/// The mma instruction of a tensor-core precision.
fn mma_instruction(p: Precision) -> String {
    let t = match p {
        Precision::Fp16 => "f16",
        p => p.name(),
    };
    format!("mma.sync.aligned.m16n8k8.row.col.f32.{t}.{t}.f32")
}

#[test]
fn tensor_core_ptx_of_every_kernel_kind_assembles_for_sm80_and_sm90() {
    let descs: Vec<KernelDesc> = cases().into_iter().map(|c| c.desc).collect();
    for p in TENSOR_CORES {
        assemble_all_in(&format!("every kernel kind, {p}"), &descs, p);
    }
}

/// DenseNet-121 and DenseNet-40 at batch 1 on the tensor cores: no spills
/// in any GEMM.
#[test]
fn densenet121_and_densenet40_assemble_without_spills_on_tensor_cores() {
    for p in TENSOR_CORES {
        presets_assemble_without_spills_in(
            &format!("densenet121/40 {p}"),
            &["densenet121", "densenet-40"],
            p,
        );
    }
}

/// Every preset on the tensor cores (about 4 minutes per precision on 2
/// cores): `cargo test -p compiler --test cuda ptx:: -- --ignored`.
#[test]
#[ignore = "slow: every preset through ptxas twice per precision"]
fn every_preset_assembles_without_spills_on_tensor_cores() {
    for p in TENSOR_CORES {
        presets_assemble_without_spills_in(&format!("every preset {p}"), PRESETS, p);
    }
}

/// The PTX of a tiny list on the tensor cores: a 3x3 conv with prologue
/// into a block slice (one mma per k-slice per warp tile) and a linear
/// layer.
#[test]
fn ptx_snapshot_tiny_tensor_cores() {
    let descs = [
        case(1, "conv c3 4x4 oc4 k3 p1 pro bias relu block").desc,
        case(3, "linear c20 oc10 bias").desc,
    ];
    for p in TENSOR_CORES {
        let opts = CudaOptions {
            precision: p,
            ..CudaOptions::default()
        };
        let compiled = cuda::lower(&descs, &opts).expect("lower");
        let mma = compiled.ptx.matches(&mma_instruction(p)).count();
        // Each kernel: 64 threads (2 warps), 16x16 warp tiles of two 16x8
        // mmas per 8-deep k-slice, one loop body each.
        assert_eq!(mma, 4, "{p}: {}", compiled.ptx);
        let cvt = match p {
            Precision::Tf32 => "cvt.rna.tf32.f32",
            Precision::Fp16 => "cvt.rn.f16.f32",
            _ => "cvt.rn.bf16.f32",
        };
        assert!(compiled.ptx.contains(cvt), "{p}");
        insta::assert_snapshot!(format!("cuda_ptx_tiny_{p}"), compiled.ptx);
    }
}
