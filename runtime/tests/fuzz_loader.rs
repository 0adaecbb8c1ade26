//! Fuzzing the loader with a fixed budget: every truncation, every single-byte flip, thousands
//! of seeded multi-byte and structure-aware mutations (some re-sealed so they get past the
//! checksums into the bounds checks), and proptest cases, over real artefacts.
//!
//! The property: `Artefact::read` never panics, never allocates more than the input plus a
//! small constant in one allocation, and returns `Ok` only for the intact bytes. (Padding is
//! checked to be zero, so a mutation of padding is rejected too.)

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use proptest::prelude::*;
use runtime::hash::xxh64;
use runtime::{Artefact, ArtefactError, Error};

/// Records the largest single allocation made by the current thread.
struct Tracking;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // try_with: allocations during thread teardown must not touch a destroyed thread-local.
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
}

// SAFETY: forwards every call to the system allocator unchanged; only records sizes.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Tracking = Tracking;

/// Slack over the input's length for one allocation (error messages, the section list).
const SLACK: usize = 8 << 10;

/// Reads `bytes`, checking the allocation bound; returns whether it was accepted.
fn accepted(bytes: &[u8]) -> bool {
    LARGEST.with(|l| l.set(0));
    let result = Artefact::read(bytes);
    let largest = LARGEST.with(Cell::get);
    assert!(
        largest <= bytes.len() + SLACK,
        "reading {} bytes made an allocation of {largest} bytes",
        bytes.len()
    );
    match result {
        Ok(_) => true,
        Err(Error::Artefact(_)) => false,
        Err(e) => panic!("unexpected error kind: {e}"),
    }
}

fn check_mutant(original: &[u8], mutant: &[u8], what: &str) {
    if mutant != original {
        assert!(
            !accepted(mutant),
            "{what}: a modified artefact was accepted"
        );
    }
}

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Recomputes the table and header checksums so a structural mutation reaches the bounds
/// checks (a no-op if the count field is itself absurd).
fn reseal(b: &mut [u8]) {
    if b.len() < 64 {
        return;
    }
    let count = u32::from_le_bytes([b[32], b[33], b[34], b[35]]) as usize;
    if let Some(table) = b.get(64..64 + count.min(64) * 32) {
        let sum = xxh64(table);
        b[40..48].copy_from_slice(&sum.to_le_bytes());
    }
    let sum = xxh64(&b[..56]);
    b[56..64].copy_from_slice(&sum.to_le_bytes());
}

struct Budget {
    truncations: usize,
    flips: usize,
    multi: usize,
    structural: usize,
}

fn fuzz(original: &[u8], multi: usize, structural: usize, seed: u64) -> Budget {
    assert!(accepted(original), "the original artefact must be valid");
    let mut budget = Budget {
        truncations: 0,
        flips: 0,
        multi: 0,
        structural: 0,
    };

    for len in 0..original.len() {
        match Artefact::read(&original[..len]) {
            Err(Error::Artefact(ArtefactError::Truncated(_))) => {}
            Err(e) => panic!("truncation to {len} bytes reported as: {e}"),
            Ok(_) => panic!("truncation to {len} bytes accepted"),
        }
        budget.truncations += 1;
    }

    let mut m = original.to_vec();
    for i in 0..original.len() {
        for mask in [0x01u8, 0x80, 0xFF] {
            m[i] ^= mask;
            check_mutant(original, &m, &format!("byte {i} ^ {mask:#x}"));
            m[i] ^= mask;
            budget.flips += 1;
        }
    }

    let mut rng = Rng(seed);
    for n in 0..multi {
        let mut m = original.to_vec();
        for _ in 0..1 + rng.below(8) {
            let at = rng.below(m.len());
            m[at] = rng.next() as u8;
        }
        check_mutant(original, &m, &format!("multi-byte mutation {n}"));
        budget.multi += 1;
    }

    // Header and section table fields set to boundary values, checksums re-sealed.
    let len = original.len() as u64;
    let interesting = [
        0,
        1,
        31,
        32,
        63,
        64,
        65,
        128,
        len - 1,
        len,
        len + 1,
        u64::from(u32::MAX),
        i64::MAX as u64,
        u64::MAX - 63,
        u64::MAX,
    ];
    let count =
        u32::from_le_bytes([original[32], original[33], original[34], original[35]]) as usize;
    let fields: Vec<(usize, usize)> =
        [(8, 4), (12, 4), (16, 8), (24, 8), (32, 4), (36, 4), (48, 8)]
            .into_iter()
            .chain((0..count).flat_map(|e| {
                let at = 64 + e * 32;
                [(at, 4), (at + 4, 4), (at + 8, 8), (at + 16, 8)]
            }))
            .collect();
    for n in 0..structural {
        let mut m = original.to_vec();
        let (at, width) = fields[rng.below(fields.len())];
        let value = if rng.below(2) == 0 {
            interesting[rng.below(interesting.len())]
        } else {
            rng.next()
        };
        m[at..at + width].copy_from_slice(&value.to_le_bytes()[..width]);
        reseal(&mut m);
        check_mutant(
            original,
            &m,
            &format!("structural mutation {n}: field at {at} = {value:#x}"),
        );
        budget.structural += 1;
    }
    budget
}

fn report(name: &str, b: &Budget) {
    eprintln!(
        "{name}: {} truncations, {} single-byte flips, {} multi-byte mutations, {} structural mutations: no crash, no acceptance",
        b.truncations, b.flips, b.multi, b.structural
    );
}

#[test]
fn fuzz_small_artefact() {
    let bytes = common::toy_artefact_bytes(b"\x7fELF a small stand-in for the shared object");
    let b = fuzz(&bytes, 20_000, 20_000, 0x5EED_0001);
    report("small artefact", &b);
    assert!(b.truncations + b.flips + b.multi + b.structural > 40_000);
}

#[test]
fn fuzz_artefact_with_a_real_shared_object() {
    let Some(so) = common::toy_so() else { return };
    let bytes = common::toy_artefact_bytes(so);
    let b = fuzz(&bytes, 5_000, 5_000, 0x5EED_0002);
    report("artefact with a real shared object", &b);
}

#[test]
fn truncated_files_on_disk_are_errors() {
    let bytes = common::toy_artefact_bytes(b"so");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t.dnc");
    for len in [0, 7, 8, 63, 64, 100, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&path, &bytes[..len]).expect("write");
        let e = runtime::Model::load(&path).expect_err("truncated");
        assert!(
            e.to_string().starts_with("truncated artefact"),
            "{len}: {e}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_edits_are_rejected(edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..16)) {
        let original = common::toy_artefact_bytes(b"so");
        let mut m = original.clone();
        for (at, value) in edits {
            let i = at.index(m.len());
            m[i] = value;
        }
        check_mutant(&original, &m, "proptest edit");
    }

    #[test]
    fn arbitrary_bytes_after_the_magic_never_crash(tail in prop::collection::vec(any::<u8>(), 0..512)) {
        let mut bytes = runtime::artefact::MAGIC.to_vec();
        bytes.extend_from_slice(&1u32.to_le_bytes());
        bytes.extend_from_slice(&tail);
        prop_assert!(!accepted(&bytes));
        let mut sealed = bytes.clone();
        reseal(&mut sealed);
        prop_assert!(!accepted(&sealed));
    }
}

/// The seed of the cargo-fuzz targets (`fuzz/seeds/toy.dnc`) must stay a valid artefact of the
/// current format; `DNC_BLESS=1` rewrites it.
#[test]
fn cargo_fuzz_seed_is_a_current_artefact() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/toy.dnc");
    let fresh = common::toy_artefact_bytes(b"\x7fELF a small stand-in for the shared object");
    if std::env::var_os("DNC_BLESS").is_some() {
        std::fs::write(&path, &fresh).expect("write seed");
    }
    let seed = std::fs::read(&path).expect("read fuzz/seeds/toy.dnc");
    assert!(
        seed == fresh,
        "fuzz/seeds/toy.dnc is stale: regenerate with DNC_BLESS=1"
    );
    assert!(accepted(&seed));
}
