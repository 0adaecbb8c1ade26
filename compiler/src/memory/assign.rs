//! Stage 3: offsets in the arena, greedy by size with best fit.
//!
//! The "greedy by size" offset calculation of Pisarchyk & Lee (2020,
//! "Efficient Memory Management for Deep Neural Net Inference"), also the
//! shape of TVM's static planner: buffers in decreasing size; each goes
//! into the smallest gap between the buffers already placed that are live
//! at some common step, or above the highest of them.

use super::{Lifetime, ALIGN};

/// A buffer to place.
#[derive(Debug, Clone)]
pub struct Item {
    pub name: String,
    pub bytes: usize,
    pub life: Lifetime,
}

fn align(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

/// Offsets (by name) and the arena size. Deterministic: ties break by
/// first use, then name.
pub fn greedy_by_size(items: &[Item]) -> (Vec<(String, usize)>, usize) {
    let mut order: Vec<&Item> = items.iter().collect();
    order.sort_by(|a, b| {
        b.bytes
            .cmp(&a.bytes)
            .then(a.life.first.cmp(&b.life.first))
            .then(a.name.cmp(&b.name))
    });
    // (offset, aligned size, lifetime) of the buffers placed so far.
    let mut placed: Vec<(usize, usize, Lifetime)> = Vec::with_capacity(items.len());
    let mut offsets = Vec::with_capacity(items.len());
    let mut arena = 0;
    for item in order {
        let size = align(item.bytes);
        let mut conflicts: Vec<(usize, usize)> = placed
            .iter()
            .filter(|p| p.2.overlaps(&item.life))
            .map(|p| (p.0, p.0 + p.1))
            .collect();
        conflicts.sort();
        let mut best: Option<(usize, usize)> = None; // (waste, offset)
        let mut top = 0;
        for (start, end) in conflicts {
            if start >= top + size {
                let waste = start - top - size;
                if best.is_none_or(|(w, _)| waste < w) {
                    best = Some((waste, top));
                }
            }
            top = top.max(end);
        }
        let offset = best.map_or(top, |(_, o)| o);
        placed.push((offset, size, item.life));
        arena = arena.max(offset + size);
        offsets.push((item.name.clone(), offset));
    }
    (offsets, arena)
}
