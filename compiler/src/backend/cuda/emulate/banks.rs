//! Shared-memory bank conflicts, counted as the emulator runs a kernel, so
//! that a change of the shared layout (padding a row, reordering a copy)
//! can be judged offline with numbers.
//!
//! Model (sm_80 / sm_90, 32-bit accesses): shared memory is 32 banks of
//! 4-byte words, word `w` in bank `w % 32`. A warp is threads `32·w ..
//! 32·w + 31` of the block. One shared load or store of the kernel
//! ([`Kb::load_shared`](super::Kb::load_shared), `store_shared`,
//! `store_shared_if`) is one instruction per warp that has at least one
//! active lane (every lane, or for `store_shared_if` those whose condition
//! holds); it takes as many *wavefronts* as the largest number of
//! **distinct** words any one bank is asked for. Lanes reading one word
//! share it (a broadcast), so the ideal is 1 wavefront per instruction;
//! `n` means an `n`-way conflict. Lanes *storing* to one word would be a
//! race, which the emulator reports anyway.
//!
//! Layout: the block's shared arrays lie one after the other in
//! declaration order, each starting at a multiple of [`ARRAY_ALIGN_WORDS`]
//! = 32 words (128 bytes), i.e. at bank 0. The PTX only asks for 16 bytes
//! (`kb.rs`), and ptxas's placement is its own; since one instruction
//! touches one array, only its base modulo 32 matters, and the GEMM kernels'
//! `As` (`8·(BM + 4)` floats) is a multiple of 32 words long, so `Bs`
//! starts at bank 0 under either alignment.
//!
//! Not modelled:
//! - 64- and 128-bit accesses (a `.v2`/`.v4` instruction moves 256 or 512
//!   bytes per warp, at least 2 or 4 wavefronts): the `Kb` trait has only
//!   32-bit shared accesses and the count is made on them, but LLVM's
//!   load/store vectorizer merges consecutive ones of a thread in the PTX.
//!   It does so for the f32 GEMM's register-tile reads (`ld.shared.v4.f32`
//!   and `.v2`, sm_80, O3), so its load counts are those of the 32-bit
//!   accesses of the source, not of the PTX instructions. The stores of
//!   both precisions and the TF32 fragment reads are 32-bit in the PTX,
//!   and counted as issued;
//! - `ldmatrix`/`stmatrix`, asynchronous copies, atomics;
//! - timing: wavefronts of different warps contending for the banks,
//!   latency hiding; a wavefront count is a cost, not a time.

use super::{Sim, SB, SI, SS};

/// Banks of shared memory; also lanes of a warp.
pub(crate) const BANKS: usize = 32;

/// Each shared array starts at a multiple of this many 4-byte words.
pub const ARRAY_ALIGN_WORDS: usize = 32;

/// Shared-memory traffic of one array, or of a whole launch: warp-level
/// instructions (`*_accesses`) and the wavefronts they took (module docs).
/// `wavefronts / accesses` is 1 without conflicts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SharedStats {
    pub load_accesses: u64,
    pub load_wavefronts: u64,
    pub store_accesses: u64,
    pub store_wavefronts: u64,
}

impl SharedStats {
    /// Wavefronts per load instruction (`None` without loads).
    pub fn load_ratio(&self) -> Option<f64> {
        ratio(self.load_wavefronts, self.load_accesses)
    }

    /// Wavefronts per store instruction (`None` without stores).
    pub fn store_ratio(&self) -> Option<f64> {
        ratio(self.store_wavefronts, self.store_accesses)
    }
}

fn ratio(wavefronts: u64, accesses: u64) -> Option<f64> {
    (accesses > 0).then(|| wavefronts as f64 / accesses as f64)
}

impl std::ops::AddAssign for SharedStats {
    fn add_assign(&mut self, o: SharedStats) {
        self.load_accesses += o.load_accesses;
        self.load_wavefronts += o.load_wavefronts;
        self.store_accesses += o.store_accesses;
        self.store_wavefronts += o.store_wavefronts;
    }
}

/// The shared traffic of one launch, per shared array in declaration order
/// (a GEMM: `As`, then `Bs`); empty for kernels without shared memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LaunchShared {
    pub arrays: Vec<SharedStats>,
}

impl LaunchShared {
    /// The sum over the arrays.
    pub fn total(&self) -> SharedStats {
        let mut t = SharedStats::default();
        for &a in &self.arrays {
            t += a;
        }
        t
    }

    /// Add per-array counts (one block's, or another launch's of the same
    /// entry), array by array.
    pub fn add_arrays(&mut self, arrays: impl Iterator<Item = SharedStats>) {
        for (i, a) in arrays.enumerate() {
            if i == self.arrays.len() {
                self.arrays.push(SharedStats::default());
            }
            self.arrays[i] += a;
        }
    }
}

/// The word address of a new array's element 0, after an array of `len`
/// words at `prev` (`None`: the first array).
pub(super) fn next_base(prev: Option<(u64, usize)>) -> u64 {
    prev.map_or(0, |(base, len)| {
        (base + len as u64).next_multiple_of(ARRAY_ALIGN_WORDS as u64)
    })
}

/// Wavefronts of one warp instruction whose active lanes access `words`
/// (word addresses; at most [`BANKS`] of them, reordered here): the most
/// distinct words in one bank, 0 when no lane is active.
pub(crate) fn wavefronts(words: &mut [u64]) -> u64 {
    // Fast path: every lane in its own bank.
    let mut seen = 0u32;
    if words.iter().all(|&w| {
        let bit = 1u32 << (w % BANKS as u64);
        let fresh = seen & bit == 0;
        seen |= bit;
        fresh
    }) {
        return u64::from(!words.is_empty());
    }
    words.sort_unstable();
    let mut per_bank = [0u64; BANKS];
    let mut last = None;
    for &w in words.iter() {
        if last != Some(w) {
            per_bank[(w % BANKS as u64) as usize] += 1;
            last = Some(w);
        }
    }
    per_bank.into_iter().max().unwrap_or(0)
}

impl Sim<'_> {
    /// Count one shared access of every warp: `s[idx]` where `active`
    /// (every thread when `None`).
    pub(super) fn count_banks(&mut self, s: SS, idx: SI, active: Option<SB>, store: bool) {
        let base = self.shared[s.0].base;
        let idx = &self.ints[idx.0];
        let active = active.map(|c| &self.bools[c.0]);
        let (mut accesses, mut waves) = (0, 0);
        let mut words = [0u64; BANKS];
        for w0 in (0..self.threads).step_by(BANKS) {
            let mut n = 0;
            for t in w0..self.threads.min(w0 + BANKS) {
                if active.is_none_or(|a| a[t]) {
                    // An out-of-bounds index is a fault reported elsewhere.
                    words[n] = base.wrapping_add_signed(i64::from(idx[t]));
                    n += 1;
                }
            }
            if n > 0 {
                accesses += 1;
                waves += wavefronts(&mut words[..n]);
            }
        }
        let st = &mut self.shared[s.0].stats;
        if store {
            st.store_accesses += accesses;
            st.store_wavefronts += waves;
        } else {
            st.load_accesses += accesses;
            st.load_wavefronts += waves;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cuda::kb::{Kb, KbExt, Result};

    /// Run `body` as one block of `threads` threads; the per-array counts
    /// (the emulator must report no fault).
    fn counts(threads: usize, body: impl FnOnce(&mut Sim) -> Result<()>) -> Vec<SharedStats> {
        let mut arena = [0.0f32; 4];
        let mut writes = [0u8; 4];
        let mut sim = Sim::bare(threads, &mut arena, &mut writes);
        body(&mut sim).expect("emulation never fails to build");
        assert_eq!(sim.fault, None);
        sim.shared.iter().map(|a| a.stats).collect()
    }

    /// Every thread stores `s[stride·tid]`, then (after a barrier) loads it.
    fn strided(threads: usize, stride: i32) -> SharedStats {
        counts(threads, |k| {
            let s = k.shared(threads * stride as usize)?;
            let t = k.tid()?;
            let i = k.mulc(t, stride)?;
            let v = k.cf(1.0);
            k.store_shared(s, i, v)?;
            k.barrier()?;
            k.load_shared(s, i).map(|_| ())
        })[0]
    }

    fn both(accesses: u64, wavefronts: u64) -> SharedStats {
        SharedStats {
            load_accesses: accesses,
            load_wavefronts: wavefronts,
            store_accesses: accesses,
            store_wavefronts: wavefronts,
        }
    }

    #[test]
    fn strides_conflict_as_the_banks_say() {
        // Two warps, one instruction each per direction.
        assert_eq!(strided(64, 1), both(2, 2));
        assert_eq!(strided(64, 2), both(2, 4));
        assert_eq!(strided(64, 4), both(2, 8));
        assert_eq!(strided(64, 32), both(2, 64));
        // An odd stride visits every bank once.
        assert_eq!(strided(64, 33), both(2, 2));
        // A partial last warp is one instruction.
        assert_eq!(strided(40, 1), both(2, 2));
    }

    #[test]
    fn a_broadcast_is_one_wavefront() {
        let s = counts(64, |k| {
            let s = k.shared(64)?;
            let t = k.tid()?;
            let v = k.cf(1.0);
            k.store_shared(s, t, v)?;
            k.barrier()?;
            // All lanes read word 5; then lanes read word t % 2 (two banks).
            let five = k.ci(5);
            k.load_shared(s, five)?;
            let two = k.rem(t, 2)?;
            k.load_shared(s, two)?;
            // Words 0 and 32: two distinct words in bank 0.
            let far = k.mulc(two, 32)?;
            k.load_shared(s, far).map(|_| ())
        });
        assert_eq!(s[0].load_accesses, 6);
        assert_eq!(s[0].load_wavefronts, 2 + 2 + 2 * 2);
    }

    #[test]
    fn predicated_stores_count_active_lanes_only() {
        let s = counts(64, |k| {
            let s = k.shared(64 * 32)?;
            let t = k.tid()?;
            let v = k.cf(1.0);
            // Lanes below 16 of warp 0 store at stride 32: 16 words in bank 0.
            let half = k.ultc(t, 16)?;
            let i = k.mulc(t, 32)?;
            k.store_shared_if(half, s, i, v)?;
            // No lane of either warp: no instruction.
            let none = k.ultc(t, 0)?;
            k.store_shared_if(none, s, t, v)
        });
        assert_eq!(
            s[0],
            SharedStats {
                store_accesses: 1,
                store_wavefronts: 16,
                ..SharedStats::default()
            }
        );
    }

    #[test]
    fn arrays_are_counted_apart_from_their_aligned_bases() {
        assert_eq!(next_base(None), 0);
        assert_eq!(next_base(Some((0, 33))), 64);
        assert_eq!(next_base(Some((64, 32))), 96);
        let s = counts(32, |k| {
            let a = k.shared(3)?;
            let b = k.shared(64)?;
            let t = k.tid()?;
            let v = k.cf(1.0);
            let zero = k.ci(0);
            let first = k.ultc(t, 1)?;
            k.store_shared_if(first, a, zero, v)?;
            let i = k.mulc(t, 2)?;
            k.store_shared(b, i, v)
        });
        assert_eq!(s[0].store_wavefronts, 1);
        assert_eq!(s[1].store_wavefronts, 2);
    }

    #[test]
    fn wavefronts_of_hand_made_warps() {
        assert_eq!(wavefronts(&mut []), 0);
        assert_eq!(wavefronts(&mut [7]), 1);
        let mut w: Vec<u64> = (0..32).map(|l| 1000 + l).collect();
        assert_eq!(wavefronts(&mut w), 1);
        // The tf32 B fragment: lane 4g + t reads t·BN + g, BN = 64.
        let mut w: Vec<u64> = (0..32).map(|l| (l % 4) * 64 + l / 4).collect();
        assert_eq!(wavefronts(&mut w), 4);
        // Three distinct words in bank 3, one of them read twice.
        assert_eq!(wavefronts(&mut [3, 35, 67, 35, 4]), 3);
    }
}
