//! A thin layer over inkwell's builder: the types, intrinsics and idioms the
//! kernel lowerings share (counted loops, vector loads and stores of the
//! target's width (`VectorIsa`) with constant tail masks, FMA, ReLU), so each
//! lowering reads like its loop nest.

use super::target::TargetInfo;
use crate::backend::BackendError;
use inkwell::attributes::{Attribute, AttributeLoc};
use inkwell::basic_block::BasicBlock;
use inkwell::builder::Builder;
use inkwell::context::Context;
use inkwell::intrinsics::Intrinsic;
use inkwell::module::{Linkage, Module};
use inkwell::types::{FloatType, FunctionType, IntType, PointerType, VectorType};
use inkwell::values::{
    BasicMetadataValueEnum, BasicValue, FloatValue, FunctionValue, IntValue, PointerValue,
    VectorValue,
};
use inkwell::{AddressSpace, FloatPredicate, IntPredicate};

pub(crate) type Result<T> = std::result::Result<T, BackendError>;

pub(crate) use super::isa::VectorIsa;

/// Code generation state for one module.
pub(crate) struct Cg<'ctx> {
    pub ctx: &'ctx Context,
    pub module: Module<'ctx>,
    pub b: Builder<'ctx>,
    pub f32: FloatType<'ctx>,
    pub i64: IntType<'ctx>,
    pub i32: IntType<'ctx>,
    pub i1: IntType<'ctx>,
    pub ptr: PointerType<'ctx>,
    /// The vector every kernel is written in: `<lanes x float>`.
    pub vf: VectorType<'ctx>,
    /// Its lanes ([`VectorIsa::lanes`]).
    pub lanes: usize,
    pub isa: VectorIsa,
    fmuladd_v: FunctionValue<'ctx>,
    masked_load: FunctionValue<'ctx>,
    masked_store: FunctionValue<'ctx>,
    /// `llvm.prefetch`, for [`Cg::prefetch`].
    prefetch: FunctionValue<'ctx>,
    /// `vdpbf16ps` and `vcvtneps2bf16` of the vector width, for [`VectorIsa::bf16`].
    bf16: Option<Bf16Intrinsics<'ctx>>,
    fn_attrs: Vec<Attribute>,
}

/// The parameters of a micro-kernel ([`Cg::microkernel_function`]).
pub(crate) struct UkParams<'ctx> {
    /// A: the panel or input at the tile's first pixel.
    pub a: PointerValue<'ctx>,
    /// B: the packed weights of the channel block.
    pub b: PointerValue<'ctx>,
    /// The tile's output pixel pointers.
    pub c: PointerValue<'ctx>,
    /// The block's first output channel.
    pub col: IntValue<'ctx>,
    pub bias: PointerValue<'ctx>,
    /// Input channels of this chunk.
    pub kc: IntValue<'ctx>,
    /// Add to the outputs (a later chunk) instead of starting from the bias.
    pub accumulate: IntValue<'ctx>,
    pub relu: IntValue<'ctx>,
    /// Weights of a later kernel to bring into the L2 meanwhile, one cache line per reduction
    /// step from here (`env::Env::next`; a line of `b` where there are none).
    pub next: PointerValue<'ctx>,
    /// Input rows the task's thread packs next, likewise (`env::Env::next_input`).
    pub next_input: PointerValue<'ctx>,
}

/// The AVX512_BF16 intrinsics of one vector width.
struct Bf16Intrinsics<'ctx> {
    /// `<L x float> dpbf16ps(<L x float> acc, <2L x bfloat> a, <2L x bfloat> b)`.
    dot: FunctionValue<'ctx>,
    /// `<L x bfloat> cvtneps2bf16(<L x float>)`, to nearest even.
    convert: FunctionValue<'ctx>,
    /// `<2L x bfloat>`: a vector's bits as bf16 pairs.
    pairs: VectorType<'ctx>,
}

fn intrinsic<'ctx>(
    module: &Module<'ctx>,
    name: &str,
    types: &[inkwell::types::BasicTypeEnum<'ctx>],
) -> Result<FunctionValue<'ctx>> {
    Intrinsic::find(name)
        .and_then(|i| i.get_declaration(module, types))
        .ok_or_else(|| BackendError::Codegen(format!("intrinsic {name} is not available")))
}

impl<'ctx> Cg<'ctx> {
    /// A fresh module whose functions all carry the target CPU (and tuning) and features.
    pub fn new(ctx: &'ctx Context, name: &str, target: &TargetInfo) -> Result<Self> {
        let isa = target.isa;
        let module = ctx.create_module(name);
        let f32 = ctx.f32_type();
        let vf = f32.vec_type(isa.lanes as u32);
        let ptr = ctx.ptr_type(AddressSpace::default());
        let fmuladd_v = intrinsic(&module, "llvm.fmuladd", &[vf.into()])?;
        let masked_load = intrinsic(&module, "llvm.masked.load", &[vf.into(), ptr.into()])?;
        let masked_store = intrinsic(&module, "llvm.masked.store", &[vf.into(), ptr.into()])?;
        let prefetch = intrinsic(&module, "llvm.prefetch", &[ptr.into()])?;
        let mut fn_attrs = vec![
            ctx.create_string_attribute("target-cpu", target.llvm_cpu()),
            ctx.create_string_attribute("target-features", &target.features),
        ];
        if let Some(tune) = target.tune_cpu() {
            fn_attrs.push(ctx.create_string_attribute("tune-cpu", tune));
        }
        if isa.bits() > 256 {
            // LLVM splits 512-bit vectors into two 256-bit halves on CPUs tuned to prefer
            // 256-bit vectors (Intel's AVX-512 server cores) unless a function says it needs
            // them, as clang does for code using 512-bit intrinsics.
            let bits = isa.bits().to_string();
            fn_attrs.push(ctx.create_string_attribute("min-legal-vector-width", &bits));
            fn_attrs.push(ctx.create_string_attribute("prefer-vector-width", &bits));
        }
        let bf16 = if isa.bf16 {
            let width = match isa.lanes {
                16 => "512",
                8 => "256",
                lanes => {
                    return Err(BackendError::Codegen(format!(
                        "no bf16 dot product of {lanes} lanes"
                    )))
                }
            };
            Some(Bf16Intrinsics {
                dot: intrinsic(
                    &module,
                    &format!("llvm.x86.avx512bf16.dpbf16ps.{width}"),
                    &[],
                )?,
                convert: intrinsic(
                    &module,
                    &format!("llvm.x86.avx512bf16.cvtneps2bf16.{width}"),
                    &[],
                )?,
                pairs: ctx.bf16_type().vec_type(2 * isa.lanes as u32),
            })
        } else {
            None
        };
        let nounwind = Attribute::get_named_enum_kind_id("nounwind");
        fn_attrs.push(ctx.create_enum_attribute(nounwind, 0));
        Ok(Cg {
            ctx,
            b: ctx.create_builder(),
            f32,
            i64: ctx.i64_type(),
            i32: ctx.i32_type(),
            i1: ctx.bool_type(),
            ptr,
            vf,
            lanes: isa.lanes,
            isa,
            fmuladd_v,
            masked_load,
            masked_store,
            prefetch,
            bf16,
            fn_attrs,
            module,
        })
    }

    /// A read prefetch of the cache line `bytes` after `p` into every cache level
    /// (`prefetcht0`): a hint, never a fault, wherever that is. The address is a plain
    /// (not `inbounds`) GEP, since it may lie past the end of what `p` points into.
    pub fn prefetch(&self, p: PointerValue<'ctx>, bytes: usize) -> Result<()> {
        let i8 = self.ctx.i8_type();
        // SAFETY: only IR is built; without `inbounds` any offset is a defined address.
        let p = unsafe { self.b.build_gep(i8, p, &[self.c64(bytes)], "")? };
        let args: [BasicMetadataValueEnum; 4] = [
            p.into(),
            self.i32.const_zero().into(),        // read
            self.i32.const_int(3, false).into(), // keep in all levels
            self.i32.const_int(1, false).into(), // data
        ];
        self.b.build_call(self.prefetch, &args, "")?;
        Ok(())
    }

    /// A read prefetch of the line `bytes` after `p` into the L2 (`prefetcht1`): a hint,
    /// never a fault, wherever that is (a plain GEP, as in [`Cg::prefetch`]).
    pub fn prefetch_l2(&self, p: PointerValue<'ctx>, bytes: IntValue<'ctx>) -> Result<()> {
        let i8 = self.ctx.i8_type();
        // SAFETY: only IR is built; without `inbounds` any offset is a defined address.
        let p = unsafe { self.b.build_gep(i8, p, &[bytes], "")? };
        let args: [BasicMetadataValueEnum; 4] = [
            p.into(),
            self.i32.const_zero().into(),        // read
            self.i32.const_int(2, false).into(), // L2 and beyond, not L1
            self.i32.const_int(1, false).into(), // data
        ];
        self.b.build_call(self.prefetch, &args, "")?;
        Ok(())
    }

    /// Declare a function with the module's target attributes and position
    /// the builder at its (empty) entry block.
    pub fn function(
        &self,
        name: &str,
        ty: FunctionType<'ctx>,
        linkage: Linkage,
    ) -> FunctionValue<'ctx> {
        let f = self.module.add_function(name, ty, Some(linkage));
        for a in &self.fn_attrs {
            f.add_attribute(AttributeLoc::Function, *a);
        }
        let entry = self.ctx.append_basic_block(f, "entry");
        self.b.position_at_end(entry);
        f
    }

    /// Mark pointer parameter `index` of `f` as `noalias`: the lowering
    /// guarantees the memory it reaches is reached through no other argument.
    pub fn noalias_param(&self, f: FunctionValue<'ctx>, index: u32) {
        let kind = Attribute::get_named_enum_kind_id("noalias");
        f.add_attribute(
            AttributeLoc::Param(index),
            self.ctx.create_enum_attribute(kind, 0),
        );
    }

    /// Declare micro-kernel `name` (`microkernel.rs`, `amx.rs`: one signature) and position
    /// the builder in it: `void uk(a, b, c, col, bias, kc, accumulate, relu)`, never inlined
    /// (one copy per shape, shared by every kernel that uses it: inlining it into each call
    /// site multiplies compile time for no measurable gain, a call per tile of thousands of
    /// multiplies), `a`, `b`, `c` and `bias` `noalias`.
    pub fn microkernel_function(
        &self,
        name: &str,
    ) -> Result<(FunctionValue<'ctx>, UkParams<'ctx>)> {
        let p = self.ptr.into();
        let (i64, i1) = (self.i64.into(), self.i1.into());
        let ty = self
            .ctx
            .void_type()
            .fn_type(&[p, p, p, i64, p, i64, i1, i1, p, p], false);
        let f = self.function(name, ty, Linkage::Internal);
        self.noinline(f);
        for i in [0, 1, 2, 4] {
            self.noalias_param(f, i);
        }
        let params = UkParams {
            a: self.param_ptr(f, 0)?,
            b: self.param_ptr(f, 1)?,
            c: self.param_ptr(f, 2)?,
            col: self.param_int(f, 3)?,
            bias: self.param_ptr(f, 4)?,
            kc: self.param_int(f, 5)?,
            accumulate: self.param_int(f, 6)?,
            relu: self.param_int(f, 7)?,
            next: self.param_ptr(f, 8)?,
            next_input: self.param_ptr(f, 9)?,
        };
        Ok((f, params))
    }

    pub fn noinline(&self, f: FunctionValue<'ctx>) {
        let kind = Attribute::get_named_enum_kind_id("noinline");
        f.add_attribute(
            AttributeLoc::Function,
            self.ctx.create_enum_attribute(kind, 0),
        );
    }

    pub fn param_ptr(&self, f: FunctionValue<'ctx>, i: u32) -> Result<PointerValue<'ctx>> {
        f.get_nth_param(i)
            .map(|p| p.into_pointer_value())
            .ok_or_else(|| BackendError::Codegen(format!("missing parameter {i}")))
    }

    pub fn param_int(&self, f: FunctionValue<'ctx>, i: u32) -> Result<IntValue<'ctx>> {
        f.get_nth_param(i)
            .map(|p| p.into_int_value())
            .ok_or_else(|| BackendError::Codegen(format!("missing parameter {i}")))
    }

    fn block(&self, name: &str) -> Result<BasicBlock<'ctx>> {
        let f = self
            .b
            .get_insert_block()
            .and_then(|bb| bb.get_parent())
            .ok_or_else(|| BackendError::Codegen("builder is not inside a function".into()))?;
        Ok(self.ctx.append_basic_block(f, name))
    }

    pub fn c64(&self, v: usize) -> IntValue<'ctx> {
        self.i64.const_int(v as u64, false)
    }

    pub fn add(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> Result<IntValue<'ctx>> {
        Ok(self.b.build_int_nsw_add(a, b, "")?)
    }

    pub fn addc(&self, a: IntValue<'ctx>, b: usize) -> Result<IntValue<'ctx>> {
        self.add(a, self.c64(b))
    }

    pub fn sub(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> Result<IntValue<'ctx>> {
        Ok(self.b.build_int_nsw_sub(a, b, "")?)
    }

    pub fn mulc(&self, a: IntValue<'ctx>, b: usize) -> Result<IntValue<'ctx>> {
        Ok(self.b.build_int_nsw_mul(a, self.c64(b), "")?)
    }

    /// `(a / d, a % d)` for a non-negative `a` and constant `d > 0`.
    pub fn divrem(&self, a: IntValue<'ctx>, d: usize) -> Result<(IntValue<'ctx>, IntValue<'ctx>)> {
        let q = self.b.build_int_unsigned_div(a, self.c64(d), "")?;
        let r = self.b.build_int_unsigned_rem(a, self.c64(d), "")?;
        Ok((q, r))
    }

    pub fn eqc(&self, a: IntValue<'ctx>, b: usize) -> Result<IntValue<'ctx>> {
        Ok(self
            .b
            .build_int_compare(IntPredicate::EQ, a, self.c64(b), "")?)
    }

    /// `lo <= a < hi` (signed).
    pub fn in_range(&self, a: IntValue<'ctx>, lo: usize, hi: usize) -> Result<IntValue<'ctx>> {
        let ge = self
            .b
            .build_int_compare(IntPredicate::SGE, a, self.c64(lo), "")?;
        let lt = self
            .b
            .build_int_compare(IntPredicate::SLT, a, self.c64(hi), "")?;
        Ok(self.b.build_and(ge, lt, "")?)
    }

    pub fn umin(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> Result<IntValue<'ctx>> {
        let lt = self.b.build_int_compare(IntPredicate::ULT, a, b, "")?;
        Ok(self.b.build_select(lt, a, b, "")?.into_int_value())
    }

    /// `p + i` in f32 elements.
    pub fn gep(&self, p: PointerValue<'ctx>, i: IntValue<'ctx>) -> Result<PointerValue<'ctx>> {
        // SAFETY: building a GEP instruction only creates IR; it does not
        // dereference anything at compile time. Every index the lowerings pass
        // stays inside the buffer the pointer addresses (the arena views and
        // weight sections are validated, scratch indices are bounded by the
        // plan), which the IR's `inbounds` claims.
        Ok(unsafe { self.b.build_in_bounds_gep(self.f32, p, &[i], "")? })
    }

    pub fn gepc(&self, p: PointerValue<'ctx>, i: usize) -> Result<PointerValue<'ctx>> {
        if i == 0 {
            return Ok(p);
        }
        self.gep(p, self.c64(i))
    }

    /// `p + i * stride`.
    pub fn gep2(
        &self,
        p: PointerValue<'ctx>,
        i: IntValue<'ctx>,
        stride: usize,
    ) -> Result<PointerValue<'ctx>> {
        let off = self.mulc(i, stride)?;
        self.gep(p, off)
    }

    /// `p + i` 2-byte elements (a bf16 view's storage, [`crate::backend::kernel::View::bf16`]).
    pub fn gep_bf16(&self, p: PointerValue<'ctx>, i: IntValue<'ctx>) -> Result<PointerValue<'ctx>> {
        // SAFETY: as for `gep`.
        Ok(unsafe {
            self.b
                .build_in_bounds_gep(self.ctx.i16_type(), p, &[i], "")?
        })
    }

    /// Address of element `i` of an array of pointers.
    pub fn ptr_elem(
        &self,
        array: PointerValue<'ctx>,
        i: IntValue<'ctx>,
    ) -> Result<PointerValue<'ctx>> {
        // SAFETY: as for `gep`; `i` is below the array's length, which the
        // caller allocated.
        Ok(unsafe { self.b.build_in_bounds_gep(self.ptr, array, &[i], "")? })
    }

    pub fn load_ptr(&self, p: PointerValue<'ctx>) -> Result<PointerValue<'ctx>> {
        Ok(self.b.build_load(self.ptr, p, "")?.into_pointer_value())
    }

    pub fn load_f32(&self, p: PointerValue<'ctx>) -> Result<FloatValue<'ctx>> {
        Ok(self.b.build_load(self.f32, p, "")?.into_float_value())
    }

    /// Load `count` (1..=lanes) floats into a vector; missing lanes read as 0.
    pub fn load_v(&self, p: PointerValue<'ctx>, count: usize) -> Result<VectorValue<'ctx>> {
        if count >= self.lanes {
            let v = self.b.build_load(self.vf, p, "")?;
            set_align(v, 4)?;
            return Ok(v.into_vector_value());
        }
        let args: [BasicMetadataValueEnum; 4] = [
            p.into(),
            self.i32.const_int(4, false).into(),
            self.mask(count).into(),
            self.vf.const_zero().into(),
        ];
        self.call(self.masked_load, &args)
            .map(|v| v.into_vector_value())
    }

    /// Store the first `count` (1..=lanes) lanes of `v`.
    ///
    /// A partial vector is stored as pieces of 4, 2 and 1 lanes (e.g. 12 output channels: one
    /// whole vector, then one 128-bit store), not with `vmaskmovps`: AMD's Zen cores run a
    /// masked store as a microcoded sequence an order of magnitude slower than plain stores,
    /// and the Winograd output transform of DenseNet-BC's 12-channel growth convs issued one
    /// per output pixel.
    pub fn store_v(&self, v: VectorValue<'ctx>, p: PointerValue<'ctx>, count: usize) -> Result<()> {
        let store = |value: inkwell::values::BasicValueEnum<'ctx>, at: usize| -> Result<()> {
            let st = self.b.build_store(self.gepc(p, at)?, value)?;
            st.set_alignment(4)
                .map_err(|e| BackendError::Codegen(e.to_string()))
        };
        if count >= self.lanes {
            return store(v.into(), 0);
        }
        if self.isa.registers > 16 {
            // AVX-512: one store under a mask register (`vmovups [p]{k}`), as cheap as a plain
            // store on the cores that have it.
            let args: [BasicMetadataValueEnum; 4] = [
                v.into(),
                p.into(),
                self.i32.const_int(4, false).into(),
                self.mask(count).into(),
            ];
            self.b.build_call(self.masked_store, &args, "")?;
            return Ok(());
        }
        let mut lane = 0;
        for width in [8, 4, 2, 1] {
            if count - lane < width {
                continue;
            }
            if width == 1 {
                let x =
                    self.b
                        .build_extract_element(v, self.i32.const_int(lane as u64, false), "")?;
                store(x, lane)?;
            } else {
                let idx: Vec<IntValue> = (lane..lane + width)
                    .map(|l| self.i32.const_int(l as u64, false))
                    .collect();
                let piece =
                    self.b
                        .build_shuffle_vector(v, v, VectorType::const_vector(&idx), "")?;
                store(piece.into(), lane)?;
            }
            lane += width;
        }
        Ok(())
    }

    fn mask(&self, count: usize) -> VectorValue<'ctx> {
        let lanes: Vec<IntValue> = (0..self.lanes)
            .map(|l| self.i1.const_int(u64::from(l < count), false))
            .collect();
        VectorType::const_vector(&lanes)
    }

    fn call(
        &self,
        f: FunctionValue<'ctx>,
        args: &[BasicMetadataValueEnum<'ctx>],
    ) -> Result<inkwell::values::BasicValueEnum<'ctx>> {
        self.b
            .build_call(f, args, "")?
            .try_as_basic_value()
            .basic()
            .ok_or_else(|| BackendError::Codegen("call returned no value".into()))
    }

    pub fn splat(&self, x: FloatValue<'ctx>) -> Result<VectorValue<'ctx>> {
        let v = self
            .b
            .build_insert_element(self.vf.get_poison(), x, self.i32.const_zero(), "")?;
        let zeros = self.i32.vec_type(self.lanes as u32).const_zero();
        Ok(self
            .b
            .build_shuffle_vector(v, self.vf.get_poison(), zeros, "")?)
    }

    pub fn splat_c(&self, x: f32) -> VectorValue<'ctx> {
        let lanes: Vec<FloatValue> = (0..self.lanes)
            .map(|_| self.f32.const_float(f64::from(x)))
            .collect();
        VectorType::const_vector(&lanes)
    }

    /// `a * b + c`, fused where the target has FMA.
    pub fn fma(
        &self,
        a: VectorValue<'ctx>,
        b: VectorValue<'ctx>,
        c: VectorValue<'ctx>,
    ) -> Result<VectorValue<'ctx>> {
        self.call(self.fmuladd_v, &[a.into(), b.into(), c.into()])
            .map(|v| v.into_vector_value())
    }

    fn bf16_intrinsics(&self) -> Result<&Bf16Intrinsics<'ctx>> {
        self.bf16
            .as_ref()
            .ok_or_else(|| BackendError::Codegen("bf16 arithmetic on a non-bf16 target".into()))
    }

    /// `acc + a·b` over bf16 pairs (`vdpbf16ps`): lane `l` adds `a[2l]·b[2l] + a[2l+1]·b[2l+1]`,
    /// where `a` and `b` are f32 vectors whose bits are read as `2·lanes` bf16 values.
    pub fn dot_bf16(
        &self,
        acc: VectorValue<'ctx>,
        a: VectorValue<'ctx>,
        b: VectorValue<'ctx>,
    ) -> Result<VectorValue<'ctx>> {
        let i = self.bf16_intrinsics()?;
        let a = self.b.build_bit_cast(a, i.pairs, "")?;
        let b = self.b.build_bit_cast(b, i.pairs, "")?;
        self.call(i.dot, &[acc.into(), a.into(), b.into()])
            .map(|v| v.into_vector_value())
    }

    /// Store `v` rounded to bf16 (to nearest even, `vcvtneps2bf16`) at `p`: `lanes` bf16
    /// values, half a vector's bytes.
    pub fn store_bf16(&self, v: VectorValue<'ctx>, p: PointerValue<'ctx>) -> Result<()> {
        let i = self.bf16_intrinsics()?;
        let h = self.call(i.convert, &[v.into()])?;
        let st = self.b.build_store(p, h)?;
        st.set_alignment(4)
            .map_err(|e| BackendError::Codegen(e.to_string()))
    }

    /// Load a vector of `lanes` bf16 values at `p` as floats (exact: a bf16 is the top half of
    /// its f32). Whole vectors only: a bf16 view's channels are whole vectors
    /// (`storage.rs`).
    pub fn load_bf16(&self, p: PointerValue<'ctx>, count: usize) -> Result<VectorValue<'ctx>> {
        if count != self.lanes {
            return Err(BackendError::Codegen(format!(
                "a load of {count} bf16 lanes (bf16 views hold whole vectors of {})",
                self.lanes
            )));
        }
        let halves = self.ctx.i16_type().vec_type(self.lanes as u32);
        let words = self.i32.vec_type(self.lanes as u32);
        let h = self.b.build_load(halves, p, "")?;
        set_align(h, 2)?;
        let w = self
            .b
            .build_int_z_extend(h.into_vector_value(), words, "")?;
        let sixteen = self.i32.const_int(16, false);
        let shift = VectorType::const_vector(&vec![sixteen; self.lanes]);
        let w = self.b.build_left_shift(w, shift, "")?;
        Ok(self.b.build_bit_cast(w, self.vf, "")?.into_vector_value())
    }

    pub fn fadd(&self, a: VectorValue<'ctx>, b: VectorValue<'ctx>) -> Result<VectorValue<'ctx>> {
        Ok(self.b.build_float_add(a, b, "")?)
    }

    pub fn fmul(&self, a: VectorValue<'ctx>, b: VectorValue<'ctx>) -> Result<VectorValue<'ctx>> {
        Ok(self.b.build_float_mul(a, b, "")?)
    }

    /// The running maximum of max pooling, as PyTorch (and the reference)
    /// computes it: `v` replaces `acc` when greater or NaN, so a NaN, once
    /// seen, stays.
    pub fn pool_max(
        &self,
        acc: VectorValue<'ctx>,
        v: VectorValue<'ctx>,
    ) -> Result<VectorValue<'ctx>> {
        let gt = self
            .b
            .build_float_compare(FloatPredicate::OGT, v, acc, "")?;
        let nan = self.b.build_float_compare(FloatPredicate::UNO, v, v, "")?;
        let take = self.b.build_or(gt, nan, "")?;
        Ok(self.b.build_select(take, v, acc, "")?.into_vector_value())
    }

    /// `a < 0 ? 0 : a` lane-wise: NaN propagates, as in PyTorch (one
    /// `vmaxps` with the zero first).
    pub fn relu(&self, a: VectorValue<'ctx>) -> Result<VectorValue<'ctx>> {
        let zero = self.vf.const_zero();
        let lt = self
            .b
            .build_float_compare(FloatPredicate::OLT, a, zero, "")?;
        Ok(self.b.build_select(lt, zero, a, "")?.into_vector_value())
    }

    /// A stack slot for one vector, promoted to a register by SROA.
    pub fn vec_slot(&self, init: VectorValue<'ctx>) -> Result<PointerValue<'ctx>> {
        let slot = self.entry_alloca(self.vf.into(), "acc")?;
        self.b.build_store(slot, init)?;
        Ok(slot)
    }

    pub fn load_slot(&self, slot: PointerValue<'ctx>) -> Result<VectorValue<'ctx>> {
        Ok(self.b.build_load(self.vf, slot, "")?.into_vector_value())
    }

    pub fn store_slot(&self, slot: PointerValue<'ctx>, v: VectorValue<'ctx>) -> Result<()> {
        self.b.build_store(slot, v)?;
        Ok(())
    }

    /// An `alloca` in the current function's entry block (so it is static
    /// and promotable), of `ty`, aligned to the vector's size (32 or 64 bytes: unoptimised code
    /// spills vectors with aligned moves into the frame, which must then be aligned for them).
    pub fn entry_alloca(
        &self,
        ty: inkwell::types::BasicTypeEnum<'ctx>,
        name: &str,
    ) -> Result<PointerValue<'ctx>> {
        let here = self
            .b
            .get_insert_block()
            .ok_or_else(|| BackendError::Codegen("builder is not positioned".into()))?;
        let entry = here
            .get_parent()
            .and_then(|f| f.get_first_basic_block())
            .ok_or_else(|| BackendError::Codegen("function has no entry block".into()))?;
        let tmp = self.ctx.create_builder();
        match entry.get_first_instruction() {
            Some(i) => tmp.position_before(&i),
            None => tmp.position_at_end(entry),
        }
        let slot = tmp.build_alloca(ty, name)?;
        slot.as_instruction()
            .ok_or_else(|| BackendError::Codegen("alloca is not an instruction".into()))?
            .set_alignment((self.lanes * 4).max(32) as u32)
            .map_err(|e| BackendError::Codegen(e.to_string()))?;
        Ok(slot)
    }

    /// `for (i = begin; i < end; i += step) body(i)` with signed i64 bounds.
    pub fn for_range(
        &self,
        begin: IntValue<'ctx>,
        end: IntValue<'ctx>,
        step: usize,
        mut body: impl FnMut(IntValue<'ctx>) -> Result<()>,
    ) -> Result<()> {
        let pre = self
            .b
            .get_insert_block()
            .ok_or_else(|| BackendError::Codegen("builder is not positioned".into()))?;
        let head = self.block("loop")?;
        let body_bb = self.block("body")?;
        let exit = self.block("exit")?;
        self.b.build_unconditional_branch(head)?;
        self.b.position_at_end(head);
        let phi = self.b.build_phi(self.i64, "i")?;
        let i = phi.as_basic_value().into_int_value();
        let cond = self.b.build_int_compare(IntPredicate::SLT, i, end, "")?;
        self.b.build_conditional_branch(cond, body_bb, exit)?;
        self.b.position_at_end(body_bb);
        body(i)?;
        let next = self.addc(i, step)?;
        let latch = self
            .b
            .get_insert_block()
            .ok_or_else(|| BackendError::Codegen("builder lost its block".into()))?;
        self.b.build_unconditional_branch(head)?;
        phi.add_incoming(&[(&begin as &dyn BasicValue, pre), (&next, latch)]);
        self.b.position_at_end(exit);
        Ok(())
    }

    /// `for i in 0..n` with a constant trip count; `n == 1` emits the body
    /// once with `i = 0` and no loop.
    pub fn for_n(
        &self,
        n: usize,
        mut body: impl FnMut(IntValue<'ctx>) -> Result<()>,
    ) -> Result<()> {
        match n {
            0 => Ok(()),
            1 => body(self.c64(0)),
            _ => self.for_range(self.c64(0), self.c64(n), 1, body),
        }
    }

    /// `if cond { then() }`.
    pub fn if_then(&self, cond: IntValue<'ctx>, then: impl FnOnce() -> Result<()>) -> Result<()> {
        let then_bb = self.block("then")?;
        let join = self.block("join")?;
        self.b.build_conditional_branch(cond, then_bb, join)?;
        self.b.position_at_end(then_bb);
        then()?;
        self.b.build_unconditional_branch(join)?;
        self.b.position_at_end(join);
        Ok(())
    }

    /// `if cond { then() } else { other() }`.
    pub fn if_else(
        &self,
        cond: IntValue<'ctx>,
        then: impl FnOnce() -> Result<()>,
        other: impl FnOnce() -> Result<()>,
    ) -> Result<()> {
        let then_bb = self.block("then")?;
        let else_bb = self.block("else")?;
        let join = self.block("join")?;
        self.b.build_conditional_branch(cond, then_bb, else_bb)?;
        self.b.position_at_end(then_bb);
        then()?;
        self.b.build_unconditional_branch(join)?;
        self.b.position_at_end(else_bb);
        other()?;
        self.b.build_unconditional_branch(join)?;
        self.b.position_at_end(join);
        Ok(())
    }

    /// Visit `channels` in vector-wide groups: a loop over the full vectors, then
    /// one masked group for the remainder. `body(c, count)` gets the first
    /// channel of the group and how many lanes are real.
    pub fn for_channel_vectors(
        &self,
        channels: usize,
        mut body: impl FnMut(IntValue<'ctx>, usize) -> Result<()>,
    ) -> Result<()> {
        let lanes = self.lanes;
        let full = channels / lanes * lanes;
        if full > 0 {
            self.for_range(self.c64(0), self.c64(full), lanes, |c| body(c, lanes))?;
        }
        if channels > full {
            body(self.c64(full), channels - full)?;
        }
        Ok(())
    }
}

fn set_align(v: inkwell::values::BasicValueEnum, align: u32) -> Result<()> {
    v.as_instruction_value()
        .ok_or_else(|| BackendError::Codegen("load is not an instruction".into()))?
        .set_alignment(align)
        .map_err(|e| BackendError::Codegen(e.to_string()))
}
