//! The compiler's peak memory stays under three times the weights it writes (issue #15): a
//! full compile of a 1,000-layer DenseNet-BC (4 x 250 layers, 188.9M parameters, a 789 MB
//! weights section) with random weights, written to disk. What the compiler must hold at once
//! is the graph's unpacked constants and the packed section (about 2x the weights); anything
//! more is a copy that can be avoided, such as the packed section once converted from floats
//! to bytes (which put the peak at 3.15x before the section was built as bytes).
//!
//! Its own test binary, so the process's high-water mark (`VmHWM`) is this compile's and no
//! other test's. Release figure (`scripts/maxrss.py` around `densenetc compile --arch
//! densenet-bc-100 --block-config 250,250,250,250 --random-weights 0`, a 2-core Zen 4 VM):
//! 2,489,200 KiB before, 1,704,336 KiB after, for a 791,647,264-byte artefact (2.2x).

use compiler::builder::{ConfigOverrides, DenseNetConfig};
use compiler::{CompileOptions, Weights};

/// The process's peak resident set in bytes (`VmHWM`), `None` where /proc is unreadable.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[test]
fn a_thousand_layer_compile_peaks_under_three_times_its_weights() {
    let Some(before) = peak_rss_bytes() else {
        eprintln!("skipped: /proc/self/status has no VmHWM on this system");
        return;
    };
    let o = ConfigOverrides {
        block_config: Some(vec![250; 4]),
        ..Default::default()
    };
    let cfg = DenseNetConfig::resolve(Some("densenet-bc-100"), &o).expect("config");
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("big.dnc");
    let written = compiler::compile(&cfg, &Weights::Random(0), &CompileOptions::default())
        .and_then(|c| c.write(&path))
        .expect("compile and write");
    let peak = peak_rss_bytes().expect("VmHWM");
    // The artefact is the weights section plus a manifest and the code (0.3% of it here).
    let ratio = peak as f64 / written as f64;
    eprintln!(
        "peak RSS {peak} bytes (before compiling {before}) for a {written}-byte artefact: \
         x{ratio:.2}"
    );
    assert!(
        written > 700_000_000,
        "a 1,000-layer artefact of {written} bytes"
    );
    assert!(
        ratio < 3.0,
        "the compile peaked at {ratio:.2} times its artefact's bytes ({peak} bytes)"
    );
}
