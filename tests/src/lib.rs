//! Helpers shared by the workspace-level integration tests in `tests/tests/`.

use anyhow::{Context, Result};
use compiler::builder::{DenseNetConfig, Stem};
use std::path::{Path, PathBuf};

/// `tests/fixtures/golden/<case>`.
pub fn golden_dir(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/golden")
        .join(case)
}

/// Every golden case directory, sorted.
pub fn golden_cases() -> Result<Vec<String>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/golden");
    let mut cases = Vec::new();
    for entry in std::fs::read_dir(&root).with_context(|| format!("listing {}", root.display()))? {
        let entry = entry?;
        if entry.path().join("config.json").exists() {
            cases.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    cases.sort();
    Ok(cases)
}

/// The configuration and batch size of a golden case, from its
/// `config.json` (written by `tools/gen_golden.py`).
pub fn golden_config(case: &str) -> Result<(DenseNetConfig, usize)> {
    let path = golden_dir(case).join("config.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let j: serde_json::Value = serde_json::from_str(&text)?;
    let uint = |k: &str| -> Result<usize> {
        let v = j[k]
            .as_u64()
            .with_context(|| format!("{case}: `{k}` is not an integer"))?;
        Ok(usize::try_from(v)?)
    };
    let block_config = j["block_config"]
        .as_array()
        .context("block_config")?
        .iter()
        .map(|v| v.as_u64().map(|x| x as usize).context("block_config entry"))
        .collect::<Result<Vec<_>>>()?;
    let stem = match j["stem"].as_str() {
        Some("imagenet") => Stem::Imagenet,
        Some("cifar") => Stem::Cifar,
        other => anyhow::bail!("{case}: unknown stem {other:?}"),
    };
    let cfg = DenseNetConfig {
        name: case.to_owned(),
        growth_rate: uint("growth_rate")?,
        block_config,
        num_init_features: uint("num_init_features")?,
        bn_size: uint("bn_size")?,
        compression: j["compression"].as_f64().context("compression")?,
        num_classes: uint("num_classes")?,
        in_channels: uint("in_channels")?,
        image_size: uint("image_size")?,
        stem,
        conv_bias: j["conv_bias"].as_bool().context("conv_bias")?,
        bn_eps: j["generator"]["bn_eps"].as_f64().unwrap_or(1e-5) as f32,
    };
    cfg.validate()?;
    Ok((cfg, uint("batch")?))
}

/// The command-line executables `densenetc` and `densenetc-compiler`, built by cargo (once per
/// test binary; the paths come from cargo's JSON messages, so they are the build's own).
pub fn cli_binaries() -> &'static (PathBuf, PathBuf) {
    static BINS: std::sync::OnceLock<(PathBuf, PathBuf)> = std::sync::OnceLock::new();
    BINS.get_or_init(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("the workspace root")
            .to_owned();
        let out = std::process::Command::new(cargo)
            .args([
                "build",
                "-p",
                "compiler",
                "--bins",
                "--message-format=json-render-diagnostics",
            ])
            .current_dir(&repo)
            .output()
            .expect("run cargo build");
        assert!(
            out.status.success(),
            "cargo build failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut front = None;
        let mut back = None;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if let Some(exe) = msg["executable"].as_str() {
                let exe = PathBuf::from(exe);
                match exe.file_stem().and_then(|s| s.to_str()) {
                    Some("densenetc") => front = Some(exe),
                    Some("densenetc-compiler") => back = Some(exe),
                    _ => {}
                }
            }
        }
        (
            front.expect("cargo built densenetc"),
            back.expect("cargo built densenetc-compiler"),
        )
    })
}
