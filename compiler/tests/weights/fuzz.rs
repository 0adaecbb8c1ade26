//! Corrupt and truncated weight files are errors, never panics, never huge
//! allocations.
//!
//! Real files from `tools/gen_weight_test_files.py` are mutated byte by
//! byte and truncated at every length; each variant must give `Ok` or `Err`.
//! A panic fails the test (nothing catches it; a hook prints which variant
//! it was). A counting allocator checks that no variant allocates more than
//! a small multiple of its own size, whatever lengths it declares.
//!
//! `torch.save` archives carry CRC-32s, so most mutations of the pickle
//! would stop at the CRC check; the pickle is therefore also mutated and
//! truncated *inside* the archive with its CRC and sizes fixed up, which
//! drives the pickle VM itself.

use crate::fuzz_support::{install_hook, measure, read, replacements, Rng};
use compiler::weights::parse_tensors;
use std::path::Path;

/// Parse one variant; returns the peak bytes it held live.
fn parse(bytes: &[u8], case: impl FnOnce() -> String) -> usize {
    measure(bytes, case, |b| parse_tensors(b, Path::new("fuzz")))
}

/// Every byte position with every replacement, then every truncation.
fn exhaustive(name: &str) -> usize {
    let orig = read(name);
    let mut n = 0;
    let mut buf = orig.clone();
    for i in 0..orig.len() {
        for r in replacements(orig[i]) {
            buf[i] = r;
            parse(&buf, || format!("{name}: byte {i} := {r:#04x}"));
            n += 1;
        }
        buf[i] = orig[i];
    }
    n + truncations(name, &orig)
}

fn truncations(name: &str, orig: &[u8]) -> usize {
    for len in 0..orig.len() {
        parse(&orig[..len], || format!("{name}: truncated to {len} bytes"));
    }
    orig.len()
}

/// `count` random single- and multi-byte mutations, then every truncation.
fn sampled(name: &str, count: usize, seed: u64) -> usize {
    let orig = read(name);
    let mut rng = Rng(seed);
    for k in 0..count {
        let mut buf = orig.clone();
        let edits = 1 + rng.below(4);
        for _ in 0..edits {
            let i = rng.below(buf.len());
            buf[i] = rng.next() as u8;
        }
        parse(&buf, || format!("{name}: sample {k} (seed {seed})"));
    }
    count + truncations(name, &orig)
}

#[test]
fn mutated_and_truncated_files_never_panic() {
    install_hook();
    let mut n = 0;
    for name in [
        "views.pth",
        "views_zip64.pth",
        "mini_densenet.safetensors",
        "mini_densenet_golden.safetensors",
        "legacy_format.pth",
    ] {
        n += exhaustive(name);
    }
    for (name, count) in [
        ("mini_densenet.pth", 4000),
        ("mini_densenet_checkpoint.pth", 3000),
        ("mini_densenet_model_key_proto4.pth", 3000),
        ("mini_densenet_dataparallel.pth", 1000),
        ("mini_densenet_legacy_names.pth", 1000),
        ("dtypes.pth", 2000),
        ("whole_module.pth", 2000),
        ("compressed.pth", 1000),
        ("wrapped_with_model_name.pth", 1000),
        ("unknown_wrapper.pth", 1000),
    ] {
        n += sampled(name, count, n as u64);
    }
    eprintln!("{n} mutated or truncated files parsed");
    assert!(n > 100_000);
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in bytes {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

fn le32(b: &[u8], at: usize) -> usize {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]) as usize
}

fn le16(b: &[u8], at: usize) -> usize {
    usize::from(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// A torch.save archive whose `data.pkl` can be replaced by another pickle
/// no longer than the original, with the directory's CRC and sizes fixed.
struct PickleSlot {
    file: Vec<u8>,
    central: usize,
    start: usize,
    len: usize,
}

impl PickleSlot {
    fn new(name: &str) -> Self {
        let file = read(name);
        let central = (0..file.len() - 4)
            .find(|&i| {
                le32(&file, i) == 0x0201_4b50 && {
                    let n = le16(&file, i + 28);
                    file[i + 46..i + 46 + n].ends_with(b"/data.pkl")
                }
            })
            .expect("data.pkl in the central directory");
        let local = le32(&file, central + 42);
        let start = local + 30 + le16(&file, local + 26) + le16(&file, local + 28);
        let len = le32(&file, central + 24);
        PickleSlot {
            file,
            central,
            start,
            len,
        }
    }

    fn pickle(&self) -> &[u8] {
        &self.file[self.start..self.start + self.len]
    }

    fn with(&self, pkl: &[u8]) -> Vec<u8> {
        assert!(pkl.len() <= self.len);
        let mut f = self.file.clone();
        f[self.start..self.start + pkl.len()].copy_from_slice(pkl);
        let c = self.central;
        f[c + 16..c + 20].copy_from_slice(&crc32(pkl).to_le_bytes());
        let len = (pkl.len() as u32).to_le_bytes();
        f[c + 20..c + 24].copy_from_slice(&len);
        f[c + 24..c + 28].copy_from_slice(&len);
        f
    }
}

#[test]
fn mutated_and_truncated_pickles_never_panic() {
    install_hook();
    // Opcodes worth planting anywhere, beside plain bit flips.
    const OPCODES: &[u8] = b"(tR\x85\x86\x87hjqr\x94.\x8aXe}u]sQb01N\x93c";
    let mut n = 0;
    let mut rng = Rng(7);
    // Small pickles get every replacement at every byte; large ones two
    // per byte (one bit pattern, one opcode), to keep the test quick.
    for (name, every) in [
        ("views.pth", true),
        ("whole_module.pth", true),
        ("mini_densenet_checkpoint.pth", false),
        ("mini_densenet_model_key_proto4.pth", false),
    ] {
        let slot = PickleSlot::new(name);
        let orig = slot.pickle().to_vec();
        assert!(
            parse_tensors(&slot.with(&orig), Path::new(name)).is_ok() || name == "whole_module.pth",
            "the fixed-up archive of {name} must still read"
        );
        let mut pkl = orig.clone();
        for i in 0..orig.len() {
            let plain = replacements(orig[i]);
            let chosen: Vec<u8> = if every {
                plain.iter().chain(OPCODES).copied().collect()
            } else {
                vec![plain[i % 4], OPCODES[rng.below(OPCODES.len())]]
            };
            for r in chosen {
                pkl[i] = r;
                parse(&slot.with(&pkl), || {
                    format!("{name}: pickle byte {i} := {r:#04x}")
                });
                n += 1;
            }
            pkl[i] = orig[i];
        }
        for len in 0..orig.len() {
            parse(&slot.with(&orig[..len]), || {
                format!("{name}: pickle truncated to {len} bytes")
            });
            n += 1;
        }
    }
    eprintln!("{n} mutated or truncated pickles parsed");
    assert!(n > 70_000);
}

#[test]
fn declared_lengths_do_not_drive_allocation() {
    // A BINUNICODE claiming 4 GiB, a LONG_BINPUT at index 2^32-1, a
    // BINUNICODE8 claiming 2^63: all refused without allocating.
    let slot = PickleSlot::new("views.pth");
    for pkl in [
        &b"\x80\x02X\xff\xff\xff\xff"[..],
        &b"\x80\x02Nr\xff\xff\xff\xff."[..],
        &b"\x80\x02\x8d\xff\xff\xff\xff\xff\xff\xff\x7f"[..],
        &b"\x80\x02\x8b\xff\xff\xff\xff"[..],
    ] {
        let peak = parse(&slot.with(pkl), || format!("{pkl:?}"));
        assert!(peak < 1 << 20, "{peak}");
    }
}
