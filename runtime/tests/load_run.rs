//! End to end through the real loader: a shared object compiled from `tests/data/toy_model.c`
//! (written to the generated-code ABI), wrapped by `ArtefactWriter`, loaded by `Model::load`
//! and run by sessions on 1 and 2 threads, sequentially and concurrently.
//! Skipped, with a printed reason, where no C compiler is available.

mod common;

use std::sync::Arc;

use common::{assert_close, toy_artefact, toy_expected, toy_input, INPUT_SHAPE, OUTPUT_SHAPE};
use runtime::{Device, Error, Model, Session};

fn toy_model() -> Option<Model> {
    let path = toy_artefact()?;
    Some(Model::load(path).expect("load toy artefact"))
}

#[test]
fn model_and_session_types_are_thread_safe() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<Model>();
    send::<Session>();
}

#[test]
fn runs_on_one_and_two_threads() {
    let Some(model) = toy_model() else { return };
    assert_eq!(model.input_shape(), INPUT_SHAPE);
    assert_eq!(model.output_shape(), OUTPUT_SHAPE);
    assert_eq!(model.labels().map(|l| l.len()), Some(5));
    for threads in [1, 2] {
        let mut session = model.session(Device::Cpu { threads }).expect("session");
        assert_eq!(session.device(), Device::Cpu { threads });
        // Several runs reuse the arena and the pool.
        for seed in 0..20 {
            let input = toy_input(seed);
            let out = session.run(&input, &INPUT_SHAPE).expect("run");
            assert_close(&out, &toy_expected(&input));
        }
    }
}

#[test]
fn sessions_run_concurrently_on_a_shared_model() {
    let Some(model) = toy_model() else { return };
    let model = Arc::new(model);
    let handles: Vec<_> = (0..6u32)
        .map(|t| {
            let model = Arc::clone(&model);
            std::thread::spawn(move || {
                let threads = 1 + t as usize % 2;
                let mut session = model.session(Device::Cpu { threads }).expect("session");
                for i in 0..300 {
                    let input = toy_input(t * 1000 + i);
                    let out = session.run(&input, &INPUT_SHAPE).expect("run");
                    assert_close(&out, &toy_expected(&input));
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("a session thread failed");
    }
}

#[test]
fn a_model_clone_outlives_the_original_and_sessions_outlive_both() {
    let Some(model) = toy_model() else { return };
    let mut session = model.session(Device::Cpu { threads: 2 }).expect("session");
    drop(model);
    let input = toy_input(3);
    assert_close(
        &session.run(&input, &INPUT_SHAPE).expect("run"),
        &toy_expected(&input),
    );
}

#[test]
fn loading_twice_gives_independent_models() {
    let Some(a) = toy_model() else { return };
    let Some(b) = toy_model() else { return };
    drop(a);
    // `b`'s code must still be the right one after `a` was unloaded.
    let mut s = b.session(Device::Cpu { threads: 1 }).expect("session");
    let input = toy_input(9);
    assert_close(
        &s.run(&input, &INPUT_SHAPE).expect("run"),
        &toy_expected(&input),
    );
}

#[test]
fn wrong_shapes_name_expected_and_found() {
    let Some(model) = toy_model() else { return };
    let mut s = model.session(Device::Cpu { threads: 1 }).expect("session");
    let input = toy_input(0);
    let e = s.run(&input, &[2, 3, 8, 2]).expect_err("shape");
    assert_eq!(
        e.to_string(),
        "input shape mismatch: expected [2, 3, 4, 4], found [2, 3, 8, 2]"
    );
    let e = s.run(&input[1..], &INPUT_SHAPE).expect_err("length");
    assert_eq!(
        e.to_string(),
        "input has 95 elements, expected 96 (shape [2, 3, 4, 4])"
    );
    let mut out = vec![0.0; 9];
    let e = s.run_into(&input, &mut out).expect_err("output length");
    assert!(
        matches!(
            e,
            Error::LengthMismatch {
                what: "output",
                expected: 10,
                found: 9,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn cuda_needs_cuda_code_in_the_artefact() {
    let Some(model) = toy_model() else { return };
    let e = model
        .session(Device::Cuda { ordinal: 0 })
        .expect_err("no CUDA");
    assert!(matches!(e, Error::DeviceUnavailable(_)));
    assert!(
        e.to_string()
            .contains("the artefact has no CUDA code (compile it with --target cuda"),
        "{e}"
    );
}

#[test]
fn code_that_is_not_a_shared_object_is_a_load_error_not_a_crash() {
    let bytes = common::toy_artefact_bytes(b"\x7fELF but truncated garbage");
    let a = runtime::Artefact::read(&bytes).expect("valid artefact");
    let e = Model::from_artefact(a).expect_err("not loadable");
    assert!(matches!(e, Error::Library(_)), "{e}");
}

#[test]
fn another_abi_version_is_refused_before_loading() {
    let mut manifest = common::toy_manifest();
    if let Some(cpu) = &mut manifest.cpu {
        cpu.abi_version = 99;
    }
    let mut w = runtime::ArtefactWriter::new(manifest);
    w.add_section(
        runtime::SectionKind::CpuSharedObject,
        b"never loaded".to_vec(),
    )
    .expect("so");
    let a = runtime::Artefact::read(&w.to_bytes().expect("bytes")).expect("valid artefact");
    let e = Model::from_artefact(a).expect_err("abi");
    assert_eq!(
        e.to_string(),
        "the artefact's CPU code uses ABI version 99; this runtime speaks 1"
    );
}

#[test]
fn profiled_runs_time_every_kernel_and_compute_the_same() {
    let Some(model) = toy_model() else { return };
    let mut s = model.session(Device::Cpu { threads: 2 }).expect("session");
    let input = toy_input(5);
    let mut out = vec![0.0; 10];
    let times = s.run_profiled(&input, &mut out).expect("profile");
    assert_close(&out, &toy_expected(&input));
    assert_eq!(
        times.iter().map(|t| (t.index, t.tasks)).collect::<Vec<_>>(),
        [(0, 2), (1, 10)]
    );
    assert!(times.iter().all(|t| t.seconds >= 0.0));
    assert_eq!(model.manifest().schedule[times[1].index].name, "affine");
}

fn load_variant(name: &str, defines: &[&str], manifest: runtime::Manifest) -> Option<Error> {
    if !common::have_cc() {
        return None;
    }
    let so = common::compile_toy(name, defines);
    let mut w = runtime::ArtefactWriter::new(manifest);
    w.add_section(runtime::SectionKind::CpuSharedObject, so)
        .expect("so");
    let a = runtime::Artefact::read(&w.to_bytes().expect("bytes")).expect("valid artefact");
    Some(Model::from_artefact(a).expect_err("the loader must refuse this variant"))
}

#[test]
fn a_missing_abi_symbol_is_a_load_error() {
    let Some(e) = load_variant(
        "toy_no_run_kernel",
        &["-DTOY_NO_RUN_KERNEL"],
        common::toy_manifest(),
    ) else {
        return;
    };
    assert!(matches!(e, Error::Library(_)));
    assert!(e.to_string().contains("dnc_run_kernel"), "{e}");
}

#[test]
fn code_reporting_another_abi_version_is_refused() {
    let Some(e) = load_variant(
        "toy_abi_99",
        &["-DTOY_ABI_VERSION=99"],
        common::toy_manifest(),
    ) else {
        return;
    };
    assert_eq!(
        e.to_string(),
        "the artefact's CPU code uses ABI version 99; this runtime speaks 1"
    );
}

#[test]
fn a_schedule_that_disagrees_with_the_code_is_refused() {
    let mut manifest = common::toy_manifest();
    let extra = manifest.schedule[0].clone();
    manifest.schedule.push(extra);
    let Some(e) = load_variant("toy_model_again", &[], manifest) else {
        return;
    };
    assert_eq!(
        e.to_string(),
        "cannot load the artefact's CPU code: the code has 2 kernels but the manifest's schedule lists 3"
    );
}

#[test]
fn code_for_extensions_this_cpu_lacks_is_refused_before_loading() {
    #[cfg(target_arch = "x86_64")]
    let lacking = [
        (
            "avx512fp16",
            std::arch::is_x86_feature_detected!("avx512fp16"),
        ),
        ("avx512f", std::arch::is_x86_feature_detected!("avx512f")),
        ("avx2", std::arch::is_x86_feature_detected!("avx2")),
    ]
    .into_iter()
    .find(|(_, present)| !present)
    .map(|(name, _)| name);
    #[cfg(not(target_arch = "x86_64"))]
    let lacking: Option<&str> = None;
    let Some(feature) = lacking else {
        eprintln!("skipping: this CPU has every extension the test could ask for");
        return;
    };
    let mut manifest = common::toy_manifest();
    if let Some(cpu) = &mut manifest.cpu {
        cpu.cpu = "sapphirerapids".into();
        cpu.features = format!("+sse2,+{feature},-amx-tile");
    }
    let mut w = runtime::ArtefactWriter::new(manifest);
    w.add_section(
        runtime::SectionKind::CpuSharedObject,
        b"never loaded".to_vec(),
    )
    .expect("so");
    let a = runtime::Artefact::read(&w.to_bytes().expect("bytes")).expect("valid artefact");
    let e = Model::from_artefact(a).expect_err("missing extension");
    assert!(matches!(e, Error::DeviceUnavailable(_)));
    assert!(
        e.to_string()
            .contains(&format!("needs {feature}, which this CPU lacks")),
        "{e}"
    );
}
