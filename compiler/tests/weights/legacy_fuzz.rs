//! The legacy (pre-1.6) checkpoint reader and the search for the network,
//! fuzzed as `fuzz` fuzzes the zip reader: real legacy files (a
//! CheXNet-style training checkpoint, a torchxrayvision-style whole module)
//! are mutated and truncated, with and without a graph to match, and each
//! variant must give `Ok` or `Err`, never a panic, never an allocation beyond
//! a small multiple of the file's size. A legacy file has no checksum, so
//! mutations reach the pickle VM directly; the pickles (before the storage
//! data) get most of them.

use crate::fuzz_support::{install_hook, measure, read, replacements, Rng};
use crate::support::data;
use compiler::builder::{self, ConfigOverrides, DenseNetConfig};
use compiler::weights::{parse_checkpoint, Choice};
use std::path::Path;

/// Parse one variant; returns the peak bytes it held live.
fn parse(bytes: &[u8], graph: Option<&ir::Graph>, case: impl FnOnce() -> String) -> usize {
    measure(bytes, case, |b| {
        parse_checkpoint(b, Path::new("fuzz"), graph, &Choice::default())
    })
}

/// The graph of a `manifest.json` case, to drive the matching as well.
fn graph_of(file: &str) -> ir::Graph {
    let text = std::fs::read_to_string(data("checkpoints/manifest.json")).expect("manifest");
    let m: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let case = m["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .find(|c| c["file"] == file)
        .expect("case");
    let o: ConfigOverrides = serde_json::from_value(case["config"].clone()).expect("config");
    let cfg = DenseNetConfig::resolve(None, &o).expect("valid");
    builder::build(&cfg, 1).expect("builds")
}

/// Where the storage key list starts: the pickles before it are the
/// object; the storages' bytes follow it.
fn pickles_end(bytes: &[u8]) -> usize {
    bytes
        .windows(3)
        .rposition(|w| w == b"\x80\x02]")
        .expect("a storage key list")
}

/// Truncations, then `count` mutations of 1-4 bytes inside the
/// pickles and `count / 4` anywhere, planting opcodes half of the time.
fn legacy_variants(name: &str, graph: Option<&ir::Graph>, count: usize, seed: u64) -> usize {
    const OPCODES: &[u8] = b"(tR\x85\x86\x87hjqr\x94.\x8aXe}u]sQb01N\x93cTU\x81\x92";
    let orig = read(name);
    assert!(
        parse_checkpoint(&orig, Path::new(name), graph, &Choice::default()).is_ok(),
        "{name} must read"
    );
    let end = pickles_end(&orig);
    let mut rng = Rng(seed);
    // Every length near the start and around the key list (where each
    // pickle and the first storages end), every 17th elsewhere.
    let lens = (0..orig.len()).filter(|&l| l < 4096 || l.abs_diff(end) < 512 || l % 17 == 0);
    let mut cuts = 0;
    for len in lens {
        parse(&orig[..len], graph, || {
            format!("{name}: truncated to {len} bytes")
        });
        cuts += 1;
    }
    for k in 0..count + count / 4 {
        let mut buf = orig.clone();
        let span = if k < count { end } else { buf.len() };
        for _ in 0..1 + rng.below(4) {
            let i = rng.below(span);
            buf[i] = if rng.below(2) == 0 {
                OPCODES[rng.below(OPCODES.len())]
            } else {
                rng.next() as u8
            };
        }
        parse(&buf, graph, || format!("{name}: sample {k} (seed {seed})"));
    }
    cuts + count + count / 4
}

#[test]
fn mutated_and_truncated_legacy_files_never_panic() {
    install_hook();
    let mut n = 0;
    // The smallest legacy file, every byte with every replacement.
    let small = read("legacy_format.pth");
    let mut buf = small.clone();
    for i in 0..small.len() {
        for r in replacements(small[i]) {
            buf[i] = r;
            parse(&buf, None, || {
                format!("legacy_format.pth: byte {i} := {r:#04x}")
            });
            n += 1;
        }
        buf[i] = small[i];
    }
    let chexnet = graph_of("chexnet_model.pth.tar");
    let xrv = graph_of("xrv_densenet_legacy.pt");
    n += legacy_variants("checkpoints/chexnet_model.pth.tar", Some(&chexnet), 4000, 1);
    n += legacy_variants("checkpoints/chexnet_model.pth.tar", None, 1000, 2);
    n += legacy_variants("checkpoints/xrv_densenet_legacy.pt", Some(&xrv), 4000, 3);
    eprintln!("{n} mutated or truncated legacy files parsed");
    assert!(n > 20_000);
}

#[test]
fn mutated_zip_checkpoints_never_panic_while_matching() {
    // The zip fixtures' pickles are CRC-protected; truncations and
    // mutations still drive the search (whole modules, EMA copies, ties).
    install_hook();
    let xrv = graph_of("xrv_densenet.pt");
    let dp = graph_of("dp_trainer.ckpt");
    let eff = graph_of("efficient_densenet.dat");
    let mut n = 0;
    for (name, g) in [
        ("checkpoints/xrv_densenet.pt", &xrv),
        ("checkpoints/xrv_missing_param.pt", &xrv),
        ("checkpoints/dp_trainer.ckpt", &dp),
        ("checkpoints/two_densenets.pth", &eff),
    ] {
        let orig = read(name);
        let mut rng = Rng(n as u64);
        for len in (0..orig.len()).step_by(31) {
            parse(&orig[..len], Some(g), || {
                format!("{name}: truncated to {len}")
            });
            n += 1;
        }
        for k in 0..500 {
            let mut buf = orig.clone();
            let i = rng.below(buf.len());
            buf[i] = rng.next() as u8;
            parse(&buf, Some(g), || format!("{name}: sample {k}"));
            n += 1;
        }
    }
    eprintln!("{n} zip variants matched");
}

#[test]
fn declared_storage_sizes_do_not_drive_allocation() {
    // {'w': tensor([1., 2.])}: its storage count claims 2^62 or -1 values.
    let orig = read("legacy_format.pth");
    let at = orig.len() - 16;
    for count in [1i64 << 62, -1, i64::MAX] {
        let mut f = orig.clone();
        f[at..at + 8].copy_from_slice(&count.to_le_bytes());
        let peak = parse(&f, None, || format!("count {count}"));
        assert!(peak < 1 << 20, "{peak}");
        let e = parse_checkpoint(&f, Path::new("f"), None, &Choice::default())
            .expect_err("a lying count");
        assert!(e.to_string().contains("declares 2 float32 values"), "{e}");
    }
}
