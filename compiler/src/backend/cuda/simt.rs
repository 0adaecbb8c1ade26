//! The kernel language the CUDA lowerings are written in: a small SIMT
//! builder trait, [`Kb`], with two implementations, `nvptx.rs` (LLVM IR for
//! the NVPTX target) and `emulate.rs` (feature `emulator`: a CPU interpreter
//! that runs every thread of a block in lockstep, checking bounds, integer
//! overflow and shared-memory races).
//!
//! Writing each kernel once against this trait is what lets the index
//! arithmetic, coverage and numerics of the PTX be tested without a GPU:
//! the emulator executes the very same emission code.
//!
//! Contract for emission code:
//! - control flow is uniform: loops have uniform trip counts and every
//!   thread of a block runs the same sequence of operations; per-thread
//!   conditions only guard loads and stores (`*_if`) or select values;
//! - `I` values are signed 32-bit and must not overflow (the emulator
//!   checks); `L` values are signed 64-bit element indices;
//! - [`Kb::barrier`] is `__syncthreads()`: shared-memory accesses by
//!   different threads to one element between two barriers may not
//!   conflict (the emulator checks).

use super::precision::Operand;
use crate::backend::BackendError;

pub(crate) type Result<T> = std::result::Result<T, BackendError>;

/// A global buffer a kernel addresses: each is a pointer parameter of the
/// kernel, bound per launch (`plan.rs`), so the emitted code indexes it
/// from 0 and never sees where the buffer lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Buf {
    /// A GEMM's packed `B[K_pad][N_pad]` (weights, read-only).
    Matrix,
    /// A GEMM's bias padded to `N_pad` (weights, read-only).
    Bias,
    /// An affine's per-channel scale (weights, read-only).
    Scale,
    /// An affine's per-channel shift (weights, read-only).
    Shift,
    /// An op-norm head's per-class parameters, 4 floats a class (weights,
    /// read-only; `head.rs`).
    HeadParams,
    /// The arena at the input view's channel 0 of stored pixel 0.
    Input,
    /// The arena at the output view's channel 0 of stored pixel 0.
    Output,
}

/// A 32-bit scalar parameter of a kernel, bound per launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Scalar {
    /// A 1x1 GEMM's reduction length `K` (its input channels), at least 1.
    K,
}

impl Buf {
    /// Whether the buffer lies in the weights (else in the arena).
    pub fn is_weights(self) -> bool {
        !matches!(self, Buf::Input | Buf::Output)
    }
}

/// The body of [`Kb::loop_acc`]: `(builder, i, acc) -> acc`.
pub(crate) type LoopBody<'b, K> =
    dyn FnMut(&mut K, <K as Kb>::I, Vec<<K as Kb>::F>) -> Result<Vec<<K as Kb>::F>> + 'b;

/// A SIMT kernel builder (see the module docs).
pub(crate) trait Kb {
    /// 32-bit signed integer.
    type I: Copy;
    /// 64-bit signed integer (element indices).
    type L: Copy;
    /// f32.
    type F: Copy;
    /// Boolean.
    type B: Copy;
    /// A block-shared f32 array.
    type S: Copy;

    fn ci(&mut self, v: i32) -> Self::I;
    fn cf(&mut self, v: f32) -> Self::F;
    /// `threadIdx.x`.
    fn tid(&mut self) -> Result<Self::I>;
    /// `blockIdx.x` (`dim` 0) or `blockIdx.y` (`dim` 1).
    fn ctaid(&mut self, dim: u8) -> Result<Self::I>;
    /// The kernel's scalar parameter `s` (uniform over the grid).
    fn scalar(&mut self, s: Scalar) -> Result<Self::I>;

    fn add(&mut self, a: Self::I, b: Self::I) -> Result<Self::I>;
    fn mul(&mut self, a: Self::I, b: Self::I) -> Result<Self::I>;
    /// Division of a non-negative value by a positive constant.
    fn div(&mut self, a: Self::I, d: i32) -> Result<Self::I>;
    /// Remainder of a non-negative value by a positive constant.
    fn rem(&mut self, a: Self::I, d: i32) -> Result<Self::I>;
    /// `a < b` as unsigned: a negative `a` is never below a non-negative `b`.
    fn ult(&mut self, a: Self::I, b: Self::I) -> Result<Self::B>;
    fn and(&mut self, a: Self::B, b: Self::B) -> Result<Self::B>;

    /// Sign-extend to 64 bits.
    fn wide(&mut self, a: Self::I) -> Result<Self::L>;
    fn cl(&mut self, v: i64) -> Self::L;
    fn addl(&mut self, a: Self::L, b: Self::L) -> Result<Self::L>;
    fn mull(&mut self, a: Self::L, b: Self::L) -> Result<Self::L>;

    fn fadd(&mut self, a: Self::F, b: Self::F) -> Result<Self::F>;
    fn fmul(&mut self, a: Self::F, b: Self::F) -> Result<Self::F>;
    /// `a * b + c`, fused.
    fn fma(&mut self, a: Self::F, b: Self::F, c: Self::F) -> Result<Self::F>;
    fn fmax(&mut self, a: Self::F, b: Self::F) -> Result<Self::F>;
    /// `a / b` correctly rounded (`div.rn.f32`: IEEE division, subnormals
    /// kept).
    fn fdiv(&mut self, a: Self::F, b: Self::F) -> Result<Self::F>;
    /// `2^x` (`ex2.approx.f32`, subnormals kept): on the GPU within 2 ulp
    /// of the exact value (PTX ISA); `2^-inf = +0`, `2^+inf = +inf`, NaN
    /// gives NaN. The emulator computes it correctly rounded.
    fn ex2(&mut self, x: Self::F) -> Result<Self::F>;
    /// `a < b` (`setp.lt.f32`: ordered, false when either is NaN).
    fn flt(&mut self, a: Self::F, b: Self::F) -> Result<Self::B>;
    fn select(&mut self, c: Self::B, a: Self::F, b: Self::F) -> Result<Self::F>;
    fn selecti(&mut self, c: Self::B, a: Self::I, b: Self::I) -> Result<Self::I>;

    /// Element `idx` of `buf`.
    fn load(&mut self, buf: Buf, idx: Self::L) -> Result<Self::F>;
    /// Element `idx` of `buf` where `c`, else `other` (no access made).
    fn load_if(&mut self, c: Self::B, buf: Buf, idx: Self::L, other: Self::F) -> Result<Self::F>;
    /// Store where `c` (no access made elsewhere).
    fn store_if(&mut self, c: Self::B, buf: Buf, idx: Self::L, v: Self::F) -> Result<()>;

    /// A shared array of `len` f32, 16-byte aligned.
    fn shared(&mut self, len: usize) -> Result<Self::S>;
    fn load_shared(&mut self, s: Self::S, idx: Self::I) -> Result<Self::F>;
    fn store_shared(&mut self, s: Self::S, idx: Self::I, v: Self::F) -> Result<()>;
    /// Store where `c` (no access made elsewhere).
    fn store_shared_if(&mut self, c: Self::B, s: Self::S, idx: Self::I, v: Self::F) -> Result<()>;
    fn barrier(&mut self) -> Result<()>;

    /// `for i in 0..trip { acc = body(i, acc) }` with the loop-carried
    /// `acc`; returns the final `acc`. `trip` is the same for every thread
    /// (a constant or computed from scalar parameters) and at least 1.
    /// Values made in `body` are used only inside it: they leave it through
    /// `acc` alone.
    fn loop_acc(
        &mut self,
        trip: Self::I,
        init: Vec<Self::F>,
        body: &mut LoopBody<'_, Self>,
    ) -> Result<Vec<Self::F>>;

    /// `x` rounded to the tensor-core operand type `op` (`cvt.rna.tf32.f32`,
    /// `cvt.rn.f16.f32`, `cvt.rn.bf16.f32`), held in an f32 that it
    /// converts back to exactly.
    fn round_operand(&mut self, op: Operand, x: Self::F) -> Result<Self::F>;
    /// `mma.sync.aligned.m16n8k8.row.col.f32.{op}.{op}.f32`, issued by every
    /// warp of the block (the block's threads are a multiple of 32):
    /// `D = A·B + C` on the warp's 16x8 `A`, 8x8 `B` and 16x8 `C`, each
    /// lane holding the fragments of `op`'s PTX ISA layout (see `mma.rs`).
    /// `a` and `b` must be `op` values (from [`Kb::round_operand`]).
    fn mma(
        &mut self,
        op: Operand,
        a: [Self::F; 4],
        b: [Self::F; 2],
        c: [Self::F; 4],
    ) -> Result<[Self::F; 4]>;
}

/// Shorthands built from the primitives.
pub(crate) trait KbExt: Kb {
    fn addc(&mut self, a: Self::I, c: i32) -> Result<Self::I> {
        let c = self.ci(c);
        self.add(a, c)
    }
    fn mulc(&mut self, a: Self::I, c: i32) -> Result<Self::I> {
        let c = self.ci(c);
        self.mul(a, c)
    }
    fn ultc(&mut self, a: Self::I, c: i32) -> Result<Self::B> {
        let c = self.ci(c);
        self.ult(a, c)
    }
    /// `base + a * scale` in 64 bits.
    fn index(&mut self, base: i64, a: Self::I, scale: i64) -> Result<Self::L> {
        let a = self.wide(a)?;
        let s = self.cl(scale);
        let p = self.mull(a, s)?;
        let b = self.cl(base);
        self.addl(b, p)
    }
    /// `a + b` where `b` is a 32-bit value.
    fn addw(&mut self, a: Self::L, b: Self::I) -> Result<Self::L> {
        let b = self.wide(b)?;
        self.addl(a, b)
    }
    fn relu(&mut self, x: Self::F) -> Result<Self::F> {
        let z = self.cf(0.0);
        self.fmax(x, z)
    }
    /// `a - b`, rounded once (`fma(b, -1, a)`).
    fn fsub(&mut self, a: Self::F, b: Self::F) -> Result<Self::F> {
        let m = self.cf(-1.0);
        self.fma(b, m, a)
    }
}

impl<K: Kb + ?Sized> KbExt for K {}
