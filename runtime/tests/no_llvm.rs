//! The runtime never links LLVM (ARCHITECTURE.md, Toolchain decisions): nothing in its
//! dependency tree may be `llvm-sys` or `inkwell`, whatever the other crates of the workspace
//! use.

use std::process::Command;

#[test]
fn runtime_dependency_tree_has_no_llvm() {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "tree",
            "-p",
            "runtime",
            "--edges",
            "normal,build,dev",
            "--prefix",
            "none",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(
        tree.lines().any(|l| l.starts_with("runtime ")),
        "unexpected output:\n{tree}"
    );
    for line in tree.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        assert!(
            !name.starts_with("llvm-sys") && name != "inkwell" && !name.starts_with("inkwell_"),
            "the runtime depends on {name}:\n{tree}"
        );
    }
}
