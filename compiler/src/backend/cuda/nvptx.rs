//! [`Kb`] for LLVM's NVPTX target: each kernel becomes a `ptx_kernel`
//! function with one `ptr addrspace(1)` parameter per [`Buf`] it uses
//! (`plan.rs`: weights pieces `noalias readonly`, then the input and output
//! views, which may alias: an in-place affine, or a prefix read and a slice
//! written of one block buffer) and one `i32` per [`Scalar`], with `nvvm.annotations` (`kernel`,
//! `maxntidx`), thread and block ids from `llvm.nvvm.read.ptx.sreg.*`,
//! shared arrays as internal `addrspace(3)` globals and
//! `llvm.nvvm.barrier0` for `__syncthreads()`.

use super::plan::{Param, Slot};
use super::precision::Operand;
use super::simt::{Buf, Kb, LoopBody, Result, Scalar};
use crate::backend::BackendError;
use inkwell::attributes::{Attribute, AttributeLoc};
use inkwell::builder::Builder;
use inkwell::context::Context;
use inkwell::intrinsics::Intrinsic;
use inkwell::module::{Linkage, Module};
use inkwell::types::{BasicMetadataTypeEnum, FloatType, IntType};
use inkwell::values::{
    BasicMetadataValueEnum, BasicValue, BasicValueEnum, FloatValue, FunctionValue, IntValue,
    PointerValue, VectorValue,
};
use inkwell::{AddressSpace, FloatPredicate, IntPredicate};

/// LLVM's `ptx_kernel` calling convention.
const PTX_KERNEL_CC: u32 = 71;
const GLOBAL: u16 = 1;
const SHARED: u16 = 3;

/// One kernel function under construction.
pub(crate) struct Nvptx<'a, 'ctx> {
    ctx: &'ctx Context,
    module: &'a Module<'ctx>,
    b: Builder<'ctx>,
    f: FunctionValue<'ctx>,
    params: Vec<(Slot, BasicValueEnum<'ctx>)>,
    f32: FloatType<'ctx>,
    i32: IntType<'ctx>,
    i64: IntType<'ctx>,
    shared_count: usize,
}

fn cg(e: impl std::fmt::Display) -> BackendError {
    BackendError::Codegen(e.to_string())
}

impl<'a, 'ctx> Nvptx<'a, 'ctx> {
    /// Declare kernel `name` (launched with `threads` threads per block,
    /// taking `params`) in `module` and position a builder at its entry.
    pub fn kernel(
        ctx: &'ctx Context,
        module: &'a Module<'ctx>,
        name: &str,
        threads: u32,
        params: &[Param],
    ) -> Result<Self> {
        let gptr = ctx.ptr_type(AddressSpace::from(GLOBAL));
        let types: Vec<BasicMetadataTypeEnum> = params
            .iter()
            .map(|p| match p.slot {
                Slot::Buf(_) => gptr.into(),
                Slot::Scalar(_) => ctx.i32_type().into(),
            })
            .collect();
        let ty = ctx.void_type().fn_type(&types, false);
        let f = module.add_function(name, ty, Some(Linkage::External));
        f.set_call_conventions(PTX_KERNEL_CC);
        let attr = |n: &str| ctx.create_enum_attribute(Attribute::get_named_enum_kind_id(n), 0);
        f.add_attribute(AttributeLoc::Function, attr("nounwind"));
        for (i, p) in (0u32..).zip(params) {
            // Weights are never written: read-only pieces of one buffer may
            // overlap without breaking `noalias`.
            if matches!(p.slot, Slot::Buf(b) if b.is_weights()) {
                f.add_attribute(AttributeLoc::Param(i), attr("noalias"));
                f.add_attribute(AttributeLoc::Param(i), attr("readonly"));
            }
        }
        let fptr = f.as_global_value().as_pointer_value();
        for (key, value) in [("kernel", 1), ("maxntidx", threads)] {
            let node = ctx.metadata_node(&[
                BasicMetadataValueEnum::from(fptr),
                ctx.metadata_string(key).into(),
                ctx.i32_type().const_int(u64::from(value), false).into(),
            ]);
            module
                .add_global_metadata("nvvm.annotations", &node)
                .map_err(cg)?;
        }
        let params = (0u32..)
            .zip(params)
            .map(|(i, p)| {
                let v = f
                    .get_nth_param(i)
                    .ok_or_else(|| cg("kernel parameter missing"))?;
                let name = match p.slot {
                    Slot::Buf(b) => format!("{b:?}"),
                    Slot::Scalar(s) => format!("{s:?}"),
                };
                v.set_name(&name.to_lowercase());
                Ok((p.slot, v))
            })
            .collect::<Result<Vec<_>>>()?;
        let b = ctx.create_builder();
        b.position_at_end(ctx.append_basic_block(f, "entry"));
        Ok(Nvptx {
            ctx,
            module,
            b,
            f,
            params,
            f32: ctx.f32_type(),
            i32: ctx.i32_type(),
            i64: ctx.i64_type(),
            shared_count: 0,
        })
    }

    /// Close the kernel.
    pub fn finish(self) -> Result<()> {
        self.b.build_return(None)?;
        Ok(())
    }

    fn call(
        &self,
        name: &str,
        args: &[BasicMetadataValueEnum<'ctx>],
    ) -> Result<Option<inkwell::values::BasicValueEnum<'ctx>>> {
        let overload: Vec<_> = if name.starts_with("llvm.nvvm") {
            vec![]
        } else {
            vec![self.f32.into()]
        };
        let f = Intrinsic::find(name)
            .and_then(|i| i.get_declaration(self.module, &overload))
            .ok_or_else(|| cg(format!("intrinsic {name} is not available")))?;
        let v = self.b.build_call(f, args, "")?;
        Ok(v.try_as_basic_value().basic())
    }

    fn call_i32(&self, name: &str) -> Result<IntValue<'ctx>> {
        self.call(name, &[])?
            .map(|v| v.into_int_value())
            .ok_or_else(|| cg(format!("{name} returned nothing")))
    }

    fn call_f32(&self, name: &str, args: &[FloatValue<'ctx>]) -> Result<FloatValue<'ctx>> {
        let args: Vec<BasicMetadataValueEnum> = args.iter().map(|&a| a.into()).collect();
        self.call(name, &args)?
            .map(|v| v.into_float_value())
            .ok_or_else(|| cg(format!("{name} returned nothing")))
    }

    fn gep(&self, base: PointerValue<'ctx>, idx: IntValue<'ctx>) -> Result<PointerValue<'ctx>> {
        // SAFETY: building a GEP only creates IR. The emission contract
        // (simt.rs) is that guarded accesses are only executed with indices
        // inside their buffer; the emulator checks it.
        Ok(unsafe { self.b.build_in_bounds_gep(self.f32, base, &[idx], "")? })
    }

    fn param(&self, slot: Slot) -> Result<BasicValueEnum<'ctx>> {
        self.params
            .iter()
            .find(|(s, _)| *s == slot)
            .map(|&(_, p)| p)
            .ok_or_else(|| cg(format!("the kernel has no {slot:?} parameter")))
    }

    fn base(&self, buf: Buf) -> Result<PointerValue<'ctx>> {
        Ok(self.param(Slot::Buf(buf))?.into_pointer_value())
    }

    fn load_at(&self, p: PointerValue<'ctx>) -> Result<FloatValue<'ctx>> {
        let v = self.b.build_load(self.f32, p, "")?;
        if let Some(i) = v.as_instruction_value() {
            i.set_alignment(4).map_err(cg)?;
        }
        Ok(v.into_float_value())
    }

    fn block(&self, name: &str) -> inkwell::basic_block::BasicBlock<'ctx> {
        self.ctx.append_basic_block(self.f, name)
    }

    fn current(&self) -> Result<inkwell::basic_block::BasicBlock<'ctx>> {
        self.b
            .get_insert_block()
            .ok_or_else(|| cg("builder lost its block"))
    }
}

impl<'ctx> Kb for Nvptx<'_, 'ctx> {
    type I = IntValue<'ctx>;
    type L = IntValue<'ctx>;
    type F = FloatValue<'ctx>;
    type B = IntValue<'ctx>;
    type S = PointerValue<'ctx>;

    fn ci(&mut self, v: i32) -> Self::I {
        self.i32.const_int(i64::from(v) as u64, true)
    }
    fn cf(&mut self, v: f32) -> Self::F {
        self.f32.const_float(f64::from(v))
    }
    fn tid(&mut self) -> Result<Self::I> {
        self.call_i32("llvm.nvvm.read.ptx.sreg.tid.x")
    }
    fn ctaid(&mut self, dim: u8) -> Result<Self::I> {
        let axis = if dim == 0 { "x" } else { "y" };
        self.call_i32(&format!("llvm.nvvm.read.ptx.sreg.ctaid.{axis}"))
    }
    fn scalar(&mut self, s: Scalar) -> Result<Self::I> {
        Ok(self.param(Slot::Scalar(s))?.into_int_value())
    }
    fn add(&mut self, a: Self::I, b: Self::I) -> Result<Self::I> {
        Ok(self.b.build_int_nsw_add(a, b, "")?)
    }
    fn mul(&mut self, a: Self::I, b: Self::I) -> Result<Self::I> {
        Ok(self.b.build_int_nsw_mul(a, b, "")?)
    }
    fn div(&mut self, a: Self::I, d: i32) -> Result<Self::I> {
        let d = self.ci(d);
        Ok(self.b.build_int_unsigned_div(a, d, "")?)
    }
    fn rem(&mut self, a: Self::I, d: i32) -> Result<Self::I> {
        let d = self.ci(d);
        Ok(self.b.build_int_unsigned_rem(a, d, "")?)
    }
    fn ult(&mut self, a: Self::I, b: Self::I) -> Result<Self::B> {
        Ok(self.b.build_int_compare(IntPredicate::ULT, a, b, "")?)
    }
    fn and(&mut self, a: Self::B, b: Self::B) -> Result<Self::B> {
        Ok(self.b.build_and(a, b, "")?)
    }
    fn wide(&mut self, a: Self::I) -> Result<Self::L> {
        Ok(self.b.build_int_s_extend(a, self.i64, "")?)
    }
    fn cl(&mut self, v: i64) -> Self::L {
        self.i64.const_int(v as u64, true)
    }
    fn addl(&mut self, a: Self::L, b: Self::L) -> Result<Self::L> {
        Ok(self.b.build_int_nsw_add(a, b, "")?)
    }
    fn mull(&mut self, a: Self::L, b: Self::L) -> Result<Self::L> {
        Ok(self.b.build_int_nsw_mul(a, b, "")?)
    }
    fn fadd(&mut self, a: Self::F, b: Self::F) -> Result<Self::F> {
        Ok(self.b.build_float_add(a, b, "")?)
    }
    fn fmul(&mut self, a: Self::F, b: Self::F) -> Result<Self::F> {
        Ok(self.b.build_float_mul(a, b, "")?)
    }
    fn fma(&mut self, a: Self::F, b: Self::F, c: Self::F) -> Result<Self::F> {
        self.call_f32("llvm.fma", &[a, b, c])
    }
    fn fmax(&mut self, a: Self::F, b: Self::F) -> Result<Self::F> {
        self.call_f32("llvm.maxnum", &[a, b])
    }
    fn fdiv(&mut self, a: Self::F, b: Self::F) -> Result<Self::F> {
        self.call_f32("llvm.nvvm.div.rn.f", &[a, b])
    }
    fn ex2(&mut self, x: Self::F) -> Result<Self::F> {
        self.call_f32("llvm.nvvm.ex2.approx.f", &[x])
    }
    fn flt(&mut self, a: Self::F, b: Self::F) -> Result<Self::B> {
        Ok(self.b.build_float_compare(FloatPredicate::OLT, a, b, "")?)
    }
    fn select(&mut self, c: Self::B, a: Self::F, b: Self::F) -> Result<Self::F> {
        Ok(self.b.build_select(c, a, b, "")?.into_float_value())
    }
    fn selecti(&mut self, c: Self::B, a: Self::I, b: Self::I) -> Result<Self::I> {
        Ok(self.b.build_select(c, a, b, "")?.into_int_value())
    }
    fn load(&mut self, buf: Buf, idx: Self::L) -> Result<Self::F> {
        let p = self.gep(self.base(buf)?, idx)?;
        self.load_at(p)
    }
    fn load_if(&mut self, c: Self::B, buf: Buf, idx: Self::L, other: Self::F) -> Result<Self::F> {
        let from = self.current()?;
        let (then, join) = (self.block("ld"), self.block("ld.join"));
        self.b.build_conditional_branch(c, then, join)?;
        self.b.position_at_end(then);
        let v = self.load(buf, idx)?;
        let then_end = self.current()?;
        self.b.build_unconditional_branch(join)?;
        self.b.position_at_end(join);
        let phi = self.b.build_phi(self.f32, "")?;
        phi.add_incoming(&[(&v as &dyn BasicValue, then_end), (&other, from)]);
        Ok(phi.as_basic_value().into_float_value())
    }
    fn store_if(&mut self, c: Self::B, buf: Buf, idx: Self::L, v: Self::F) -> Result<()> {
        let (then, join) = (self.block("st"), self.block("st.join"));
        self.b.build_conditional_branch(c, then, join)?;
        self.b.position_at_end(then);
        let p = self.gep(self.base(buf)?, idx)?;
        let st = self.b.build_store(p, v)?;
        st.set_alignment(4).map_err(cg)?;
        self.b.build_unconditional_branch(join)?;
        self.b.position_at_end(join);
        Ok(())
    }
    fn shared(&mut self, len: usize) -> Result<Self::S> {
        let len = u32::try_from(len).map_err(cg)?;
        let ty = self.f32.array_type(len);
        let name = format!(
            "{}.smem{}",
            self.f.get_name().to_string_lossy(),
            self.shared_count
        );
        self.shared_count += 1;
        let g = self
            .module
            .add_global(ty, Some(AddressSpace::from(SHARED)), &name);
        g.set_linkage(Linkage::Internal);
        g.set_initializer(&ty.get_undef());
        g.set_alignment(16);
        Ok(g.as_pointer_value())
    }
    fn load_shared(&mut self, s: Self::S, idx: Self::I) -> Result<Self::F> {
        let p = self.gep(s, idx)?;
        self.load_at(p)
    }
    fn store_shared(&mut self, s: Self::S, idx: Self::I, v: Self::F) -> Result<()> {
        let p = self.gep(s, idx)?;
        let st = self.b.build_store(p, v)?;
        st.set_alignment(4).map_err(cg)?;
        Ok(())
    }
    fn store_shared_if(&mut self, c: Self::B, s: Self::S, idx: Self::I, v: Self::F) -> Result<()> {
        let (then, join) = (self.block("sst"), self.block("sst.join"));
        self.b.build_conditional_branch(c, then, join)?;
        self.b.position_at_end(then);
        self.store_shared(s, idx, v)?;
        self.b.build_unconditional_branch(join)?;
        self.b.position_at_end(join);
        Ok(())
    }
    fn barrier(&mut self) -> Result<()> {
        self.call("llvm.nvvm.barrier0", &[])?;
        Ok(())
    }
    fn loop_acc(
        &mut self,
        trip: Self::I,
        init: Vec<Self::F>,
        body: &mut LoopBody<'_, Self>,
    ) -> Result<Vec<Self::F>> {
        let pre = self.current()?;
        let (head, exit) = (self.block("loop"), self.block("loop.exit"));
        self.b.build_unconditional_branch(head)?;
        self.b.position_at_end(head);
        let i_phi = self.b.build_phi(self.i32, "i")?;
        let mut phis = Vec::with_capacity(init.len());
        for _ in &init {
            phis.push(self.b.build_phi(self.f32, "acc")?);
        }
        let i = i_phi.as_basic_value().into_int_value();
        let acc = phis
            .iter()
            .map(|p| p.as_basic_value().into_float_value())
            .collect();
        let out = body(self, i, acc)?;
        if out.len() != init.len() {
            return Err(cg("loop body changed the accumulator count"));
        }
        let next = self.addc_i(i, 1)?;
        let more = self
            .b
            .build_int_compare(IntPredicate::ULT, next, trip, "")?;
        let latch = self.current()?;
        self.b.build_conditional_branch(more, head, exit)?;
        let zero = self.ci(0);
        i_phi.add_incoming(&[(&zero as &dyn BasicValue, pre), (&next, latch)]);
        for ((phi, v0), v1) in phis.iter().zip(&init).zip(&out) {
            phi.add_incoming(&[(v0 as &dyn BasicValue, pre), (v1, latch)]);
        }
        self.b.position_at_end(exit);
        Ok(out)
    }
    fn round_operand(&mut self, op: Operand, x: Self::F) -> Result<Self::F> {
        Ok(match op {
            Operand::Tf32 => {
                let r = self
                    .call("llvm.nvvm.f2tf32.rna", &[x.into()])?
                    .ok_or_else(|| cg("cvt.rna.tf32.f32 returned nothing"))?;
                self.b.build_bit_cast(r, self.f32, "")?.into_float_value()
            }
            // Round trips through the 16-bit type: the mma's own
            // conversion of the result is exact, and LLVM folds the
            // `fpext`/`fptrunc` pair away.
            Operand::F16 | Operand::Bf16 => {
                let h = self.b.build_float_trunc(x, self.half(op), "")?;
                self.b.build_float_ext(h, self.f32, "")?
            }
        })
    }
    fn mma(
        &mut self,
        op: Operand,
        a: [Self::F; 4],
        b: [Self::F; 2],
        c: [Self::F; 4],
    ) -> Result<[Self::F; 4]> {
        let mut args: Vec<BasicMetadataValueEnum> = Vec::with_capacity(10);
        let name = match op {
            Operand::Tf32 => {
                // The tf32 operands are passed as their i32 bit patterns.
                for x in a.iter().chain(&b) {
                    args.push(self.b.build_bit_cast(*x, self.i32, "")?.into());
                }
                "llvm.nvvm.mma.m16n8k8.row.col.tf32"
            }
            Operand::F16 | Operand::Bf16 => {
                // Two operands per 32-bit register, the first in the low
                // half: <2 x half> for f16, <2 x bfloat> as i32 for bf16.
                for pair in [[a[0], a[1]], [a[2], a[3]], b] {
                    let v = self.pack2(op, pair)?;
                    args.push(match op {
                        Operand::Bf16 => self.b.build_bit_cast(v, self.i32, "")?.into(),
                        _ => v.into(),
                    });
                }
                match op {
                    Operand::Bf16 => "llvm.nvvm.mma.m16n8k8.row.col.bf16",
                    _ => "llvm.nvvm.mma.m16n8k8.row.col.f32.f32",
                }
            }
        };
        args.extend(c.iter().map(|&x| BasicMetadataValueEnum::from(x)));
        let d = self
            .call(name, &args)?
            .ok_or_else(|| cg("mma returned nothing"))?
            .into_struct_value();
        let mut out = c;
        for (i, o) in out.iter_mut().enumerate() {
            *o = self
                .b
                .build_extract_value(d, i as u32, "")?
                .into_float_value();
        }
        Ok(out)
    }
}

impl<'ctx> Nvptx<'_, 'ctx> {
    /// The LLVM type of a 16-bit operand.
    fn half(&self, op: Operand) -> FloatType<'ctx> {
        match op {
            Operand::Bf16 => self.ctx.bf16_type(),
            _ => self.ctx.f16_type(),
        }
    }

    /// `<2 x half|bfloat>` of two f32 values that are exact in `op`:
    /// element 0 (the register's low half) is `pair[0]`.
    fn pack2(&mut self, op: Operand, pair: [FloatValue<'ctx>; 2]) -> Result<VectorValue<'ctx>> {
        let ty = self.half(op);
        let mut v = ty.vec_type(2).get_undef();
        for (i, x) in (0u64..).zip(pair) {
            let h = self.b.build_float_trunc(x, ty, "")?;
            let idx = self.i32.const_int(i, false);
            v = self.b.build_insert_element(v, h, idx, "")?;
        }
        Ok(v)
    }

    fn addc_i(&mut self, a: IntValue<'ctx>, c: i32) -> Result<IntValue<'ctx>> {
        let c = self.ci(c);
        self.add(a, c)
    }
}
