//! The CUDA side of the runtime without a GPU: the launch table's checks (every tampering of a
//! valid table is refused by the loader with a message naming it), and CUDA sessions that
//! report a missing driver as a typed error instead of panicking (skipped where a driver is
//! installed: there a toy launch table runs on the device instead), or, built without the
//! `cuda` feature, the lack of CUDA support.
//!
//! The artefact is the toy model of `common` with a CUDA target: a small PTX module whose two
//! launched entries take (weights, arena) pointers, and a third that also takes a `.u32`
//! scalar. It is launched only where there is a CUDA driver (the kernels return at once).

mod common;

use common::{toy_manifest, weights_bytes};
use runtime::artefact::{
    ByteRange, CudaArg, CudaLaunch, CudaTarget, CUDA_LAUNCH_VERSION, CUDA_MAX_SCALAR,
    CUDA_WEIGHTS_ALIGN,
};
use runtime::hash::xxh64;
use runtime::{
    Artefact, ArtefactError, ArtefactWriter, Device, Error, Manifest, Model, SectionKind,
};

const PTX: &str = "//\n.version 7.0\n.target sm_80\n.address_size 64\n\n\
.visible .entry toy_mean(\n\t.param .u64 toy_mean_param_0,\n\t.param .u64 toy_mean_param_1\n)\n{\n\tret;\n}\n\n\
.visible .entry toy_affine(\n\t.param .u64 toy_affine_param_0,\n\t.param .u64 toy_affine_param_1\n)\n{\n\tret;\n}\n\n\
.visible .entry toy_scaled(\n\t.param .u64 toy_scaled_param_0,\n\t.param .u64 toy_scaled_param_1,\n\t.param .u32 toy_scaled_param_2\n)\n{\n\tret;\n}\n";

/// Launch 1 through `toy_scaled`, with `scalar` as its third argument.
fn scaled(t: &mut CudaTarget, scalar: u32) {
    let l = &mut t.launches[1];
    l.entry = "toy_scaled".into();
    l.args.push(CudaArg::Scalar { value: scalar });
}

/// CPU weights first, then the device weights at the next 256-byte boundary.
fn weights_section() -> (Vec<u8>, ByteRange) {
    let mut w = weights_bytes();
    let offset = (w.len() as u64).div_ceil(CUDA_WEIGHTS_ALIGN) * CUDA_WEIGHTS_ALIGN;
    w.resize(offset as usize, 0);
    let device = weights_bytes();
    w.extend_from_slice(&device);
    (
        w,
        ByteRange {
            offset,
            bytes: device.len() as u64,
        },
    )
}

fn launch(entry: &str, kernel: usize) -> CudaLaunch {
    CudaLaunch {
        entry: entry.into(),
        kernel,
        grid: [2, 1, 1],
        block: [64, 1, 1],
        dynamic_shared_bytes: 0,
        static_shared_bytes: 1024,
        args: vec![CudaArg::Weights { offset: 0 }, CudaArg::Arena { offset: 0 }],
    }
}

fn cuda_manifest() -> Manifest {
    let mut m = toy_manifest();
    m.cpu = None;
    m.cuda = Some(CudaTarget {
        arch: "sm_80".into(),
        launch_version: CUDA_LAUNCH_VERSION,
        weights: weights_section().1,
        arena_bytes: m.memory.arena_bytes,
        launches: vec![launch("toy_mean", 0), launch("toy_affine", 1)],
        detail: serde_json::Value::Null,
        precision: "fp32".into(),
    });
    m
}

fn cuda_artefact(m: Manifest) -> Result<Vec<u8>, ArtefactError> {
    let mut w = ArtefactWriter::new(m);
    w.add_section(SectionKind::Weights, weights_section().0)?;
    w.add_section(SectionKind::Ptx, PTX.as_bytes().to_vec())?;
    w.to_bytes()
}

/// A valid artefact whose manifest is replaced by `m` (compact JSON padded with spaces to the
/// original length, checksums recomputed), bypassing the writer's own checks: what a tampered
/// or foreign file looks like to the loader.
fn tampered(m: &Manifest) -> Vec<u8> {
    let mut b = cuda_artefact(cuda_manifest()).expect("valid artefact");
    let a = Artefact::read(&b).expect("valid");
    let (i, s) = a
        .sections()
        .iter()
        .enumerate()
        .find(|(_, s)| s.kind == SectionKind::Manifest)
        .expect("manifest section");
    let range = s.range();
    let mut json = serde_json::to_vec(m).expect("json");
    assert!(
        json.len() <= range.len(),
        "compact JSON fits the pretty one"
    );
    json.resize(range.len(), b' ');
    b[range.clone()].copy_from_slice(&json);
    let entry = 64 + 32 * i;
    let sum = xxh64(&b[range]);
    b[entry + 24..entry + 32].copy_from_slice(&sum.to_le_bytes());
    let count = a.sections().len();
    let sum = xxh64(&b[64..64 + count * 32]);
    b[40..48].copy_from_slice(&sum.to_le_bytes());
    let sum = xxh64(&b[..56]);
    b[56..64].copy_from_slice(&sum.to_le_bytes());
    b
}

fn rejected(want: &str, edit: impl FnOnce(&mut CudaTarget)) -> String {
    let mut m = cuda_manifest();
    edit(m.cuda.as_mut().expect("cuda"));
    match Artefact::read(&tampered(&m)) {
        Err(Error::Artefact(e)) => e.to_string(),
        Err(e) => panic!("expected an artefact error, got {e}"),
        Ok(_) => panic!("the tampered launch table ({want}) was accepted"),
    }
}

#[test]
fn a_valid_launch_table_round_trips() {
    let bytes = cuda_artefact(cuda_manifest()).expect("valid");
    let a = Artefact::read(&bytes).expect("read");
    assert_eq!(a.manifest(), &cuda_manifest());
    // The tampering helper itself produces a loadable file when nothing is changed.
    Artefact::read(&tampered(&cuda_manifest())).expect("untampered");
    // Scalars at both ends of their range are accepted.
    for v in [1, CUDA_MAX_SCALAR] {
        let mut m = cuda_manifest();
        scaled(m.cuda.as_mut().expect("cuda"), v);
        Artefact::read(&tampered(&m)).expect("a scalar in range");
    }
}

type Edit = Box<dyn FnOnce(&mut CudaTarget)>;

#[test]
fn the_loader_rejects_tampered_launch_tables() {
    let cases: Vec<(&str, Edit)> = vec![
        (
            "entry `toy_softmax` is not in the PTX",
            Box::new(|t| t.launches[1].entry = "toy_softmax".into()),
        ),
        (
            "3 arguments for 2 parameters",
            Box::new(|t| t.launches[0].args.push(CudaArg::Arena { offset: 0 })),
        ),
        (
            "grid [0, 1, 1]",
            Box::new(|t| t.launches[0].grid = [0, 1, 1]),
        ),
        (
            "grid [1, 65536, 1]",
            Box::new(|t| t.launches[0].grid = [1, 65536, 1]),
        ),
        (
            "block [2048, 1, 1]",
            Box::new(|t| t.launches[1].block = [2048, 1, 1]),
        ),
        (
            "block [32, 32, 2]",
            Box::new(|t| t.launches[1].block = [32, 32, 2]),
        ),
        (
            "static + 240000 dynamic bytes",
            Box::new(|t| t.launches[0].dynamic_shared_bytes = 240_000),
        ),
        (
            "weights offset 40 outside the 40-byte weights",
            Box::new(|t| t.launches[0].args[0] = CudaArg::Weights { offset: 40 }),
        ),
        (
            "not 16-byte aligned",
            Box::new(|t| t.launches[0].args[0] = CudaArg::Weights { offset: 8 }),
        ),
        (
            "arena offset 4096 outside the 576-byte arena",
            Box::new(|t| t.launches[1].args[1] = CudaArg::Arena { offset: 4096 }),
        ),
        (
            "kernel 2 of a 2-kernel schedule",
            Box::new(|t| t.launches[1].kernel = 2),
        ),
        ("aligned range of the", Box::new(|t| t.weights.offset += 4)),
        ("aligned range of the", Box::new(|t| t.weights.bytes += 1)),
        (
            "the kernels touch 577 arena bytes but the arena has 576",
            Box::new(|t| t.arena_bytes = 577),
        ),
        ("no launches", Box::new(|t| t.launches.clear())),
        (
            "architecture `compute_80` is not sm_NN",
            Box::new(|t| t.arch = "compute_80".into()),
        ),
        (
            "none recorded (the artefact predates the CUDA executor",
            Box::new(|t| t.launch_version = 0),
        ),
        (
            "version 1, this runtime reads version 2: recompile",
            Box::new(|t| t.launch_version = 1),
        ),
        (
            "version 3, this runtime reads version 2",
            Box::new(|t| t.launch_version = 3),
        ),
        (
            "argument 2: scalar 0 outside 1..=1073741823",
            Box::new(|t| scaled(t, 0)),
        ),
        (
            "argument 2: scalar 1073741824 outside 1..=1073741823",
            Box::new(|t| scaled(t, CUDA_MAX_SCALAR + 1)),
        ),
        (
            "argument 1: Scalar { value: 3 } for a `.u64` parameter",
            Box::new(|t| t.launches[0].args[1] = CudaArg::Scalar { value: 3 }),
        ),
        (
            "argument 2: Arena { offset: 0 } for a `.u32` parameter",
            Box::new(|t| {
                scaled(t, 1);
                t.launches[1].args[2] = CudaArg::Arena { offset: 0 };
            }),
        ),
        (
            "precision `fp8` is not fp32, tf32, fp16 or bf16",
            Box::new(|t| t.precision = "fp8".into()),
        ),
    ];
    for (want, edit) in cases {
        let e = rejected(want, edit);
        assert!(
            e.starts_with("manifest invalid: CUDA launch table:") && e.contains(want),
            "expected `{want}`, got `{e}`"
        );
    }
}

/// Artefacts written before `precision` existed load as fp32; every precision loads.
#[test]
fn the_precision_defaults_to_fp32() {
    let mut m = serde_json::to_value(cuda_manifest()).expect("json");
    m["cuda"]
        .as_object_mut()
        .expect("cuda object")
        .remove("precision");
    let m: Manifest = serde_json::from_value(m).expect("parses without precision");
    assert_eq!(m.cuda.as_ref().expect("cuda").precision, "fp32");
    for p in runtime::artefact::CUDA_PRECISIONS {
        let mut m = cuda_manifest();
        m.cuda.as_mut().expect("cuda").precision = p.into();
        let a = Artefact::read(&cuda_artefact(m.clone()).expect("valid")).expect("read");
        assert_eq!(a.manifest(), &m);
    }
}

#[test]
fn a_manifest_without_a_launch_version_is_an_old_artefact() {
    // What a compiler before the executor wrote: `cuda: {arch}` only.
    let mut m = serde_json::to_value(cuda_manifest()).expect("json");
    m["cuda"] = serde_json::json!({ "arch": "sm_80" });
    let m: Manifest = serde_json::from_value(m).expect("old manifests still parse");
    let e = match Artefact::read(&tampered(&m)) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("accepted"),
    };
    assert!(e.contains("predates the CUDA executor"), "{e}");
}

#[test]
fn cuda_code_needs_its_ptx() {
    let mut w = ArtefactWriter::new(cuda_manifest());
    w.add_section(SectionKind::Weights, weights_section().0)
        .expect("weights");
    w.add_section(SectionKind::Cubin, vec![1, 2, 3])
        .expect("cubin");
    assert_eq!(
        w.to_bytes().expect_err("no ptx"),
        ArtefactError::MissingSection("ptx")
    );
}

#[cfg(feature = "cuda")]
fn driver_present() -> bool {
    runtime::cuda::driver::DRIVER_LIBRARIES.iter().any(|name| {
        // SAFETY: opening (and closing) the driver library, as the runtime's probe does.
        unsafe { libloading::Library::new(name) }.is_ok()
    })
}

#[cfg(feature = "cuda")]
#[test]
fn a_cuda_session_without_a_driver_is_a_typed_error() {
    let path = std::env::temp_dir().join(format!("dnc-cuda-toy-{}.dnc", std::process::id()));
    std::fs::write(&path, cuda_artefact(cuda_manifest()).expect("valid")).expect("write");
    let model = Model::load(&path).expect("a CUDA-only artefact loads without a GPU");
    std::fs::remove_file(&path).ok();
    assert!(model.session(Device::Cpu { threads: 1 }).is_err());
    if driver_present() {
        eprintln!("skipped: a CUDA driver is installed here (the no-driver path is not reachable)");
        return;
    }
    for ordinal in [0, 1] {
        let e = model
            .session(Device::Cuda { ordinal })
            .expect_err("no driver");
        assert!(matches!(e, Error::DeviceUnavailable(_)), "{e:?}");
        let text = e.to_string();
        assert!(
            text.starts_with(
                "device unavailable: CUDA: no CUDA driver (libcuda.so.1 or libcuda.so not found"
            ),
            "{text}"
        );
    }
    assert!(runtime::cuda::driver::probe().is_err());
}

#[cfg(feature = "cuda")]
#[test]
fn the_c_api_reports_a_missing_driver() {
    use runtime::ffi::*;
    use std::ffi::{CStr, CString};
    if driver_present() {
        eprintln!("skipped: a CUDA driver is installed here (the no-driver path is not reachable)");
        return;
    }
    let path = std::env::temp_dir().join(format!("dnc-cuda-capi-{}.dnc", std::process::id()));
    std::fs::write(&path, cuda_artefact(cuda_manifest()).expect("valid")).expect("write");
    let c_path = CString::new(path.to_str().expect("utf-8 path")).expect("no NUL");
    let mut model = std::ptr::null_mut();
    let mut session = std::ptr::null_mut();
    // SAFETY: valid C string, out pointers and the model handle from dnc_model_load.
    unsafe {
        assert_eq!(dnc_model_load(c_path.as_ptr(), &mut model), DncStatus::Ok);
        std::fs::remove_file(&path).ok();
        assert_eq!(
            dnc_session_create(model, DNC_DEVICE_CUDA, 0, &mut session),
            DncStatus::DeviceUnavailable
        );
        assert!(session.is_null());
        let text = CStr::from_ptr(dnc_last_error())
            .to_string_lossy()
            .into_owned();
        assert!(text.contains("no CUDA driver (libcuda.so.1"), "{text}");
        dnc_model_free(model);
    }
}

/// Where there is a CUDA driver this runs instead of the two no-driver tests above: the toy
/// launch table (kernels that return at once) is loaded on device 0 (its PTX JIT-compiled by
/// the driver), run plainly, captured into a CUDA graph at the second run and replayed, and
/// profiled. The kernels write nothing, so the logits are those of the zeroed arena. Skipped
/// only without a driver, or (with a printed reason) when the driver has no usable device.
#[cfg(feature = "cuda")]
#[test]
fn a_cuda_session_runs_the_launch_table_where_there_is_a_driver() {
    if !driver_present() {
        eprintln!("skipped: no CUDA driver here (libcuda.so.1 or libcuda.so)");
        return;
    }
    let path = std::env::temp_dir().join(format!("dnc-cuda-run-{}.dnc", std::process::id()));
    std::fs::write(&path, cuda_artefact(cuda_manifest()).expect("valid")).expect("write");
    let model = Model::load(&path).expect("load");
    std::fs::remove_file(&path).ok();
    let mut session = match model.session(Device::Cuda { ordinal: 0 }) {
        Ok(s) => s,
        // A driver but no device (or one older than sm_80): a typed error, not a failure here.
        Err(
            e @ (Error::DeviceUnavailable(_)
            | Error::Cuda {
                what: "counting devices",
                ..
            }),
        ) => {
            eprintln!("skipped: a CUDA driver but no usable device: {e}");
            return;
        }
        Err(e) => panic!("a CUDA session on device 0: {e}"),
    };
    assert_eq!(session.device(), Device::Cuda { ordinal: 0 });
    let zeros = vec![0.0f32; common::BATCH * common::CLASSES];
    let input = common::toy_input(1);
    for run in 0..3 {
        let out = session
            .run(&input, model.input_shape())
            .unwrap_or_else(|e| panic!("run {run}: {e}"));
        assert_eq!(out, zeros, "run {run}");
    }
    if std::env::var("DNC_CUDA_GRAPHS").map_or(true, |v| v != "0") {
        assert!(session.cuda_graph_captured(), "{session:?}");
    }
    let mut out = vec![1.0f32; zeros.len()];
    let times = session.run_profiled(&input, &mut out).expect("profile");
    assert_eq!(out, zeros);
    assert_eq!(
        times.iter().map(|t| (t.index, t.tasks)).collect::<Vec<_>>(),
        [(0, 2), (1, 2)]
    );
    // A second session shares the device model; a device that does not exist is refused.
    let mut other = model
        .session(Device::Cuda { ordinal: 0 })
        .expect("second session");
    assert_eq!(other.run(&input, model.input_shape()).expect("run"), zeros);
    let e = model
        .session(Device::Cuda { ordinal: 4096 })
        .expect_err("no device 4096");
    assert!(e.to_string().contains("device 4096 requested"), "{e}");
}

/// Built without the `cuda` feature (`cargo test -p runtime --no-default-features`), a CUDA
/// session is the same typed error whether or not a driver is installed, from Rust and from C.
#[cfg(not(feature = "cuda"))]
#[test]
fn without_the_cuda_feature_cuda_sessions_are_unavailable() {
    use runtime::ffi::*;
    use std::ffi::{CStr, CString};
    const WANT: &str =
        "device unavailable: CUDA: this runtime was built without CUDA support (rebuild it with \
         its `cuda` cargo feature)";
    let path = std::env::temp_dir().join(format!("dnc-cuda-stub-{}.dnc", std::process::id()));
    std::fs::write(&path, cuda_artefact(cuda_manifest()).expect("valid")).expect("write");
    let model = Model::load(&path).expect("a CUDA artefact loads without the CUDA executor");
    for ordinal in [0, 1] {
        let e = model
            .session(Device::Cuda { ordinal })
            .expect_err("no CUDA support");
        assert!(matches!(e, Error::DeviceUnavailable(_)), "{e:?}");
        assert_eq!(e.to_string(), WANT);
    }
    let e = runtime::cuda::driver::probe().expect_err("no CUDA support");
    assert_eq!(e.to_string(), WANT);
    let e = runtime::cuda::driver::guarded("testing", || Ok(())).expect_err("no CUDA support");
    assert_eq!(e.to_string(), WANT);

    let c_path = CString::new(path.to_str().expect("utf-8 path")).expect("no NUL");
    let mut c_model = std::ptr::null_mut();
    let mut session = std::ptr::null_mut();
    // SAFETY: valid C string, out pointers and the model handle from dnc_model_load.
    unsafe {
        assert_eq!(dnc_model_load(c_path.as_ptr(), &mut c_model), DncStatus::Ok);
        assert_eq!(
            dnc_session_create(c_model, DNC_DEVICE_CUDA, 0, &mut session),
            DncStatus::DeviceUnavailable
        );
        assert!(session.is_null());
        let text = CStr::from_ptr(dnc_last_error()).to_string_lossy();
        assert_eq!(text, WANT);
        dnc_model_free(c_model);
    }
    std::fs::remove_file(&path).ok();
}

#[test]
fn a_cpu_only_artefact_has_no_cuda_code() {
    let mut w = ArtefactWriter::new(toy_manifest());
    w.add_section(SectionKind::Weights, weights_bytes())
        .expect("weights");
    w.add_section(SectionKind::CpuSharedObject, b"not loaded".to_vec())
        .expect("so");
    let a = Artefact::read(&w.to_bytes().expect("valid")).expect("read");
    // Loading the model would dlopen the fake shared object; the check is on the manifest.
    assert!(a.manifest().cuda.is_none());
}
