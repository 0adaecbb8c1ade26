//! The `densenetc` command line, run as a user runs it, one test binary
//! (`cargo test -p compiler --test cli`): `inspect`, the errors and the
//! split into `densenetc` and `densenetc-compiler` here; `compile | run |
//! bench | inspect OUT.dnc` in `compile`.

mod compile;

use std::process::{Command, Output};

fn densenetc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_densenetc"))
        .args(args)
        .output()
        .expect("densenetc runs")
}

/// Runs `densenetc ARGS`, which must succeed; its standard output.
fn ok(args: &[&str]) -> String {
    let out = densenetc(args);
    assert!(
        out.status.success(),
        "densenetc {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json(args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&ok(args)).expect("valid JSON")
}

fn fails_with(args: &[&str], needle: &str) {
    let out = densenetc(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "densenetc {args:?} should fail");
    assert!(
        err.contains(needle),
        "stderr of {args:?} lacks `{needle}`: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn inspect_json_matches_torchvision() {
    let v = json(&["inspect", "--arch", "densenet121", "--json"]);
    assert_eq!(v["params"], 7_978_856);
    assert_eq!(v["macs"], 2_834_161_664u64);
    assert_eq!(v["conv_layers"], 120);
    assert_eq!(v["linear_layers"], 1);
    let v = json(&["inspect", "--arch", "densenet201", "--json"]);
    assert_eq!(v["params"], 20_013_928);
    assert_eq!(v["macs"], 4_291_365_888u64);
    let v = json(&["inspect", "--arch", "densenet-bc-100", "--json"]);
    assert_eq!(v["params"], 769_162);
    assert_eq!(v["macs"], 287_929_692);
}

#[test]
fn inspect_prints_ir_that_parses() {
    let out = densenetc(&["inspect", "--arch", "densenet-40", "--block-config", "2,2"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).expect("utf8");
    let ir_end = text.find("model:").expect("summary after the IR");
    let g = ir::text::parse(&text[..ir_end]).expect("printed IR parses");
    ir::verify::verify(&g).expect("verifies");
    assert!(text[ir_end..].contains("params:"));
}

#[test]
fn overrides_and_config_files() {
    let v = json(&[
        "inspect",
        "--arch",
        "densenet121",
        "--growth-rate",
        "12",
        "--block-config",
        "2,3",
        "--init-features",
        "16",
        "--bn-size",
        "0",
        "--compression",
        "0.5",
        "--num-classes",
        "7",
        "--in-channels",
        "1",
        "--stem",
        "cifar",
        "--conv-bias",
        "--image-size",
        "9",
        "--batch",
        "3",
        "--json",
    ]);
    assert_eq!(v["config"]["growth_rate"], 12);
    assert_eq!(v["config"]["stem"], "cifar");
    assert_eq!(v["config"]["conv_bias"], true);
    assert_eq!(v["batch"], 3);
    let dir = std::env::temp_dir().join(format!("densenetc-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let path = dir.join("m.toml");
    std::fs::write(
        &path,
        "arch = \"densenet-bc-100\"\nblock_config = [2, 2, 2]\n",
    )
    .expect("write");
    let p = path.to_str().expect("utf8 path");
    let v = json(&["inspect", "--config", p, "--json"]);
    assert_eq!(v["config"]["block_config"], serde_json::json!([2, 2, 2]));
    assert_eq!(v["config"]["growth_rate"], 12);
    // Command-line overrides win over the file.
    let v = json(&["inspect", "--config", p, "--growth-rate", "5", "--json"]);
    assert_eq!(v["config"]["growth_rate"], 5);
    std::fs::write(&path, "grwth_rate = 3\n").expect("write");
    fails_with(&["inspect", "--config", p], "grwth_rate");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_input_is_a_clear_error() {
    fails_with(
        &["inspect", "--arch", "densenet122"],
        "valid names: densenet121",
    );
    fails_with(&["inspect"], "--arch");
    fails_with(
        &["inspect", "--arch", "densenet121", "--growth-rate", "0"],
        "growth rate",
    );
    fails_with(
        &["inspect", "--arch", "densenet121", "--compression", "1.5"],
        "compression",
    );
    fails_with(
        &["inspect", "--arch", "densenet121", "--image-size", "8"],
        "too small",
    );
    fails_with(
        &["inspect", "--arch", "densenet121", "--batch", "0"],
        "batch",
    );
    fails_with(
        &["inspect", "--config", "/nonexistent/x.toml"],
        "/nonexistent/x.toml",
    );
}

#[test]
fn inspect_binds_weights_and_names_mismatches() {
    let root = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/golden/bc40_cifar/weights.pth"
    );
    let base = [
        "inspect",
        "--arch",
        "densenet-bc-100",
        "--block-config",
        "6,6,6",
        "--json",
        "--weights",
        root,
    ];
    let v = json(&base);
    assert_eq!(v["weights_bound"], true);
    let mut wrong = base.to_vec();
    wrong.extend(["--growth-rate", "8"]);
    fails_with(&wrong, "features.denseblock1.denselayer1.conv2.weight");
    fails_with(
        &[
            "inspect",
            "--arch",
            "densenet-40",
            "--weights",
            "/nonexistent.pth",
        ],
        "/nonexistent.pth",
    );
    let v = json(&[
        "inspect",
        "--arch",
        "densenet-40",
        "--random-weights",
        "7",
        "--json",
    ]);
    assert_eq!(v["weights_bound"], true);
}

#[test]
fn inspect_memory_and_optimised_macs() {
    let v = json(&["inspect", "--arch", "densenet121", "--memory", "--json"]);
    assert_eq!(v["concat_copies"], 0);
    let arena = v["arena_bytes"].as_u64().expect("arena");
    let bound = v["lower_bound_bytes"].as_u64().expect("bound");
    let naive = v["naive_bytes"].as_u64().expect("naive");
    assert!(arena as f64 <= bound as f64 * 1.05, "{arena} vs {bound}");
    assert!(arena * 10 <= naive, "{arena} vs {naive}");
    // The transition reorder saves 3/4 of the transition convs' MACs.
    assert_eq!(v["macs_optimized"], 2_602_950_656u64);
}

#[test]
fn inspect_after_pass_dumps_dot_and_svg() {
    let dir = std::env::temp_dir().join(format!("densenetc-dump-{}", std::process::id()));
    let dot = dir.join("g.dot");
    let svg = dir.join("m.svg");
    let out = densenetc(&[
        "inspect",
        "--arch",
        "densenet-bc-100",
        "--block-config",
        "2,2",
        "--after",
        "fuse-preactivation",
        "--dump-dir",
        dir.to_str().expect("utf8"),
        "--dot",
        dot.to_str().expect("utf8"),
        "--memory-svg",
        svg.to_str().expect("utf8"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf8");
    assert!(
        !text.contains("batch_norm("),
        "BNs are fused after fuse-preactivation"
    );
    assert!(text.contains("prologue=affine("));
    for (i, pass) in compiler::passes::PASSES.iter().enumerate() {
        let path = dir.join(format!("{:02}-after-{pass}.ir", i + 1));
        let ir_text = std::fs::read_to_string(&path).expect("dump written");
        ir::text::parse(&ir_text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    assert!(std::fs::read_to_string(&dot)
        .expect("dot")
        .starts_with("digraph"));
    assert!(std::fs::read_to_string(&svg).expect("svg").contains("<svg"));
    std::fs::remove_dir_all(&dir).ok();
    fails_with(
        &["inspect", "--arch", "densenet-40", "--after", "fuze"],
        "valid passes: fold-batchnorm",
    );
}

/// The names of the shared libraries an ELF executable asks for (DT_NEEDED),
/// read with the system's `readelf` when there is one.
fn needed_libraries(path: &str) -> Option<String> {
    let out = Command::new("readelf").args(["-d", path]).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn the_front_binary_does_not_link_llvm_and_the_compiler_binary_does() {
    let front = env!("CARGO_BIN_EXE_densenetc");
    let compiler = env!("CARGO_BIN_EXE_densenetc-compiler");
    let (Some(front_deps), Some(compiler_deps)) =
        (needed_libraries(front), needed_libraries(compiler))
    else {
        eprintln!("skipped: readelf is not available");
        return;
    };
    assert!(
        compiler_deps.contains("LLVM"),
        "densenetc-compiler should link LLVM: {compiler_deps}"
    );
    assert!(
        !front_deps.contains("LLVM"),
        "densenetc must not link LLVM: {front_deps}"
    );
}

#[test]
fn without_the_compiler_binary_run_still_works_and_compile_says_what_is_missing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let lone = dir.path().join("densenetc");
    std::fs::copy(env!("CARGO_BIN_EXE_densenetc"), &lone).expect("copy densenetc");
    let out = Command::new(&lone)
        .args(["compile", "--arch", "densenet121", "-o", "x.dnc"])
        .output()
        .expect("densenetc runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("densenetc-compiler") && err.contains("not found"),
        "{err}"
    );
    let out = Command::new(&lone)
        .args(["run", "missing.dnc", "--random-input", "0"])
        .output()
        .expect("densenetc runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("missing.dnc"), "{err}");
    assert!(!err.contains("densenetc-compiler"), "{err}");
}

#[test]
fn commands_handed_to_the_compiler_binary_answer_as_densenetc() {
    let out = densenetc(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for cmd in ["compile", "run", "bench", "inspect"] {
        assert!(help.contains(cmd), "help lacks {cmd}: {help}");
    }
    assert!(help.contains("Usage: densenetc "), "{help}");
}
