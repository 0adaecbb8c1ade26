//! A CPU emulator of the generated kernels, for checking them without a
//! GPU: it runs the *same emission code* as the NVPTX lowering (the `Kb`
//! trait) with every value a vector over the threads of one block, block
//! after block, in launch order. Each launch runs its *entry*'s code (the
//! plan the shared `.entry` was emitted from, not the launch's own) with
//! the launch's pointer arguments, so a shape key that missed something
//! shows up as a wrong result or a fault.
//!
//! Beyond computing the kernels' results into a host arena, it checks what
//! a GPU would not report:
//! - every global load and store is inside its buffer; a weights load is
//!   inside its parameter's piece; arena loads go through the input
//!   pointer and fall in the kernel's input view; stores go through the
//!   output pointer;
//! - every element of the output view's real pixels is stored exactly once
//!   and nothing else in the arena is stored, its border included (grid
//!   coverage; borders are the CPU's, see the crate's `cuda` module docs);
//! - no 32-bit index arithmetic overflows; divisions see non-negative values;
//! - shared memory is never read before it is written, and two threads
//!   never touch one shared element between barriers unless both only read;
//! - tensor-core operands are values of their type (TF32, FP16, BF16),
//!   issued by whole warps (`warp.rs`).
//!
//! It also counts each launch's shared-memory bank conflicts
//! ([`run_with_banks`], [`run_table_with_banks`]; the model is in
//! `banks.rs`).
//!
//! Float results match the GPU's up to the order of operations, which is
//! the same (`fma` is fused on both), except `ex2.approx.f32` (the output
//! heads' exponential): correctly rounded here, within 2 ulp on the GPU.
//!
//! Only in a build with the `emulator` feature (the crate's tests turn it
//! on): it is for checking the backend, not part of what users link.

use super::plan::Slot;
use super::precision::{self, Operand};
use super::simt::{Buf, Kb, LoopBody, Result, Scalar};
use super::{CompiledCuda, KernelParam};
use crate::backend::kernel::{View, ELEM_BYTES};
use crate::backend::BackendError;
use runtime::artefact::CUDA_MAX_SCALAR;
use thiserror::Error;

mod banks;
mod warp;

pub use banks::{LaunchShared, SharedStats, ARRAY_ALIGN_WORDS};

/// Why emulation failed: a bug in the lowering, or an arena too small.
#[derive(Debug, Error)]
pub enum EmuError {
    #[error("the arena has {have} floats, the kernels need {need}")]
    ArenaTooSmall { have: usize, need: usize },
    #[error("kernel {index} `{name}`, block {block:?}: {message}")]
    Fault {
        index: usize,
        name: String,
        block: [u32; 2],
        message: String,
    },
    #[error("kernel {index} `{name}`: {message}")]
    Coverage {
        index: usize,
        name: String,
        message: String,
    },
    #[error("launch {index} of the table: {message}")]
    Table { index: usize, message: String },
    #[error("emission failed: {0}")]
    Emit(#[from] BackendError),
}

/// Run every kernel of `compiled`, in order, on `arena` (as floats).
pub fn run(compiled: &CompiledCuda, arena: &mut [f32]) -> std::result::Result<(), EmuError> {
    run_with_banks(compiled, arena).map(|_| ())
}

/// [`run`], returning the shared-memory traffic and bank conflicts of each
/// launch of [`CompiledCuda::kernels`] (in its order).
pub fn run_with_banks(
    compiled: &CompiledCuda,
    arena: &mut [f32],
) -> std::result::Result<Vec<LaunchShared>, EmuError> {
    let table: Vec<TableLaunch> = compiled
        .kernels
        .iter()
        .map(|spec| TableLaunch {
            entry: &spec.symbol,
            kernel: spec.desc,
            grid: spec.grid,
            block: spec.block,
            args: spec.params.clone(),
        })
        .collect();
    run_table_with_banks(compiled, &table, &compiled.weights, arena)
}

/// A launch as a runtime issues it from an artefact's launch table: an
/// entry name, the kernel description it computes, grid and block, and
/// the pointer arguments as byte offsets into the device weights and the
/// arena.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableLaunch<'a> {
    pub entry: &'a str,
    /// Index of the kernel description (the manifest's schedule entry).
    pub kernel: usize,
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub args: Vec<KernelParam>,
}

/// Run the launches of a table (in its order) the way the CUDA executor
/// does: each entry is looked up by name among `compiled`'s entries (as
/// `cuModuleGetFunction` would in its PTX), launched with the table's grid
/// and block on `weights` (the device weights as the artefact stores them)
/// and `arena`, with the table's arguments. A table that disagrees with
/// the code (a wrong grid, block or offset) shows up as a fault, a
/// coverage error or a wrong result.
pub fn run_table(
    compiled: &CompiledCuda,
    table: &[TableLaunch<'_>],
    weights: &[u8],
    arena: &mut [f32],
) -> std::result::Result<(), EmuError> {
    run_table_with_banks(compiled, table, weights, arena).map(|_| ())
}

/// [`run_table`], returning the shared-memory traffic and bank conflicts
/// of each launch of `table` (in its order).
pub fn run_table_with_banks(
    compiled: &CompiledCuda,
    table: &[TableLaunch<'_>],
    weights: &[u8],
    arena: &mut [f32],
) -> std::result::Result<Vec<LaunchShared>, EmuError> {
    let mut issues = Vec::with_capacity(table.len());
    for (i, l) in table.iter().enumerate() {
        let bad = |message: String| EmuError::Table { index: i, message };
        let entry = compiled
            .entries
            .iter()
            .position(|e| e.symbol == l.entry)
            .ok_or_else(|| bad(format!("entry `{}` is not in the module", l.entry)))?;
        if l.kernel >= compiled.descs.len() {
            return Err(bad(format!(
                "kernel {} of {} descriptions",
                l.kernel,
                compiled.descs.len()
            )));
        }
        if l.grid[2] != 1 || l.block[1] != 1 || l.block[2] != 1 {
            return Err(bad(format!(
                "grid {:?} / block {:?}: the kernels index blocks by x and y and threads by x only",
                l.grid, l.block
            )));
        }
        let params = compiled.plans[entry].params();
        if params.len() != l.args.len() {
            return Err(bad(format!(
                "{} arguments for the {} parameters of `{}`",
                l.args.len(),
                params.len(),
                l.entry
            )));
        }
        let mut scalars = Vec::new();
        for (j, (p, a)) in params.iter().zip(&l.args).enumerate() {
            if let Slot::Scalar(s) = p.slot {
                match *a {
                    KernelParam::Scalar { value } if (1..=CUDA_MAX_SCALAR).contains(&value) => {
                        scalars.push((s, value as i32))
                    }
                    _ => {
                        return Err(bad(format!(
                            "argument {j} is {a:?} for the {s:?} parameter (a scalar in \
                             1..={CUDA_MAX_SCALAR})"
                        )))
                    }
                }
            }
        }
        let k = scalars
            .iter()
            .find(|(s, _)| *s == Scalar::K)
            .map(|&(_, v)| v as u32);
        let mut args = Vec::with_capacity(params.len());
        for (j, (p, a)) in params.iter().zip(&l.args).enumerate() {
            let Slot::Buf(buf) = p.slot else {
                continue;
            };
            let (offset, align) = match (*a, buf.is_weights()) {
                (KernelParam::Weights { offset }, true) => (offset, 16),
                (KernelParam::Arena { offset }, false) => (offset, ELEM_BYTES as u64),
                _ => {
                    return Err(bad(format!(
                        "argument {j} is {a:?} for the {buf:?} parameter"
                    )))
                }
            };
            let floats = p
                .floats
                .resolve(k)
                .ok_or_else(|| bad(format!("the {buf:?} parameter needs a K argument")))?;
            let base = usize::try_from(offset)
                .ok()
                .filter(|_| offset.is_multiple_of(align))
                .ok_or_else(|| {
                    bad(format!(
                        "argument {j} offset {offset} is not {align}-byte aligned"
                    ))
                })?;
            args.push(Bound {
                buf,
                base: base / ELEM_BYTES,
                floats,
            });
        }
        issues.push(Issue {
            entry,
            desc: l.kernel,
            grid: l.grid,
            block: l.block,
            args,
            scalars,
        });
    }
    execute(compiled, &issues, weights, arena)
}

/// A pointer argument of one launch: its buffer, the element it points
/// at, and (weights) the floats the kernel may read from there.
#[derive(Debug, Clone, Copy)]
struct Bound {
    buf: Buf,
    base: usize,
    floats: usize,
}

/// One launch to emulate: which entry, for which description, its
/// geometry and its arguments.
struct Issue {
    entry: usize,
    desc: usize,
    grid: [u32; 3],
    block: [u32; 3],
    args: Vec<Bound>,
    scalars: Vec<(Scalar, i32)>,
}

fn execute(
    compiled: &CompiledCuda,
    issues: &[Issue],
    weights: &[u8],
    arena: &mut [f32],
) -> std::result::Result<Vec<LaunchShared>, EmuError> {
    let need = compiled.arena_bytes.div_ceil(ELEM_BYTES);
    if arena.len() < need {
        return Err(EmuError::ArenaTooSmall {
            have: arena.len(),
            need,
        });
    }
    let weights: Vec<f32> = weights
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let mut writes = vec![0u8; arena.len()];
    let mut banks = Vec::with_capacity(issues.len());
    for (i, issue) in issues.iter().enumerate() {
        let mut launch = LaunchShared::default();
        let (plan, entry) = (&compiled.plans[issue.entry], &compiled.entries[issue.entry]);
        let (index, desc) = (issue.desc, &compiled.descs[issue.desc]);
        for by in 0..issue.grid[1] {
            for bx in 0..issue.grid[0] {
                let mut sim = Sim {
                    ctaid: [bx as i32, by as i32],
                    weights: &weights,
                    args: &issue.args,
                    scalars: &issue.scalars,
                    input: desc.input,
                    ..Sim::bare(issue.block[0] as usize, arena, &mut writes)
                };
                super::emit(&mut sim, plan)?;
                launch.add_arrays(sim.shared.iter().map(|a| a.stats));
                if let Some(message) = sim.fault {
                    return Err(EmuError::Fault {
                        index,
                        name: entry.symbol.clone(),
                        block: [bx, by],
                        message,
                    });
                }
            }
        }
        // The description's last launch: its output must be covered.
        if issues.get(i + 1).map(|n| n.desc) != Some(index) {
            check_coverage(&desc.output, &writes).map_err(|message| EmuError::Coverage {
                index,
                name: desc.name.clone(),
                message,
            })?;
            writes.fill(0);
        }
        banks.push(launch);
    }
    Ok(banks)
}

/// `(stored pixel, channel within the view, whether the pixel is in the
/// border)` of arena element `e`, if it is in `v`'s channel slice.
fn locate(v: &View, e: usize) -> Option<(usize, usize, bool)> {
    let rel = e.checked_sub(v.offset / ELEM_BYTES)?;
    let (pixel, ch) = (rel / v.pixel_stride, rel % v.pixel_stride);
    let c = ch.checked_sub(v.channel_offset)?;
    let [bh, bw] = v.border;
    let (hs, ws) = (v.h + 2 * bh, v.w + 2 * bw);
    if pixel >= v.n * hs * ws || c >= v.channels {
        return None;
    }
    let (row, col) = ((pixel / ws) % hs, pixel % ws);
    let real = (bh..bh + v.h).contains(&row) && (bw..bw + v.w).contains(&col);
    Some((pixel, c, !real))
}

fn check_coverage(out: &View, writes: &[u8]) -> std::result::Result<(), String> {
    for (e, &count) in writes.iter().enumerate() {
        let inside = locate(out, e);
        // Real pixels once; the border (the CPU's padding) never.
        let want = u8::from(matches!(inside, Some((.., false))));
        if count != want {
            return Err(match inside {
                Some((p, c, border)) => format!(
                    "output {} pixel {p} channel {c} (arena element {e}) stored {count} times",
                    if border { "border" } else { "real" }
                ),
                None => format!("arena element {e} outside the output view stored {count} times"),
            });
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct SI(usize);
#[derive(Debug, Clone, Copy)]
pub(crate) struct SL(usize);
#[derive(Debug, Clone, Copy)]
pub(crate) struct SF(usize);
#[derive(Debug, Clone, Copy)]
pub(crate) struct SB(usize);
#[derive(Debug, Clone, Copy)]
pub(crate) struct SS(usize);

/// Who last touched a shared element, and in which barrier epoch.
#[derive(Debug, Clone, Copy, Default)]
struct Touch {
    write_epoch: u32,
    writer: usize,
    read_epoch: u32,
    /// `usize::MAX` when several threads read in `read_epoch`.
    reader: usize,
}

struct SharedArray {
    data: Vec<f32>,
    touch: Vec<Touch>,
    /// Word address of element 0 in the block's shared memory (`banks.rs`).
    base: u64,
    /// Its bank conflicts so far.
    stats: SharedStats,
}

/// One block in flight: every value is a vector over its threads.
struct Sim<'a> {
    threads: usize,
    ctaid: [i32; 2],
    ints: Vec<Vec<i32>>,
    longs: Vec<Vec<i64>>,
    floats: Vec<Vec<f32>>,
    bools: Vec<Vec<bool>>,
    shared: Vec<SharedArray>,
    epoch: u32,
    /// The whole weights section and arena; accesses go through `args`.
    weights: &'a [f32],
    arena: &'a mut [f32],
    writes: &'a mut [u8],
    args: &'a [Bound],
    scalars: &'a [(Scalar, i32)],
    input: View,
    fault: Option<String>,
}

impl<'a> Sim<'a> {
    /// Block 0 of `threads` threads over `arena` (and its store counts),
    /// with no values yet and without weights, arguments or scalars (the
    /// input view is the first element): the unit tests' machine, and the
    /// base the launch loop fills in.
    fn bare(threads: usize, arena: &'a mut [f32], writes: &'a mut [u8]) -> Sim<'a> {
        Sim {
            threads,
            ctaid: [0, 0],
            ints: Vec::new(),
            longs: Vec::new(),
            floats: Vec::new(),
            bools: Vec::new(),
            shared: Vec::new(),
            epoch: 1,
            weights: &[],
            arena,
            writes,
            args: &[],
            scalars: &[],
            input: View::dense(0, 1, 1, 1, 1),
            fault: None,
        }
    }
}

impl Sim<'_> {
    fn fail(&mut self, msg: impl FnOnce() -> String) {
        if self.fault.is_none() {
            self.fault = Some(msg());
        }
    }

    fn new_i(&mut self, v: Vec<i32>) -> SI {
        self.ints.push(v);
        SI(self.ints.len() - 1)
    }
    fn new_l(&mut self, v: Vec<i64>) -> SL {
        self.longs.push(v);
        SL(self.longs.len() - 1)
    }
    fn new_f(&mut self, v: Vec<f32>) -> SF {
        self.floats.push(v);
        SF(self.floats.len() - 1)
    }
    fn new_b(&mut self, v: Vec<bool>) -> SB {
        self.bools.push(v);
        SB(self.bools.len() - 1)
    }

    fn int_op(&mut self, a: SI, b: SI, what: &str, f: impl Fn(i32, i32) -> Option<i32>) -> SI {
        let mut bad = None;
        let v: Vec<i32> = (0..self.threads)
            .map(|t| {
                let (x, y) = (self.ints[a.0][t], self.ints[b.0][t]);
                f(x, y).unwrap_or_else(|| {
                    bad.get_or_insert((t, x, y));
                    0
                })
            })
            .collect();
        if let Some((t, x, y)) = bad {
            self.fail(|| format!("thread {t}: 32-bit {what} of {x} and {y} overflows"));
        }
        self.new_i(v)
    }

    fn div_op(&mut self, a: SI, d: i32, what: &str, f: impl Fn(i32, i32) -> i32) -> SI {
        let mut bad = None;
        let v: Vec<i32> = self.ints[a.0]
            .iter()
            .enumerate()
            .map(|(t, &x)| {
                if x < 0 || d <= 0 {
                    bad.get_or_insert((t, x));
                    0
                } else {
                    f(x, d)
                }
            })
            .collect();
        if let Some((t, x)) = bad {
            self.fail(|| format!("thread {t}: {what} of {x} by {d} (negative operand)"));
        }
        self.new_i(v)
    }

    fn float_op(&mut self, a: SF, b: SF, f: impl Fn(f32, f32) -> f32) -> SF {
        let v = (0..self.threads)
            .map(|t| f(self.floats[a.0][t], self.floats[b.0][t]))
            .collect();
        self.new_f(v)
    }

    /// The element of the weights (`true`) or the arena that `buf[idx]`
    /// is for thread `t`, or why it is out of bounds.
    fn resolve(&self, t: usize, buf: Buf, idx: i64) -> std::result::Result<usize, String> {
        let Some(b) = self.args.iter().find(|b| b.buf == buf) else {
            return Err(format!("thread {t}: the kernel has no {buf:?} parameter"));
        };
        let len = if buf.is_weights() {
            self.weights.len()
        } else {
            self.arena.len()
        };
        let i = usize::try_from(idx)
            .ok()
            .filter(|&i| !buf.is_weights() || i < b.floats);
        match i.map(|i| b.base + i).filter(|&e| e < len) {
            Some(e) => Ok(e),
            None => Err(format!(
                "thread {t}: {buf:?}[{idx}] out of bounds ({} floats of its piece at {}, {len} \
                 in its buffer)",
                if buf.is_weights() { b.floats } else { len },
                b.base
            )),
        }
    }

    /// Read `buf[idx]` for thread `t`, or record a fault and return NaN.
    fn read(&mut self, t: usize, buf: Buf, idx: i64) -> f32 {
        if buf == Buf::Output {
            self.fail(|| format!("thread {t}: load through the output pointer"));
            return f32::NAN;
        }
        let e = match self.resolve(t, buf, idx) {
            Ok(e) => e,
            Err(m) => {
                self.fail(|| m);
                return f32::NAN;
            }
        };
        if buf.is_weights() {
            return self.weights[e];
        }
        if locate(&self.input, e).is_none_or(|(.., border)| border) {
            self.fail(|| {
                format!(
                    "thread {t}: load of arena element {e} outside the input view's real pixels"
                )
            });
        }
        self.arena[e]
    }

    fn touch_shared(&mut self, s: SS, t: usize, i: i32, write: bool) -> Option<usize> {
        let epoch = self.epoch;
        let len = self.shared[s.0].data.len();
        let Some(i) = usize::try_from(i).ok().filter(|&i| i < len) else {
            self.fail(|| format!("thread {t}: shared[{i}] out of bounds ({len} floats)"));
            return None;
        };
        let tc = &mut self.shared[s.0].touch[i];
        let race = if write {
            let war = tc.read_epoch == epoch && tc.reader != t;
            let waw = tc.write_epoch == epoch && tc.writer != t;
            tc.write_epoch = epoch;
            tc.writer = t;
            war || waw
        } else {
            if tc.write_epoch == 0 {
                self.fail(|| format!("thread {t}: shared[{i}] read before any write"));
                return Some(i);
            }
            let raw = tc.write_epoch == epoch && tc.writer != t;
            if tc.read_epoch == epoch && tc.reader != t {
                tc.reader = usize::MAX;
            } else {
                tc.reader = t;
            }
            tc.read_epoch = epoch;
            raw
        };
        if race {
            self.fail(|| format!("thread {t}: shared[{i}] race without a barrier between"));
        }
        Some(i)
    }

    /// Count one shared access of every warp (`banks.rs`): `s[idx]` where
    /// `active` (every thread when `None`).
    fn count_banks(&mut self, s: SS, idx: SI, active: Option<SB>, store: bool) {
        let (accesses, waves) = banks::block_access(
            self.shared[s.0].base,
            &self.ints[idx.0],
            active.map(|c| self.bools[c.0].as_slice()),
        );
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

impl Kb for Sim<'_> {
    type I = SI;
    type L = SL;
    type F = SF;
    type B = SB;
    type S = SS;

    fn ci(&mut self, v: i32) -> SI {
        self.new_i(vec![v; self.threads])
    }
    fn cf(&mut self, v: f32) -> SF {
        self.new_f(vec![v; self.threads])
    }
    fn tid(&mut self) -> Result<SI> {
        Ok(self.new_i((0..self.threads as i32).collect()))
    }
    fn ctaid(&mut self, dim: u8) -> Result<SI> {
        Ok(self.ci(self.ctaid[usize::from(dim.min(1))]))
    }
    fn scalar(&mut self, s: Scalar) -> Result<SI> {
        let v = self.scalars.iter().find(|(x, _)| *x == s).map(|&(_, v)| v);
        if v.is_none() {
            self.fail(|| format!("the kernel has no {s:?} argument"));
        }
        Ok(self.ci(v.unwrap_or(0)))
    }
    fn add(&mut self, a: SI, b: SI) -> Result<SI> {
        Ok(self.int_op(a, b, "add", i32::checked_add))
    }
    fn mul(&mut self, a: SI, b: SI) -> Result<SI> {
        Ok(self.int_op(a, b, "mul", i32::checked_mul))
    }
    fn div(&mut self, a: SI, d: i32) -> Result<SI> {
        Ok(self.div_op(a, d, "division", |x, d| x / d))
    }
    fn rem(&mut self, a: SI, d: i32) -> Result<SI> {
        Ok(self.div_op(a, d, "remainder", |x, d| x % d))
    }
    fn ult(&mut self, a: SI, b: SI) -> Result<SB> {
        let v = (0..self.threads)
            .map(|t| (self.ints[a.0][t] as u32) < (self.ints[b.0][t] as u32))
            .collect();
        Ok(self.new_b(v))
    }
    fn and(&mut self, a: SB, b: SB) -> Result<SB> {
        let v = (0..self.threads)
            .map(|t| self.bools[a.0][t] && self.bools[b.0][t])
            .collect();
        Ok(self.new_b(v))
    }
    fn wide(&mut self, a: SI) -> Result<SL> {
        let v = self.ints[a.0].iter().map(|&x| i64::from(x)).collect();
        Ok(self.new_l(v))
    }
    fn cl(&mut self, v: i64) -> SL {
        self.new_l(vec![v; self.threads])
    }
    fn addl(&mut self, a: SL, b: SL) -> Result<SL> {
        let v = (0..self.threads)
            .map(|t| self.longs[a.0][t].wrapping_add(self.longs[b.0][t]))
            .collect();
        Ok(self.new_l(v))
    }
    fn mull(&mut self, a: SL, b: SL) -> Result<SL> {
        let v = (0..self.threads)
            .map(|t| self.longs[a.0][t].wrapping_mul(self.longs[b.0][t]))
            .collect();
        Ok(self.new_l(v))
    }
    fn fadd(&mut self, a: SF, b: SF) -> Result<SF> {
        Ok(self.float_op(a, b, |x, y| x + y))
    }
    fn fmul(&mut self, a: SF, b: SF) -> Result<SF> {
        Ok(self.float_op(a, b, |x, y| x * y))
    }
    fn fma(&mut self, a: SF, b: SF, c: SF) -> Result<SF> {
        let v = (0..self.threads)
            .map(|t| self.floats[a.0][t].mul_add(self.floats[b.0][t], self.floats[c.0][t]))
            .collect();
        Ok(self.new_f(v))
    }
    fn fmax(&mut self, a: SF, b: SF) -> Result<SF> {
        Ok(self.float_op(a, b, f32::max))
    }
    /// `div.rn.f32` is IEEE division: Rust's `/` on f32 exactly.
    fn fdiv(&mut self, a: SF, b: SF) -> Result<SF> {
        Ok(self.float_op(a, b, |x, y| x / y))
    }
    /// `2^x` in f64 rounded to f32: the correctly rounded value (but for
    /// rare double roundings), where the GPU's `ex2.approx.f32` is within
    /// 2 ulp of the exact one; same special values (`2^-inf = 0`,
    /// `2^inf = inf`, NaN stays NaN; subnormal results kept).
    fn ex2(&mut self, x: SF) -> Result<SF> {
        let v = self.floats[x.0]
            .iter()
            .map(|&x| f64::from(x).exp2() as f32)
            .collect();
        Ok(self.new_f(v))
    }
    fn flt(&mut self, a: SF, b: SF) -> Result<SB> {
        let v = (0..self.threads)
            .map(|t| self.floats[a.0][t] < self.floats[b.0][t])
            .collect();
        Ok(self.new_b(v))
    }
    fn select(&mut self, c: SB, a: SF, b: SF) -> Result<SF> {
        let v = (0..self.threads)
            .map(|t| {
                if self.bools[c.0][t] {
                    self.floats[a.0][t]
                } else {
                    self.floats[b.0][t]
                }
            })
            .collect();
        Ok(self.new_f(v))
    }
    fn selecti(&mut self, c: SB, a: SI, b: SI) -> Result<SI> {
        let v = (0..self.threads)
            .map(|t| {
                if self.bools[c.0][t] {
                    self.ints[a.0][t]
                } else {
                    self.ints[b.0][t]
                }
            })
            .collect();
        Ok(self.new_i(v))
    }
    fn load(&mut self, buf: Buf, idx: SL) -> Result<SF> {
        let v = (0..self.threads)
            .map(|t| self.read(t, buf, self.longs[idx.0][t]))
            .collect();
        Ok(self.new_f(v))
    }
    fn load_if(&mut self, c: SB, buf: Buf, idx: SL, other: SF) -> Result<SF> {
        let v = (0..self.threads)
            .map(|t| {
                if self.bools[c.0][t] {
                    self.read(t, buf, self.longs[idx.0][t])
                } else {
                    self.floats[other.0][t]
                }
            })
            .collect();
        Ok(self.new_f(v))
    }
    fn store_if(&mut self, c: SB, buf: Buf, idx: SL, v: SF) -> Result<()> {
        for t in 0..self.threads {
            if !self.bools[c.0][t] {
                continue;
            }
            if buf != Buf::Output {
                self.fail(|| format!("thread {t}: store through the {buf:?} pointer"));
                continue;
            }
            match self.resolve(t, buf, self.longs[idx.0][t]) {
                Ok(e) => {
                    self.arena[e] = self.floats[v.0][t];
                    self.writes[e] = self.writes[e].saturating_add(1);
                }
                Err(m) => self.fail(|| m),
            }
        }
        Ok(())
    }
    fn shared(&mut self, len: usize) -> Result<SS> {
        let base = banks::next_base(self.shared.last().map(|a| (a.base, a.data.len())));
        self.shared.push(SharedArray {
            data: vec![f32::NAN; len],
            touch: vec![Touch::default(); len],
            base,
            stats: SharedStats::default(),
        });
        Ok(SS(self.shared.len() - 1))
    }
    fn load_shared(&mut self, s: SS, idx: SI) -> Result<SF> {
        let mut v = Vec::with_capacity(self.threads);
        for t in 0..self.threads {
            let i = self.ints[idx.0][t];
            v.push(match self.touch_shared(s, t, i, false) {
                Some(i) => self.shared[s.0].data[i],
                None => f32::NAN,
            });
        }
        self.count_banks(s, idx, None, false);
        Ok(self.new_f(v))
    }
    fn store_shared(&mut self, s: SS, idx: SI, v: SF) -> Result<()> {
        for t in 0..self.threads {
            let i = self.ints[idx.0][t];
            if let Some(i) = self.touch_shared(s, t, i, true) {
                self.shared[s.0].data[i] = self.floats[v.0][t];
            }
        }
        self.count_banks(s, idx, None, true);
        Ok(())
    }
    fn store_shared_if(&mut self, c: SB, s: SS, idx: SI, v: SF) -> Result<()> {
        for t in 0..self.threads {
            if !self.bools[c.0][t] {
                continue;
            }
            let i = self.ints[idx.0][t];
            if let Some(i) = self.touch_shared(s, t, i, true) {
                self.shared[s.0].data[i] = self.floats[v.0][t];
            }
        }
        self.count_banks(s, idx, Some(c), true);
        Ok(())
    }
    fn barrier(&mut self) -> Result<()> {
        self.epoch += 1;
        Ok(())
    }
    fn loop_acc(
        &mut self,
        trip: SI,
        init: Vec<SF>,
        body: &mut LoopBody<'_, Self>,
    ) -> Result<Vec<SF>> {
        let mut acc = init;
        let trips = &self.ints[trip.0];
        let first = trips.first().copied().unwrap_or(0);
        if first < 1 || trips.iter().any(|&t| t != first) {
            let (min, max) = (trips.iter().min().copied(), trips.iter().max().copied());
            self.fail(|| format!("loop trip counts {min:?}..={max:?}: not uniform and >= 1"));
            return Ok(acc);
        }
        let trip = first as u32;
        for i in 0..trip {
            let marks = (
                self.ints.len(),
                self.longs.len(),
                self.floats.len(),
                self.bools.len(),
            );
            let iv = self.ci(i as i32);
            acc = body(self, iv, acc)?;
            // Values made in the body die with it (simt.rs): keep only `acc`.
            let kept: Vec<Vec<f32>> = acc
                .iter()
                .map(|a| {
                    if a.0 >= marks.2 {
                        std::mem::take(&mut self.floats[a.0])
                    } else {
                        self.floats[a.0].clone()
                    }
                })
                .collect();
            self.ints.truncate(marks.0);
            self.longs.truncate(marks.1);
            self.floats.truncate(marks.2);
            self.bools.truncate(marks.3);
            acc = kept.into_iter().map(|v| self.new_f(v)).collect();
        }
        Ok(acc)
    }
    fn round_operand(&mut self, op: Operand, x: SF) -> Result<SF> {
        let v = self.floats[x.0]
            .iter()
            .map(|&x| precision::round(op, x))
            .collect();
        Ok(self.new_f(v))
    }
    fn mma(&mut self, op: Operand, a: [SF; 4], b: [SF; 2], c: [SF; 4]) -> Result<[SF; 4]> {
        let f = |v: SF| self.floats[v.0].as_slice();
        let (d, fault) = warp::mma_block(op, a.map(f), b.map(f), c.map(f));
        if let Some(m) = fault {
            self.fail(|| m);
        }
        Ok(d.map(|v| self.new_f(v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cuda::simt::KbExt;
    use crate::backend::kernel::View;

    /// Run `body` as one block of `threads` threads; the fault, if any.
    fn block(threads: usize, body: impl FnOnce(&mut Sim) -> Result<()>) -> Option<String> {
        let weights = [1.0f32; 8];
        let mut arena = [0.0f32; 16];
        let mut writes = [0u8; 16];
        let mut sim = Sim {
            weights: &weights,
            args: &[
                Bound {
                    buf: Buf::Matrix,
                    base: 2,
                    floats: 4,
                },
                Bound {
                    buf: Buf::Input,
                    base: 0,
                    floats: 0,
                },
                Bound {
                    buf: Buf::Output,
                    base: 0,
                    floats: 0,
                },
            ],
            input: View::dense(0, 1, 1, 1, 8),
            ..Sim::bare(threads, &mut arena, &mut writes)
        };
        body(&mut sim).expect("emulation never fails to build");
        sim.fault
    }

    #[test]
    fn shared_races_are_reported() {
        // Every thread writes element 0.
        let f = block(4, |k| {
            let s = k.shared(4)?;
            let (i, v) = (k.ci(0), k.cf(1.0));
            k.store_shared(s, i, v)
        });
        assert!(f.is_some_and(|m| m.contains("race")));
        // Thread t writes t, then reads (t + 1) % 4: a race without a barrier.
        let exchange = |barrier: bool| {
            block(4, move |k| {
                let s = k.shared(4)?;
                let t = k.tid()?;
                let v = k.cf(2.0);
                k.store_shared(s, t, v)?;
                if barrier {
                    k.barrier()?;
                }
                let one = k.ci(1);
                let next = k.add(t, one)?;
                let next = k.rem(next, 4)?;
                k.load_shared(s, next).map(|_| ())
            })
        };
        assert!(exchange(false).is_some_and(|m| m.contains("race")));
        assert_eq!(exchange(true), None);
    }

    #[test]
    fn uninitialised_and_out_of_bounds_accesses_are_reported() {
        let f = block(2, |k| {
            let s = k.shared(2)?;
            let t = k.tid()?;
            k.load_shared(s, t).map(|_| ())
        });
        assert!(f.is_some_and(|m| m.contains("before any write")));
        let f = block(2, |k| {
            let i = k.cl(8);
            k.load(Buf::Input, i).map(|_| ())
        });
        assert!(f.is_some_and(|m| m.contains("outside the input view")));
        // A weights piece is bounded by its parameter, not by the section.
        let f = block(2, |k| {
            let i = k.cl(3);
            k.load(Buf::Matrix, i)?;
            let i = k.cl(4);
            k.load(Buf::Matrix, i).map(|_| ())
        });
        assert!(
            f.as_deref() == Some("thread 0: Matrix[4] out of bounds (4 floats of its piece at 2, 8 in its buffer)"),
            "{f:?}"
        );
        let f = block(1, |k| {
            let i = k.cl(0);
            k.load(Buf::Bias, i).map(|_| ())
        });
        assert!(f.is_some_and(|m| m.contains("no Bias parameter")));
        let f = block(1, |k| {
            let (i, v) = (k.cl(0), k.cf(0.0));
            let t = k.tid()?;
            let yes = k.ci(1);
            let c = k.ult(t, yes)?;
            k.store_if(c, Buf::Input, i, v)
        });
        assert!(f.is_some_and(|m| m.contains("store through the Input pointer")));
        let f = block(2, |k| {
            let (i, v) = (k.cl(99), k.cf(0.0));
            let t = k.tid()?;
            let c = k.ult(t, t)?; // false: no store made
            k.store_if(c, Buf::Output, i, v)?;
            let yes = k.ci(1);
            let c = k.ult(t, yes)?; // thread 0 stores out of bounds
            k.store_if(c, Buf::Output, i, v)
        });
        assert!(
            f.as_ref()
                .is_some_and(|m| m.starts_with("thread 0: Output[99] out of bounds")),
            "{f:?}"
        );
    }

    /// `ex2`, `fdiv` and `flt` per lane, with their special values.
    #[test]
    fn head_instructions_have_their_ptx_semantics() {
        let xs = [
            0.0f32,
            -0.0,
            1.0,
            -1.0,
            0.5,
            127.5,
            128.0,
            -149.0,
            -150.5,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
        ];
        let mut arena = [0.0f32; 1];
        let mut writes = [0u8; 1];
        let mut sim = Sim::bare(xs.len(), &mut arena, &mut writes);
        let x = sim.new_f(xs.to_vec());
        let e = sim.ex2(x).expect("ex2");
        let got = sim.floats[e.0].clone();
        let want = [
            1.0,
            1.0,
            2.0,
            0.5,
            std::f32::consts::SQRT_2,
            2f32.powi(127) * std::f32::consts::SQRT_2, // exact: a power of two times √2
            f32::INFINITY,                             // 2^128 > f32::MAX
            f32::from_bits(1),                         // the smallest subnormal: kept, not flushed
            0.0,
            f32::INFINITY,
            0.0,
            f32::NAN,
        ];
        for ((x, g), w) in xs.iter().zip(&got).zip(&want) {
            assert!(
                g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                "2^{x}: {g} (want {w})"
            );
        }
        let one = sim.cf(1.0);
        let q = sim.fdiv(one, x).expect("fdiv");
        assert_eq!(sim.floats[q.0][0], f32::INFINITY);
        assert_eq!(sim.floats[q.0][1], f32::NEG_INFINITY);
        assert_eq!(sim.floats[q.0][4], 2.0);
        assert!(sim.floats[q.0][11].is_nan());
        let half = sim.cf(0.5);
        let lt = sim.flt(x, half).expect("flt");
        let lt = &sim.bools[lt.0];
        assert!(lt[0] && lt[3] && !lt[4] && !lt[2] && lt[10] && !lt[9]);
        assert!(!lt[11], "NaN compares false");
        assert_eq!(sim.fault, None);
    }

    #[test]
    fn overflow_and_negative_division_are_reported() {
        let f = block(1, |k| {
            let a = k.ci(i32::MAX);
            let b = k.ci(2);
            k.mul(a, b).map(|_| ())
        });
        assert!(f.is_some_and(|m| m.contains("overflows")));
        let f = block(1, |k| {
            let a = k.ci(-3);
            k.div(a, 2).map(|_| ())
        });
        assert!(f.is_some_and(|m| m.contains("negative")));
    }

    /// Shared accesses are counted per array, loads apart from stores, over
    /// the active lanes of a predicated store (the model: `banks.rs`).
    #[test]
    fn shared_accesses_are_counted_per_array_and_direction() {
        let mut arena = [0.0f32; 4];
        let mut writes = [0u8; 4];
        let mut sim = Sim::bare(64, &mut arena, &mut writes);
        let run = |k: &mut Sim| -> Result<()> {
            let a = k.shared(3)?;
            let b = k.shared(64 * 32)?;
            let t = k.tid()?;
            let v = k.cf(1.0);
            // Thread 0 stores a[0]: one instruction (warp 0), one wavefront.
            let (zero, first) = (k.ci(0), k.ultc(t, 1)?);
            k.store_shared_if(first, a, zero, v)?;
            // Lanes below 16 of warp 0 store b at stride 32: all in bank 0.
            let (half, i) = (k.ultc(t, 16)?, k.mulc(t, 32)?);
            k.store_shared_if(half, b, i, v)?;
            k.barrier()?;
            // Both warps store, then load, b at stride 2: 2-way each.
            let i = k.mulc(t, 2)?;
            k.store_shared(b, i, v)?;
            k.barrier()?;
            k.load_shared(b, i).map(|_| ())
        };
        run(&mut sim).expect("emulation never fails to build");
        assert_eq!(sim.fault, None);
        let s: Vec<SharedStats> = sim.shared.iter().map(|a| a.stats).collect();
        assert_eq!(
            s[0],
            SharedStats {
                store_accesses: 1,
                store_wavefronts: 1,
                ..SharedStats::default()
            }
        );
        assert_eq!(
            s[1],
            SharedStats {
                load_accesses: 2,
                load_wavefronts: 2 * 2,
                store_accesses: 1 + 2,
                store_wavefronts: 16 + 2 * 2,
            }
        );
    }

    /// The warp's mma (`warp.rs`) on the block's values: `D = A·B + C`,
    /// and its faults recorded.
    #[test]
    fn mma_runs_on_the_block_and_reports_faults() {
        let f = block(32, |k| {
            let (x, y) = (k.cf(1.0 + 2f32.powi(-20)), k.cf(1.0));
            let x = k.round_operand(Operand::Tf32, x)?;
            let d = k.mma(Operand::Tf32, [x; 4], [y; 2], [y; 4])?;
            // Row g of A (all 1) times column g of B (all 1), k = 8, plus 1.
            assert!(d.iter().all(|v| k.floats[v.0].iter().all(|&e| e == 9.0)));
            Ok(())
        });
        assert_eq!(f, None);
        let f = block(32, |k| {
            let (x, y) = (k.cf(1.0 + 2f32.powi(-20)), k.cf(1.0));
            k.mma(Operand::Tf32, [x; 4], [y; 2], [y; 4]).map(|_| ())
        });
        assert!(
            f.is_some_and(|m| m.contains("not a TF32 value")),
            "unrounded"
        );
        let f = block(48, |k| {
            let y = k.cf(1.0);
            k.mma(Operand::F16, [y; 4], [y; 2], [y; 4]).map(|_| ())
        });
        assert!(f.is_some_and(|m| m.contains("not whole warps")));
    }

    /// Coverage: a bordered output's real pixels once each, its border
    /// never (it is the CPU's padding; no CUDA kernel reads it).
    #[test]
    fn coverage_wants_real_pixels_once_and_no_border() {
        // One image of 2x2 pixels, 1 channel, stored 4x4 with a 1-pixel border.
        let out = View {
            border: [1, 1],
            ..View::dense(0, 1, 2, 2, 1)
        };
        let real = [5, 6, 9, 10];
        let mut writes = [0u8; 16];
        for e in real {
            writes[e] = 1;
        }
        assert_eq!(check_coverage(&out, &writes), Ok(()));
        let mut border = writes;
        border[4] = 1;
        let e = check_coverage(&out, &border).expect_err("a border store");
        assert!(e.contains("output border pixel 4"), "{e}");
        let mut missed = writes;
        missed[10] = 0;
        let e = check_coverage(&out, &missed).expect_err("a real pixel missed");
        assert!(
            e.contains("output real pixel 10 channel 0 (arena element 10) stored 0 times"),
            "{e}"
        );
    }
}
