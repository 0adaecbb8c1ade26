//! Shared by the runtime's integration tests: a toy model compiled from
//! `tests/data/toy_model.c` (a real shared object written to the generated-code ABI) wrapped in
//! a real artefact by `ArtefactWriter`, and its expected outputs.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use runtime::abi::DNC_ABI_VERSION;
use runtime::artefact::{CpuTarget, KernelInfo, MemoryPlan, TensorSpec};
use runtime::{ArtefactWriter, Manifest, SectionKind};

pub const BATCH: usize = 2;
pub const INPUT_SHAPE: [usize; 4] = [BATCH, 3, 4, 4];
pub const OUTPUT_SHAPE: [usize; 2] = [BATCH, CLASSES];
pub const CLASSES: usize = 5;
pub const PIXELS: usize = 3 * 4 * 4;
/// scale[CLASSES] then shift[CLASSES].
pub const WEIGHTS: [f32; 2 * CLASSES] = [1.0, -2.0, 0.5, 3.0, -0.25, 0.0, 1.0, -1.0, 0.5, 2.0];
pub const LABELS: [&str; CLASSES] = ["zero", "one", "two", "three", "four"];

pub fn runtime_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A scratch directory for this test binary's files, inside the target directory.
pub fn scratch_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("runtime-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// Whether a C compiler is available; prints why not.
pub fn have_cc() -> bool {
    let ok = Command::new("cc")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("skipping: no C compiler (`cc`) found on PATH");
    }
    ok
}

/// Compiles `tests/data/toy_model.c` to a shared object (once per test binary).
pub fn toy_so() -> Option<&'static [u8]> {
    static SO: OnceLock<Option<Vec<u8>>> = OnceLock::new();
    SO.get_or_init(|| have_cc().then(|| compile_toy("toy_model", &[])))
        .as_deref()
}

/// Compiles `tests/data/toy_model.c` with extra `-D` flags (variants that break the ABI).
pub fn compile_toy(name: &str, defines: &[&str]) -> Vec<u8> {
    let out = scratch_dir().join(format!("{name}.so"));
    let status = Command::new("cc")
        .args([
            "-shared",
            "-fPIC",
            "-O2",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-Wl,-z,defs",
        ])
        .args(defines)
        .arg("-I")
        .arg(runtime_dir().join("include"))
        .arg(runtime_dir().join("tests/data/toy_model.c"))
        .arg("-o")
        .arg(&out)
        .status()
        .expect("run cc");
    assert!(status.success(), "cc failed to build the toy model");
    std::fs::read(&out).expect("read the toy shared object")
}

pub fn toy_manifest() -> Manifest {
    Manifest {
        compiler_version: "toy model (runtime tests)".into(),
        config: serde_json::json!({ "model": "toy", "classes": CLASSES }),
        batch: BATCH,
        input: TensorSpec::f32("input", &INPUT_SHAPE, 0),
        output: TensorSpec::f32("logits", &OUTPUT_SHAPE, 128 * 4),
        schedule: vec![
            KernelInfo {
                name: "mean".into(),
                op: "reduce_mean".into(),
                macs: (BATCH * PIXELS) as u64,
                detail: serde_json::Value::Null,
            },
            KernelInfo {
                name: "affine".into(),
                op: "affine".into(),
                macs: (BATCH * CLASSES) as u64,
                detail: serde_json::Value::Null,
            },
        ],
        memory: MemoryPlan {
            arena_bytes: 576,
            naive_bytes: 576,
            lower_bound_bytes: 432,
        },
        cpu: Some(CpuTarget {
            abi_version: DNC_ABI_VERSION,
            cpu: "x86-64".into(),
            features: String::new(),
            variants: Vec::new(),
            precision: "fp32".into(),
        }),
        cuda: None,
        labels: Some(LABELS.iter().map(|s| s.to_string()).collect()),
        head: None,
    }
}

pub fn weights_bytes() -> Vec<u8> {
    WEIGHTS.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// A toy artefact around `so` (any bytes: the reader never executes them).
pub fn toy_artefact_bytes(so: &[u8]) -> Vec<u8> {
    let mut w = ArtefactWriter::new(toy_manifest());
    w.add_section(SectionKind::Weights, weights_bytes())
        .expect("weights");
    w.add_section(SectionKind::CpuSharedObject, so.to_vec())
        .expect("so");
    w.to_bytes().expect("write toy artefact")
}

/// The toy artefact with the real shared object, written to a file (once per test binary).
pub fn toy_artefact() -> Option<&'static Path> {
    static PATH: OnceLock<Option<PathBuf>> = OnceLock::new();
    PATH.get_or_init(|| {
        let so = toy_so()?;
        let path = scratch_dir().join("toy.dnc");
        std::fs::write(&path, toy_artefact_bytes(so)).expect("write toy.dnc");
        Some(path)
    })
    .as_deref()
}

/// A deterministic input, different for each `seed`.
pub fn toy_input(seed: u32) -> Vec<f32> {
    (0..BATCH * PIXELS)
        .map(|i| {
            ((i as u32)
                .wrapping_mul(2654435761)
                .wrapping_add(seed.wrapping_mul(40503))
                % 2001) as f32
                / 1000.0
                - 1.0
        })
        .collect()
}

/// What the toy model computes, in the same order of operations as the C code (which sums
/// the NHWC copy of the NCHW input).
pub fn toy_expected(input: &[f32]) -> Vec<f32> {
    let [_, c, h, w] = INPUT_SHAPE;
    let mut out = Vec::with_capacity(BATCH * CLASSES);
    for b in 0..BATCH {
        let mut sum = 0.0f32;
        for y in 0..h {
            for x in 0..w {
                for ch in 0..c {
                    sum += input[((b * c + ch) * h + y) * w + x];
                }
            }
        }
        let mean = sum / PIXELS as f32;
        for k in 0..CLASSES {
            out.push(WEIGHTS[k] * mean + WEIGHTS[CLASSES + k]);
        }
    }
    out
}

pub fn assert_close(got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
            "element {i}: got {g}, want {w}"
        );
    }
}
