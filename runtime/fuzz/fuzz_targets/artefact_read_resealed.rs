//! Bytes into the artefact reader after their checksums were recomputed, so the fuzzer's
//! mutations reach the bounds checks, the layout checks and the manifest parser instead of
//! stopping at the first checksum. It must return, never crash.
#![no_main]

use libfuzzer_sys::fuzz_target;
use runtime::hash::xxh64;

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// Recomputes every section checksum (for entries in bounds), the table's and the header's.
fn reseal(b: &mut [u8]) {
    if b.len() < 64 {
        return;
    }
    let count = u32::from_le_bytes([b[32], b[33], b[34], b[35]]).min(64) as usize;
    let table_end = (64 + count * 32).min(b.len() / 32 * 32);
    for entry in (64..table_end).step_by(32) {
        let (offset, len) = (u64_at(b, entry + 8), u64_at(b, entry + 16));
        let end = offset.checked_add(len).filter(|&e| e <= b.len() as u64);
        if let Some(end) = end {
            let sum = xxh64(&b[offset as usize..end as usize]);
            b[entry + 24..entry + 32].copy_from_slice(&sum.to_le_bytes());
        }
    }
    let sum = xxh64(&b[64..table_end.max(64)]);
    b[40..48].copy_from_slice(&sum.to_le_bytes());
    let sum = xxh64(&b[..56]);
    b[56..64].copy_from_slice(&sum.to_le_bytes());
}

fuzz_target!(|data: &[u8]| {
    let mut bytes = data.to_vec();
    reseal(&mut bytes);
    let _ = runtime::Artefact::read(&bytes);
});
