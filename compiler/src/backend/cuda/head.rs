//! The output-head kernel (`--head softmax|sigmoid|op-norm`), written once
//! against [`Kb`]: one block per image, its threads striding over the
//! image's `[C]` logits row (class `j·threads + tid` in trip `j`), launched
//! after the classifier's GEMM like the CPU's head kernel. Softmax needs the
//! whole row (its max and sum), which a GEMM epilogue's tiles never see.
//!
//! - sigmoid: `1 / (1 + 2^(-x·log2 e))`;
//! - op-norm: the sigmoid `y`, then per class (`pack::pack_op_norm`)
//!   `y < t ? y·a : fma(1 - y, nb, 1)`, and 0.5 for a NaN threshold
//!   whatever the logit;
//! - softmax, numerically stable: the row's max `m` (block reduction in
//!   shared memory), then `s = Σ 2^((x - m)·log2 e)` (a second reduction),
//!   then `2^((x - m)·log2 e) / s` (recomputed rather than kept, so any
//!   row length fits and every element is read before it is written: the
//!   head may run in place, each element read and written by one thread).
//!
//! Precision: `ex2.approx.f32` is within 2 ulp of `2^t`, and rounding
//! `t = d·log2 e` costs a relative `|d|·2^-24` in `e^d`; divisions are
//! `div.rn.f32`. A sigmoid output is therefore within about `1e-7`
//! absolute of the f64 reference (only `|x| < 17` matters: beyond, the
//! output is within `4e-8` of 0 or 1), and a softmax output `p` within
//! `p·(|d| + 8)·2^-24 + 2^-24 ≤ 1e-6` (`p·|d| ≤ 1/e` since `p ≤ e^d`). The
//! tests hold every head to `1e-5` absolute of the reference. A NaN logit
//! gives NaN (its whole row for softmax), an infinite one what the
//! reference gives (softmax of a `+inf` logit: NaN, as `inf - inf`).
//!
//! Control flow is uniform: every thread runs `per_thread` trips, the
//! classes past `C` only guard their loads and stores; the reductions are
//! trees over a power-of-two block, the lower half combining with the
//! upper at each step (`store_shared_if`).

use super::plan::{HeadOp, HeadPlan};
use super::simt::{Buf, Kb, KbExt, Result};

/// `log2 e`, the scale of `ex2` for `e^x`.
const LOG2_E: f32 = std::f32::consts::LOG2_E;

/// Emit the head kernel planned by `p`.
pub(crate) fn emit<K: Kb>(k: &mut K, p: &HeadPlan) -> Result<()> {
    let row = Row {
        plan: p,
        tid: k.tid()?,
        image: k.ctaid(0)?,
    };
    match p.op {
        HeadOp::Sigmoid | HeadOp::OpNorm => row.each(k, vec![], &mut |k, at, acc| {
            let zero = k.cf(0.0);
            let x = k.load_if(at.valid, Buf::Input, at.input, zero)?;
            let mut y = sigmoid(k, x)?;
            if p.op == HeadOp::OpNorm {
                y = op_norm(k, at.valid, at.class, y)?;
            }
            k.store_if(at.valid, Buf::Output, at.output, y)?;
            Ok(acc)
        }),
        HeadOp::Softmax => {
            let neg_inf = k.cf(f32::NEG_INFINITY);
            let local = row.each(k, vec![neg_inf], &mut |k, at, acc| {
                let x = k.load_if(at.valid, Buf::Input, at.input, neg_inf)?;
                Ok(vec![k.fmax(acc[0], x)?])
            })?;
            let max = reduce(k, p.threads, row.tid, local[0], Combine::Max)?;
            let zero = k.cf(0.0);
            let local = row.each(k, vec![zero], &mut |k, at, acc| {
                let x = k.load_if(at.valid, Buf::Input, at.input, max)?;
                let e = exp_from(k, x, max)?;
                let e = k.select(at.valid, e, zero)?;
                Ok(vec![k.fadd(acc[0], e)?])
            })?;
            let sum = reduce(k, p.threads, row.tid, local[0], Combine::Sum)?;
            row.each(k, vec![], &mut |k, at, acc| {
                let x = k.load_if(at.valid, Buf::Input, at.input, max)?;
                let e = exp_from(k, x, max)?;
                let y = k.fdiv(e, sum)?;
                k.store_if(at.valid, Buf::Output, at.output, y)?;
                Ok(acc)
            })
        }
    }
    .map(|_| ())
}

/// One thread's class in one trip: whether it exists, and its element in
/// the input and output views.
struct At<K: Kb> {
    valid: K::B,
    class: K::I,
    input: K::L,
    output: K::L,
}

/// The thread's view of its image's row.
struct Row<'p, K: Kb> {
    plan: &'p HeadPlan,
    tid: K::I,
    image: K::I,
}

/// The body of [`Row::each`].
type Body<'b, K> = dyn FnMut(&mut K, At<K>, Vec<<K as Kb>::F>) -> Result<Vec<<K as Kb>::F>> + 'b;

impl<K: Kb> Row<'_, K> {
    /// `acc = body(class, acc)` over the thread's classes, in order.
    fn each(&self, k: &mut K, init: Vec<K::F>, body: &mut Body<'_, K>) -> Result<Vec<K::F>> {
        let p = self.plan;
        let trip = k.ci(p.per_thread());
        k.loop_acc(trip, init, &mut |k, j, acc| {
            let first = k.mulc(j, p.threads as i32)?;
            let class = k.add(first, self.tid)?;
            let valid = k.ultc(class, p.input.channels)?;
            let input = p.input.elem(k, self.image, class)?;
            let output = p.output.elem(k, self.image, class)?;
            body(
                k,
                At {
                    valid,
                    class,
                    input,
                    output,
                },
                acc,
            )
        })
    }
}

/// `e^(x - m)` as `2^((x - m)·log2 e)`.
fn exp_from<K: Kb>(k: &mut K, x: K::F, m: K::F) -> Result<K::F> {
    let d = k.fsub(x, m)?;
    let s = k.cf(LOG2_E);
    let t = k.fmul(d, s)?;
    k.ex2(t)
}

/// `1 / (1 + e^-x)`.
fn sigmoid<K: Kb>(k: &mut K, x: K::F) -> Result<K::F> {
    let s = k.cf(-LOG2_E);
    let t = k.fmul(x, s)?;
    let e = k.ex2(t)?;
    let one = k.cf(1.0);
    let d = k.fadd(one, e)?;
    k.fdiv(one, d)
}

/// torchxrayvision's `op_norm` of the sigmoid output `y` of `class`, from
/// its packed `t, a, nb, known` (`pack::pack_op_norm`).
fn op_norm<K: Kb>(k: &mut K, valid: K::B, class: K::I, y: K::F) -> Result<K::F> {
    let zero = k.cf(0.0);
    let mut q = [zero; 4];
    for (i, v) in (0i64..).zip(q.iter_mut()) {
        let e = k.index(i, class, 4)?;
        *v = k.load_if(valid, Buf::HeadParams, e, zero)?;
    }
    let [t, a, nb, known] = q;
    let below = k.fmul(y, a)?;
    let one = k.cf(1.0);
    let rest = k.fsub(one, y)?;
    let above = k.fma(rest, nb, one)?;
    let lt = k.flt(y, t)?;
    let r = k.select(lt, below, above)?;
    let half = k.cf(0.5);
    let keep = k.flt(half, known)?;
    k.select(keep, r, half)
}

/// How [`reduce`] combines two values.
#[derive(Debug, Clone, Copy)]
enum Combine {
    Max,
    Sum,
}

/// The combination by `op` of every thread's `v`, returned to all threads:
/// a tree over `threads` (a power of two) shared slots, the lower half
/// combining with the upper at each step; a fresh shared array per call,
/// so consecutive reductions need no barrier between them.
fn reduce<K: Kb>(k: &mut K, threads: usize, tid: K::I, v: K::F, op: Combine) -> Result<K::F> {
    let s = k.shared(threads)?;
    k.store_shared(s, tid, v)?;
    k.barrier()?;
    let mut half = threads / 2;
    while half >= 1 {
        let h = half as i32;
        let lower = k.ultc(tid, h)?;
        let mine = k.load_shared(s, tid)?;
        // The upper half reads its own slot again: every read stays in bounds
        // and no slot is read by one thread and written by another.
        let up = k.addc(tid, h)?;
        let j = k.selecti(lower, up, tid)?;
        let theirs = k.load_shared(s, j)?;
        let r = match op {
            Combine::Max => k.fmax(mine, theirs)?,
            Combine::Sum => k.fadd(mine, theirs)?,
        };
        k.store_shared_if(lower, s, tid, r)?;
        k.barrier()?;
        half /= 2;
    }
    let first = k.ci(0);
    k.load_shared(s, first)
}
