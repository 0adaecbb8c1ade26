//! The CUDA artefact without a GPU: a small DenseNet is compiled for
//! `cpu,cuda`, written and read back by the runtime's loader, and its launch
//! table is then driven through the SIMT emulator exactly as the CUDA
//! executor launches it (entry by name, the table's grid and block, the
//! weights from the artefact's weights section at the table's range and
//! offsets, input and output through the manifest's arena views). The result
//! must match the reference executor on the unoptimised graph. Also: a
//! wrong table is caught, the artefact's PTX assembles with ptxas, and a
//! `--precision tf32|fp16|bf16` artefact records it and computes within its
//! bound.

use compiler::backend::cuda::emulate::{self, EmuError, TableLaunch};
use compiler::backend::cuda::{ptxas, KernelParam, Precision};
use compiler::builder::{build, ConfigOverrides, DenseNetConfig};
use compiler::targets::CompiledTargets;
use ir::reference::Tensor;
use runtime::artefact::{ArenaView, CudaArg, TensorSpec};
use runtime::{Artefact, SectionKind};

fn ptxas_or_skip(test: &str) -> Option<std::path::PathBuf> {
    match ptxas::find() {
        Ok(p) => Some(p),
        Err(e) => {
            eprintln!("{test}: skipped: ptxas not found (run scripts/install-ptxas.sh) [{e}]");
            None
        }
    }
}

struct Built {
    graph: ir::Graph,
    code: CompiledTargets,
    artefact: Artefact,
}

fn small() -> (DenseNetConfig, usize) {
    let o = ConfigOverrides {
        block_config: Some(vec![2, 3]),
        growth_rate: Some(8),
        num_init_features: Some(16),
        image_size: Some(35),
        num_classes: Some(10),
        ..Default::default()
    };
    (
        DenseNetConfig::resolve(Some("densenet121"), &o).expect("config"),
        2,
    )
}

fn compile(cpu: bool, assemble: bool) -> Built {
    compile_in(cpu, assemble, Precision::Fp32)
}

fn compile_in(cpu: bool, assemble: bool, precision: Precision) -> Built {
    let (cfg, batch) = small();
    let mut graph = build(&cfg, batch).expect("build");
    compiler::weights::randomize(&mut graph, 11);
    let opts = compiler::CompileOptions {
        cpus: cpu
            .then(|| compiler::backend::cpu::CpuOptions {
                cpu: "x86-64".into(),
                ..Default::default()
            })
            .into_iter()
            .collect(),
        cuda: Some(Default::default()),
        precision,
        assemble_ptx: assemble,
        ..Default::default()
    };
    let compiled = compiler::compile_graph(&cfg, graph.clone(), &opts).expect("compile");
    let artefact = Artefact::read(&compiled.to_bytes().expect("bytes")).expect("loader accepts it");
    let code = compiled.code;
    Built {
        graph,
        code,
        artefact,
    }
}

fn at(v: &ArenaView, n: usize, c: usize, y: usize, x: usize) -> usize {
    (v.offset / 4) as usize + ((n * v.h + y) * v.w + x) * v.pixel_stride + v.channel_offset + c
}

/// The caller's NCHW tensor into the arena view, as the runtime's staging copy does.
fn copy_in(spec: &TensorSpec, t: &Tensor, arena: &mut [f32]) {
    let v = &spec.view;
    let mut k = 0;
    for n in 0..v.n {
        for c in 0..v.channels {
            for y in 0..v.h {
                for x in 0..v.w {
                    arena[at(v, n, c, y, x)] = t.data[k];
                    k += 1;
                }
            }
        }
    }
}

fn copy_out(spec: &TensorSpec, arena: &[f32]) -> Tensor {
    let v = &spec.view;
    let mut data = Vec::new();
    for n in 0..v.n {
        for c in 0..v.channels {
            for y in 0..v.h {
                for x in 0..v.w {
                    data.push(arena[at(v, n, c, y, x)]);
                }
            }
        }
    }
    Tensor::from_vec(spec.shape.clone(), data).expect("shape")
}

/// The launch table of the artefact as the executor issues it.
fn table(a: &Artefact) -> Vec<TableLaunch<'_>> {
    let cuda = a.manifest().cuda.as_ref().expect("cuda target");
    cuda.launches
        .iter()
        .map(|l| TableLaunch {
            entry: &l.entry,
            kernel: l.kernel,
            grid: l.grid,
            block: l.block,
            // The loader checked the count against the PTX.
            args: l
                .args
                .iter()
                .map(|a| match *a {
                    CudaArg::Weights { offset } => KernelParam::Weights { offset },
                    CudaArg::Arena { offset } => KernelParam::Arena { offset },
                    CudaArg::Scalar { value } => KernelParam::Scalar { value },
                })
                .collect(),
        })
        .collect()
}

fn device_weights(a: &Artefact) -> &[u8] {
    let r = a.manifest().cuda.as_ref().expect("cuda").weights;
    let section = a.section(SectionKind::Weights).expect("weights section");
    &section[r.offset as usize..(r.offset + r.bytes) as usize]
}

/// One inference through the table on `arena` (kept between calls, like a session's).
fn infer(
    b: &Built,
    launches: &[TableLaunch<'_>],
    arena: &mut [f32],
    x: &Tensor,
) -> Result<Tensor, EmuError> {
    let m = b.artefact.manifest();
    copy_in(&m.input, x, arena);
    emulate::run_table(
        b.code.cuda.as_ref().expect("cuda"),
        launches,
        device_weights(&b.artefact),
        arena,
    )?;
    Ok(copy_out(&m.output, arena))
}

fn input(b: &Built, seed: u64) -> Tensor {
    let id = b.graph.inputs()[0];
    Tensor::random_uniform(b.graph.node(id).ty.shape.clone(), seed, -1.0, 1.0)
}

#[test]
fn the_launch_table_of_a_cpu_cuda_artefact_computes_the_reference() {
    let b = compile(true, false);
    let m = b.artefact.manifest();
    let cuda = m.cuda.as_ref().expect("cuda");
    // Both targets share the section: the CUDA weights follow the CPU ones.
    assert!(m.cpu.is_some());
    assert!(cuda.weights.offset > 0 && cuda.weights.offset.is_multiple_of(256));
    assert_eq!(
        device_weights(&b.artefact),
        b.code.cuda.as_ref().expect("cuda").weights.as_slice()
    );
    assert_eq!(
        m.schedule.len(),
        b.code.cuda.as_ref().expect("cuda").descs().len()
    );
    let launches = table(&b.artefact);
    // The session arena: memory.arena_bytes, zeroed once, reused by every run.
    let mut arena = vec![0.0f32; (m.memory.arena_bytes as usize).div_ceil(4)];
    for seed in [1, 2] {
        let x = input(&b, seed);
        let want = ir::reference::run(&b.graph, std::slice::from_ref(&x)).expect("reference");
        let got = infer(&b, &launches, &mut arena, &x).expect("emulation");
        let err = got.rel_error(&want[0]).expect("shape");
        assert!(err <= 1e-4, "run {seed}: relative error {err:e}");
    }
}

/// Tensor-core artefacts: the manifest says which, the launches run the
/// tensor-core GEMMs (through the emulator's mma) and stay within the
/// precision's bound.
#[test]
fn a_tensor_core_artefact_records_its_precision_and_computes_within_its_bound() {
    for (p, ty) in [
        (Precision::Tf32, "tf32"),
        (Precision::Fp16, "f16"),
        (Precision::Bf16, "bf16"),
    ] {
        // CUDA only: tf32 and fp16 have no CPU kernels (and bf16 CPU code needs AVX512_BF16).
        let b = compile_in(false, false, p);
        let m = b.artefact.manifest();
        assert_eq!(m.cuda.as_ref().expect("cuda").precision, p.name());
        let ptx = &b.code.cuda.as_ref().expect("cuda").ptx;
        assert!(ptx.contains(&format!(
            "mma.sync.aligned.m16n8k8.row.col.f32.{ty}.{ty}.f32"
        )));
        let launches = table(&b.artefact);
        let mut arena = vec![0.0f32; (m.memory.arena_bytes as usize).div_ceil(4)];
        let x = input(&b, 1);
        let want = ir::reference::run(&b.graph, std::slice::from_ref(&x)).expect("reference");
        let got = infer(&b, &launches, &mut arena, &x).expect("emulation");
        let err = got.rel_error(&want[0]).expect("shape");
        assert!(
            err <= f64::from(p.rel_bound()),
            "{p}: relative error {err:e}"
        );
        assert!(err > 1e-6, "relative error {err:e}: not {p}?");
    }
    let fp32 = compile(false, false);
    assert_eq!(
        fp32.artefact
            .manifest()
            .cuda
            .as_ref()
            .expect("cuda")
            .precision,
        "fp32"
    );
}

#[test]
fn a_cuda_only_artefact_has_its_own_schedule_and_weights() {
    let b = compile(false, false);
    let m = b.artefact.manifest();
    assert!(m.cpu.is_none());
    assert!(b.artefact.section(SectionKind::CpuSharedObject).is_none());
    let cuda = m.cuda.as_ref().expect("cuda");
    assert_eq!(cuda.weights.offset, 0);
    assert!(m.schedule.iter().all(|k| k.detail["cuda"].is_array()));
    let x = input(&b, 5);
    let want = ir::reference::run(&b.graph, std::slice::from_ref(&x)).expect("reference");
    let mut arena = vec![0.0f32; (m.memory.arena_bytes as usize).div_ceil(4)];
    let got = infer(&b, &table(&b.artefact), &mut arena, &x).expect("emulation");
    assert!(got.rel_error(&want[0]).expect("shape") <= 1e-4);
}

#[test]
fn a_wrong_launch_table_is_caught_by_the_emulator() {
    let b = compile(false, false);
    let m = b.artefact.manifest();
    let x = input(&b, 3);
    let want = ir::reference::run(&b.graph, std::slice::from_ref(&x)).expect("reference");
    let fresh = || vec![0.0f32; (m.memory.arena_bytes as usize).div_ceil(4)];
    let good = table(&b.artefact);

    // A grid one block short leaves output unwritten.
    let mut short = good.clone();
    let i = short
        .iter()
        .position(|l| l.grid[0] > 1)
        .expect("a multi-block launch");
    short[i].grid[0] -= 1;
    let e = infer(&b, &short, &mut fresh(), &x).expect_err("short grid");
    assert!(matches!(e, EmuError::Coverage { .. }), "{e}");

    // Two launches swapped run a kernel before its input exists.
    let mut swapped = good.clone();
    swapped.swap(0, 1);
    let wrong = infer(&b, &swapped, &mut fresh(), &x);
    assert!(
        wrong.map_or(true, |got| got.rel_error(&want[0]).expect("shape") > 1e-3),
        "swapped launches gave the right answer"
    );

    // Weights at the wrong offset give wrong numbers.
    let mut shifted = good.clone();
    let KernelParam::Weights { offset } = &mut shifted[0].args[0] else {
        panic!("the stem conv's first argument is its packed weights");
    };
    *offset += 16;
    let wrong = infer(&b, &shifted, &mut fresh(), &x);
    assert!(
        wrong.map_or(true, |got| got.rel_error(&want[0]).expect("shape") > 1e-3),
        "shifted weights gave the right answer"
    );

    // A shared entry given another launch's output pointer writes outside
    // its own output view.
    let (i, j) = (0..good.len())
        .flat_map(|i| (i + 1..good.len()).map(move |j| (i, j)))
        .find(|&(i, j)| good[i].entry == good[j].entry && good[i].args != good[j].args)
        .expect("two launches of one entry");
    let mut crossed = good.clone();
    let out = crossed[i].args.len() - 1;
    crossed[i].args[out] = good[j].args[out];
    let e = infer(&b, &crossed, &mut fresh(), &x).expect_err("crossed output pointer");
    assert!(
        matches!(e, EmuError::Coverage { .. } | EmuError::Fault { .. }),
        "{e}"
    );

    // A 1x1 GEMM told to reduce over one channel more reads past its input
    // view; a zero K is refused.
    let (l, k) = good
        .iter()
        .enumerate()
        .find_map(|(i, l)| match l.args.last() {
            Some(&KernelParam::Scalar { value }) => Some((i, value)),
            _ => None,
        })
        .expect("a launch with a K argument");
    let last = good[l].args.len() - 1;
    let mut wide = good.clone();
    wide[l].args[last] = KernelParam::Scalar { value: k + 1 };
    let e = infer(&b, &wide, &mut fresh(), &x).expect_err("K + 1");
    assert!(
        matches!(&e, EmuError::Fault { message, .. } if message.contains("outside the input view")),
        "{e}"
    );
    let mut zero = good.clone();
    zero[l].args[last] = KernelParam::Scalar { value: 0 };
    let e = infer(&b, &zero, &mut fresh(), &x).expect_err("K = 0");
    assert!(matches!(e, EmuError::Table { .. }), "{e}");

    // An arena pointer where a weights pointer belongs is refused.
    let mut kinds = good.clone();
    kinds[0].args[0] = KernelParam::Arena { offset: 0 };
    let e = infer(&b, &kinds, &mut fresh(), &x).expect_err("wrong argument kind");
    assert!(matches!(e, EmuError::Table { index: 0, .. }), "{e}");

    let mut unknown = good.clone();
    unknown[2].entry = "dnc_e999_missing";
    let e = infer(&b, &unknown, &mut fresh(), &x).expect_err("unknown entry");
    assert!(
        e.to_string()
            .contains("`dnc_e999_missing` is not in the module"),
        "{e}"
    );
}

#[test]
fn the_artefact_ptx_assembles_and_its_cubin_is_recorded() {
    let Some(path) = ptxas_or_skip("the_artefact_ptx_assembles_and_its_cubin_is_recorded") else {
        return;
    };
    let b = compile(false, true);
    let ptx =
        std::str::from_utf8(b.artefact.section(SectionKind::Ptx).expect("ptx")).expect("utf-8");
    let report = ptxas::assemble(&path, ptx, "sm_80").expect("ptxas");
    let cuda = b.artefact.manifest().cuda.as_ref().expect("cuda");
    for l in &cuda.launches {
        assert!(
            report.kernel(&l.entry).is_some(),
            "{} not assembled",
            l.entry
        );
    }
    // compile() found ptxas too: the cubin is in the artefact and the manifest says so.
    assert!(b.artefact.section(SectionKind::Cubin).is_some());
    assert_eq!(cuda.detail["cubin"]["present"], true);
}
