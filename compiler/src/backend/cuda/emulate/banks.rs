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
//! (`simt.rs`), and ptxas's placement is its own; since one instruction
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

/// Warp-level instructions and wavefronts of one shared access by a block
/// whose thread `t` accesses word `base + idx[t]` where `active[t]` (every
/// thread when `None`); warps are runs of [`BANKS`] threads.
pub(super) fn block_access(base: u64, idx: &[i32], active: Option<&[bool]>) -> (u64, u64) {
    let (mut accesses, mut waves) = (0, 0);
    let mut words = [0u64; BANKS];
    for w0 in (0..idx.len()).step_by(BANKS) {
        let mut n = 0;
        for t in w0..idx.len().min(w0 + BANKS) {
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
    (accesses, waves)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Thread `t` of `threads` accesses word `stride·t`: instructions and
    /// wavefronts.
    fn strided(threads: usize, stride: i32) -> (u64, u64) {
        let idx: Vec<i32> = (0..threads as i32).map(|t| t * stride).collect();
        block_access(0, &idx, None)
    }

    #[test]
    fn strides_conflict_as_the_banks_say() {
        // Two warps, one instruction each.
        assert_eq!(strided(64, 1), (2, 2));
        assert_eq!(strided(64, 2), (2, 4));
        assert_eq!(strided(64, 4), (2, 8));
        assert_eq!(strided(64, 32), (2, 64));
        // An odd stride visits every bank once.
        assert_eq!(strided(64, 33), (2, 2));
        // A partial last warp is one instruction.
        assert_eq!(strided(40, 1), (2, 2));
    }

    #[test]
    fn a_broadcast_is_one_wavefront() {
        // All lanes read word 5; then lanes read word t % 2 (two banks).
        assert_eq!(block_access(0, &[5; 64], None), (2, 2));
        let two: Vec<i32> = (0..64).map(|t| t % 2).collect();
        assert_eq!(block_access(0, &two, None), (2, 2));
        // Words 0 and 32: two distinct words in bank 0.
        let far: Vec<i32> = two.iter().map(|i| i * 32).collect();
        assert_eq!(block_access(0, &far, None), (2, 2 * 2));
    }

    #[test]
    fn predicated_accesses_count_active_lanes_only() {
        // Lanes below 16 of warp 0 at stride 32: 16 words in bank 0.
        let idx: Vec<i32> = (0..64).map(|t| 32 * t).collect();
        let half: Vec<bool> = (0..64).map(|t| t < 16).collect();
        assert_eq!(block_access(0, &idx, Some(&half)), (1, 16));
        // No lane of either warp: no instruction.
        assert_eq!(block_access(0, &idx, Some(&[false; 64])), (0, 0));
    }

    #[test]
    fn arrays_start_at_aligned_bases() {
        assert_eq!(next_base(None), 0);
        assert_eq!(next_base(Some((0, 33))), 64);
        assert_eq!(next_base(Some((64, 32))), 96);
        // Words are counted from the array's base: stride 2 from word 32.
        let base = next_base(Some((0, 3)));
        assert_eq!(base, 32);
        let idx: Vec<i32> = (0..32).map(|t| 2 * t).collect();
        assert_eq!(block_access(base, &idx, None), (1, 2));
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
