//! Shared-memory bank conflicts of the GEMM kernels, measured by the
//! emulator (`src/backend/cuda/emulate/banks.rs`): a small DenseNet is
//! lowered for CUDA in every precision and run through
//! `emulate::run_with_banks`; the report prints, per GEMM entry, the
//! wavefronts per warp-level access (1 = conflict-free) of its shared
//! arrays `As` and `Bs`, for loads and stores, then the totals over all
//! launches (to compare layouts), and the test checks the ratios
//! against those derived by hand from the access patterns of
//! `gemm.rs` and `mma.rs` ([`expected`]). The counts are per 32-bit
//! access of the kernel source: the PTX of the f32 kernels reads its
//! register tiles with `ld.shared.v4`/`.v2` instead (see `banks.rs`).
//!
//! `cargo test -p compiler --test cuda banks:: -- --nocapture` prints the
//! report; `-- --ignored --nocapture` adds densenet121 at full depth
//! (image `DNC_BANKS_IMAGE`, default 64).

use crate::support::{arena, write};
use compiler::backend::cuda::emulate::{self, LaunchShared, SharedStats};
use compiler::backend::cuda::{self, CompiledCuda, CudaOptions, Precision};
use compiler::backend::graph::kernels_of;
use compiler::builder::{build, ConfigOverrides, DenseNetConfig};
use compiler::passes::optimize;
use ir::reference::Tensor;

/// The block tile of a GEMM entry, parsed from its plan summary
/// (`... tile=BMxBNxBK thread=TMxTN threads=T`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tile {
    bm: usize,
    bn: usize,
}

fn tile_of(plan: &str) -> Option<Tile> {
    let dims = plan
        .split_whitespace()
        .find_map(|w| w.strip_prefix("tile="))?;
    let mut it = dims.split('x').map(|d| d.parse::<usize>().ok());
    Some(Tile {
        bm: it.next()??,
        bn: it.next()??,
    })
}

/// Wavefronts per access `[(As load, As store), (Bs load, Bs store)]`,
/// derived by hand (banks `w % 32`, `As` is `[8][RA]`, `Bs` is `[8][RB]`,
/// both starting at bank 0; `BM` and `BN` are powers of two, `BM` ≥ 16,
/// `BN` in 16..=64; the row strides `RA = BM + a_pad`, `RB = BN + b_pad`
/// with pads (4, 0) in fp32, (8, 8) in tf32, (4, 4) in fp16 and bf16):
///
/// - `A` stores: the gather stores lane `l` at `(l % 8)·RA + l / 8`. With
///   `RA` ≡ 4 (mod 16) (fp32, fp16, bf16) the eight rows start at eight
///   distinct multiples of 4 and the 32 lanes hit 32 banks: 1. With `RA` ≡
///   8 (mod 16) (tf32) rows `r` and `r + 4` start in the same bank: 2.
/// - `B` stores: lane `l` stores column `l % BN` of row `l / BN`: for `BN`
///   ≥ 32 one row of consecutive words: 1; for `BN` = 16 two rows `RB`
///   apart, which overlap in `RB` mod 32 < 16 banks unless `RB` = 16: 2
///   when padded.
/// - fp32 loads: lane `(ty, tx)` reads `As` at `ty·TM + c` (2 or 4 rows per
///   warp, distinct banks, the lanes of a row broadcast): 1; and `Bs` at
///   `tx·TN + c`: `BN / TN` lanes at stride `TN`, i.e. 16 lanes at stride
///   4 (`BN` = 64: 2 words per bank, 2) or 8 lanes at stride 4 or 2 (1).
/// - tensor-core loads: lane `4g + t` reads word `s·t·R + g + c` (`s` = 1
///   for tf32, 2 for the 16-bit types): `s·R` ≡ 8 (mod 16) puts the four
///   `t` eight banks apart, so the 32 lanes hit 32 banks: 1, for `As` and
///   `Bs` in all three.
fn expected(precision: Precision, t: Tile) -> [(u64, u64); 2] {
    let b_store = if t.bn == 16 { 2 } else { 1 };
    match precision {
        Precision::Fp32 => [(1, 1), (if t.bn == 64 { 2 } else { 1 }, 1)],
        Precision::Tf32 => [(1, 2), (1, b_store)],
        Precision::Fp16 | Precision::Bf16 => [(1, 1), (1, b_store)],
    }
}

fn ratio(x: Option<f64>) -> String {
    x.map_or_else(|| "-".into(), |r| format!("{r:.2}"))
}

fn stats(s: &SharedStats) -> String {
    format!("ld {} st {}", ratio(s.load_ratio()), ratio(s.store_ratio()))
}

/// The launches' counts summed per entry.
fn per_entry(compiled: &CompiledCuda, banks: &[LaunchShared]) -> Vec<LaunchShared> {
    let mut out = vec![LaunchShared::default(); compiled.entries.len()];
    for (l, b) in compiled.kernels.iter().zip(banks) {
        out[l.entry].add_arrays(b.arrays.iter().copied());
    }
    out
}

/// Lower `cfg` at `precision`, run it through the emulator, print the
/// report and check every GEMM entry against [`expected`]; the tiles seen.
fn measure(name: &str, cfg: &DenseNetConfig, batch: usize, precision: Precision) -> Vec<Tile> {
    let mut g = build(cfg, batch).expect("build");
    compiler::weights::randomize(&mut g, 7);
    optimize(&mut g, true).expect("pipeline");
    let net = kernels_of(&g).expect("kernels");
    let opts = CudaOptions {
        precision,
        ..CudaOptions::default()
    };
    let compiled = cuda::lower(&net.kernels, &opts).expect("lower");
    let mut mem = arena(net.arena_bytes);
    for (v, &id) in net.inputs.iter().zip(g.inputs()) {
        let x = Tensor::random_uniform(g.node(id).ty.shape.clone(), 7, -1.0, 1.0);
        write(&mut mem, v, &x);
    }
    let banks = emulate::run_with_banks(&compiled, &mut mem).expect("emulation");
    assert_eq!(banks.len(), compiled.kernels.len());

    eprintln!("== {name}, --precision {precision}: shared wavefronts per access (1 = no conflict)");
    let mut tiles = Vec::new();
    for (e, b) in compiled.entries.iter().zip(per_entry(&compiled, &banks)) {
        let Some(tile) = tile_of(&e.plan) else {
            assert!(
                b.arrays.is_empty(),
                "{}: shared traffic in {}",
                e.symbol,
                e.plan
            );
            continue;
        };
        eprintln!(
            "{:<22} x{:<3} {:<67} As: {}  Bs: {}  all: {}",
            e.symbol,
            e.launches,
            e.plan,
            stats(&b.arrays[0]),
            stats(&b.arrays[1]),
            stats(&b.total())
        );
        assert_eq!(b.arrays.len(), 2, "{}", e.symbol);
        for (array, (s, (load, store))) in ["As", "Bs"]
            .iter()
            .zip(b.arrays.iter().zip(expected(precision, tile)))
        {
            let want = SharedStats {
                load_wavefronts: load * s.load_accesses,
                store_wavefronts: store * s.store_accesses,
                ..*s
            };
            assert!(s.load_accesses > 0 && s.store_accesses > 0, "{}", e.symbol);
            assert_eq!(*s, want, "{} {array} ({}, {precision})", e.symbol, e.plan);
        }
        tiles.push(tile);
    }
    let mut all = SharedStats::default();
    for b in &banks {
        all += b.total();
    }
    eprintln!(
        "all launches: {} load / {} store wavefronts for {} / {} accesses ({})",
        all.load_wavefronts,
        all.store_wavefronts,
        all.load_accesses,
        all.store_accesses,
        stats(&all)
    );
    tiles
}

/// densenet121's layout at a small size, wide enough that the GEMM tiles
/// are 16 (3x3 convs, classifier), 32 (stem, transition) and 64 (the
/// bottlenecks) columns wide.
fn small() -> (DenseNetConfig, usize) {
    let o = ConfigOverrides {
        block_config: Some(vec![2, 2]),
        growth_rate: Some(16),
        num_init_features: Some(32),
        image_size: Some(32),
        num_classes: Some(10),
        ..Default::default()
    };
    let cfg = DenseNetConfig::resolve(Some("densenet121"), &o).expect("config");
    (cfg, 1)
}

#[test]
fn gemm_bank_conflicts_are_the_derived_ones() {
    let (cfg, batch) = small();
    for precision in Precision::ALL {
        let tiles = measure("small densenet121", &cfg, batch, precision);
        for bn in [16, 32, 64] {
            assert!(
                tiles.iter().any(|t| t.bn == bn),
                "no {bn}-column tile in {tiles:?}: the check covers less than it says"
            );
        }
    }
}

/// The report for densenet121 at full depth: 10 s for both precisions at
/// image 64, about a minute at `DNC_BANKS_IMAGE=224` (2 cores).
#[test]
#[ignore = "slow: densenet121 at full depth through the emulator"]
fn densenet121_bank_report() {
    let image = std::env::var("DNC_BANKS_IMAGE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(64);
    let o = ConfigOverrides {
        image_size: Some(image),
        ..Default::default()
    };
    let cfg = DenseNetConfig::resolve(Some("densenet121"), &o).expect("config");
    for precision in Precision::ALL {
        measure(&format!("densenet121 image {image}"), &cfg, 1, precision);
    }
}
