//! The runtime never links LLVM (ARCHITECTURE.md, Toolchain decisions): nothing in its
//! dependency tree may be `llvm-sys` or `inkwell`, whatever the other crates of the workspace
//! use. And built without its `cuda` feature it links no cudarc.

use std::process::Command;

/// `cargo tree -p runtime` with `args`, one package per line.
fn tree(args: &[&str]) -> String {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args(["tree", "-p", "runtime", "--prefix", "none"])
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        tree.lines().any(|l| l.starts_with("runtime ")),
        "unexpected output:\n{tree}"
    );
    tree
}

fn has(tree: &str, package: &str) -> bool {
    tree.lines()
        .any(|l| l.split_whitespace().next() == Some(package))
}

#[test]
fn without_the_cuda_feature_the_runtime_links_no_cudarc() {
    assert!(has(&tree(&["--edges", "normal"]), "cudarc"));
    let cpu_only = tree(&["--edges", "normal", "--no-default-features"]);
    assert!(!has(&cpu_only, "cudarc"), "{cpu_only}");
}

#[test]
fn runtime_dependency_tree_has_no_llvm() {
    let tree = tree(&["--edges", "normal,build,dev"]);
    for line in tree.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        assert!(
            !name.starts_with("llvm-sys") && name != "inkwell" && !name.starts_with("inkwell_"),
            "the runtime depends on {name}:\n{tree}"
        );
    }
}
