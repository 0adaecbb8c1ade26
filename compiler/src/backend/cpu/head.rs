//! Output heads (`KernelOp::Head`): sigmoid, softmax and torchxrayvision's sigmoid +
//! `op_norm`, on each image's `[C]` logits row.
//!
//! One task per image, scalar code: the row is short (a few to a thousand classes) and the
//! kernel runs once per inference, after the classifier. Softmax needs the whole row (its
//! maximum and sum), so the head is its own small kernel after the classifier's GEMM rather
//! than an epilogue inside the GEMM's register tiles (which see a tile of classes at a time).
//! `exp` is computed inline (range reduction to `2^k · e^r`, `r ∈ [0, ln 2)`, degree-8
//! polynomial, relative error below 2e-7), so the shared object still needs no libm.
//! The output view may be the input's (in place): every element is read before it is written.

use super::codegen::{Cg, Result};
use super::env::{in_base, out_base, pixel_ptr, Env};
use super::pack::WeightsBuilder;
use crate::backend::kernel::{HeadKernel, View};
use inkwell::values::{FloatValue, IntValue};
use inkwell::FloatPredicate;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Sigmoid,
    Softmax,
    /// Per class 4 floats at this element offset: `t, a, c, b`, giving
    /// `t` NaN ? 0.5 : `y < t ? y·a + c : 1 - (1 - y)·b` (as the reference: a NaN threshold
    /// outputs 0.5 whatever the logit, a NaN one included).
    OpNorm(usize),
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) struct HeadPlan {
    input: View,
    output: View,
    kind: Kind,
}

impl HeadPlan {
    pub fn new(h: &HeadKernel, i: &View, o: &View, wb: &mut WeightsBuilder) -> Self {
        let kind = match h {
            HeadKernel::Sigmoid => Kind::Sigmoid,
            HeadKernel::Softmax => Kind::Softmax,
            HeadKernel::SigmoidOpNorm(t) => {
                let mut packed = Vec::with_capacity(4 * t.len());
                for &t in t.iter() {
                    if t.is_nan() {
                        packed.extend([f32::NAN, 0.0, 0.5, 0.0]);
                    } else {
                        let t = f64::from(t);
                        packed.extend([
                            t as f32,
                            (1.0 / (2.0 * t)) as f32,
                            0.0,
                            (1.0 / (2.0 * (1.0 - t))) as f32,
                        ]);
                    }
                }
                Kind::OpNorm(wb.push(&packed))
            }
        };
        HeadPlan {
            input: *i,
            output: *o,
            kind,
        }
    }

    pub fn tasks(&self) -> usize {
        self.input.pixels()
    }

    pub fn emit_task<'ctx>(&self, cg: &Cg<'ctx>, env: &Env<'ctx>, t: IntValue<'ctx>) -> Result<()> {
        let (i, o) = (&self.input, &self.output);
        let src = pixel_ptr(cg, in_base(cg, env, i)?, i, t)?;
        let dst = pixel_ptr(cg, out_base(cg, env, o)?, o, t)?;
        let c = i.channels;
        let m = Math { cg };
        match self.kind {
            Kind::Sigmoid => cg.for_n(c, |k| {
                let x = cg.load_f32(cg.gep(src, k)?)?;
                let y = m.sigmoid(x)?;
                cg.b.build_store(cg.gep(dst, k)?, y)?;
                Ok(())
            }),
            Kind::OpNorm(off) => {
                let params = cg.gepc(env.weights, off)?;
                cg.for_n(c, |k| {
                    let x = cg.load_f32(cg.gep(src, k)?)?;
                    let y = m.sigmoid(x)?;
                    let p = cg.gep(params, cg.mulc(k, 4)?)?;
                    let thr = cg.load_f32(p)?;
                    let a = cg.load_f32(cg.gepc(p, 1)?)?;
                    let c0 = cg.load_f32(cg.gepc(p, 2)?)?;
                    let b = cg.load_f32(cg.gepc(p, 3)?)?;
                    let below = m.add(m.mul(y, a)?, c0)?;
                    let one = m.c(1.0);
                    let above = m.sub(one, m.mul(m.sub(one, y)?, b)?)?;
                    let lt = cg.b.build_float_compare(FloatPredicate::OLT, y, thr, "")?;
                    let r = cg.b.build_select(lt, below, above, "")?;
                    let unknown =
                        cg.b.build_float_compare(FloatPredicate::UNO, thr, thr, "")?;
                    let r =
                        cg.b.build_select(unknown, m.c(0.5), r.into_float_value(), "")?;
                    cg.b.build_store(cg.gep(dst, k)?, r)?;
                    Ok(())
                })
            }
            Kind::Softmax => {
                let max = cg.entry_alloca(cg.f32.into(), "max")?;
                cg.b.build_store(max, m.c(f32::NEG_INFINITY))?;
                cg.for_n(c, |k| {
                    let x = cg.load_f32(cg.gep(src, k)?)?;
                    let cur = cg.load_f32(max)?;
                    let gt = cg.b.build_float_compare(FloatPredicate::OGT, x, cur, "")?;
                    let r = cg.b.build_select(gt, x, cur, "")?;
                    cg.b.build_store(max, r)?;
                    Ok(())
                })?;
                let mx = cg.load_f32(max)?;
                let sum = cg.entry_alloca(cg.f32.into(), "sum")?;
                cg.b.build_store(sum, m.c(0.0))?;
                cg.for_n(c, |k| {
                    let x = cg.load_f32(cg.gep(src, k)?)?;
                    let e = m.exp(m.sub(x, mx)?)?;
                    cg.b.build_store(cg.gep(dst, k)?, e)?;
                    let s = m.add(cg.load_f32(sum)?, e)?;
                    cg.b.build_store(sum, s)?;
                    Ok(())
                })?;
                let inv = m.div(m.c(1.0), cg.load_f32(sum)?)?;
                cg.for_n(c, |k| {
                    let p = cg.gep(dst, k)?;
                    let y = m.mul(cg.load_f32(p)?, inv)?;
                    cg.b.build_store(p, y)?;
                    Ok(())
                })
            }
        }
    }
}

/// Scalar f32 arithmetic.
struct Math<'a, 'ctx> {
    cg: &'a Cg<'ctx>,
}

impl<'ctx> Math<'_, 'ctx> {
    fn c(&self, v: f32) -> FloatValue<'ctx> {
        self.cg.f32.const_float(f64::from(v))
    }
    fn add(&self, a: FloatValue<'ctx>, b: FloatValue<'ctx>) -> Result<FloatValue<'ctx>> {
        Ok(self.cg.b.build_float_add(a, b, "")?)
    }
    fn sub(&self, a: FloatValue<'ctx>, b: FloatValue<'ctx>) -> Result<FloatValue<'ctx>> {
        Ok(self.cg.b.build_float_sub(a, b, "")?)
    }
    fn mul(&self, a: FloatValue<'ctx>, b: FloatValue<'ctx>) -> Result<FloatValue<'ctx>> {
        Ok(self.cg.b.build_float_mul(a, b, "")?)
    }
    fn div(&self, a: FloatValue<'ctx>, b: FloatValue<'ctx>) -> Result<FloatValue<'ctx>> {
        Ok(self.cg.b.build_float_div(a, b, "")?)
    }

    /// `1 / (1 + e^-x)`.
    fn sigmoid(&self, x: FloatValue<'ctx>) -> Result<FloatValue<'ctx>> {
        let e = self.exp(self.cg.b.build_float_neg(x, "")?)?;
        self.div(self.c(1.0), self.add(self.c(1.0), e)?)
    }

    /// `e^x` for `x` clamped to `[-87, 88]` (a NaN stays NaN).
    fn exp(&self, x: FloatValue<'ctx>) -> Result<FloatValue<'ctx>> {
        let (cg, b) = (self.cg, &self.cg.b);
        let clamp = |x: FloatValue<'ctx>, bound: f32, pred| -> Result<FloatValue<'ctx>> {
            let out = b.build_float_compare(pred, x, self.c(bound), "")?;
            Ok(b.build_select(out, self.c(bound), x, "")?
                .into_float_value())
        };
        let x = clamp(x, 88.0, FloatPredicate::OGT)?;
        let x = clamp(x, -87.0, FloatPredicate::OLT)?;
        // k = floor(x · log2 e)
        let t = self.mul(x, self.c(std::f32::consts::LOG2_E))?;
        let ki = b.build_float_to_signed_int(t, cg.i32, "")?;
        let kf = b.build_signed_int_to_float(ki, cg.f32, "")?;
        let over = b.build_float_compare(FloatPredicate::OGT, kf, t, "")?;
        let ki = b
            .build_select(
                over,
                b.build_int_sub(ki, cg.i32.const_int(1, false), "")?,
                ki,
                "",
            )?
            .into_int_value();
        let kf = b.build_signed_int_to_float(ki, cg.f32, "")?;
        // r = x - k·ln 2 in two pieces (Cody-Waite)
        let r = self.sub(x, self.mul(kf, self.c(0.693_145_75))?)?;
        let r = self.sub(r, self.mul(kf, self.c(1.428_606_8e-6))?)?;
        // e^r by Horner, degree 8
        let mut p = self.c(1.0 / 40320.0);
        for d in (0..8).rev() {
            let coef = 1.0 / (1..=d).product::<u64>() as f32;
            p = self.add(self.mul(p, r)?, self.c(coef))?;
        }
        // 2^k from the exponent bits
        let bits = b.build_left_shift(
            b.build_int_add(ki, cg.i32.const_int(127, false), "")?,
            cg.i32.const_int(23, false),
            "",
        )?;
        let scale = b.build_bit_cast(bits, cg.f32, "")?.into_float_value();
        self.mul(p, scale)
    }
}
