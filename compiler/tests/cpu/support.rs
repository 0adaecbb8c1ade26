//! Test support for the CPU backend: load a compiled shared object, give it
//! an arena and a parallel-for, move NCHW tensors in and out of NHWC views,
//! and detect writes outside a view.

use compiler::backend::cpu::{symbols, CompiledCpu, CpuOptions};
use compiler::backend::kernel::View;
use compiler::backend::precision::Precision;
use compiler::builder::{ConfigOverrides, DenseNetConfig};
use compiler::{CompileOptions, Weights};
use ir::graph::{Constant, Graph};
use ir::reference::Tensor;
use std::ffi::c_void;
use std::sync::{Barrier, Mutex, OnceLock};

/// A vector ISA the kernel tests cover, with the options that compile for it.
#[derive(Debug, Clone)]
pub struct TestIsa {
    pub name: &'static str,
    pub opts: CpuOptions,
    /// Whether this host can run its code (else it is compiled only).
    pub runs: bool,
}

/// The assembly LLVM emits for a whole `arch` DenseNet at `image`x`image`, batch 1, random
/// weights, for one `cpu` and `precision` (compiled only: any host).
pub fn assembly(arch: &str, image: usize, cpu: &str, precision: Precision) -> String {
    let opts = CpuOptions {
        emit_asm: true,
        ..CpuOptions::default()
    };
    compile_whole(arch, [image, 1], cpu, precision, opts)
        .asm
        .expect("assembly")
}

/// The LLVM IR before optimisation of the same ([`assembly`]) at `batch` images: the emitted
/// code as written, one value per instruction.
pub fn llvm_ir(arch: &str, [image, batch]: [usize; 2], cpu: &str, precision: Precision) -> String {
    let opts = CpuOptions {
        keep_ir: true,
        ..CpuOptions::default()
    };
    compile_whole(arch, [image, batch], cpu, precision, opts).llvm_ir_before
}

fn compile_whole(
    arch: &str,
    [image, batch]: [usize; 2],
    cpu: &str,
    precision: Precision,
    opts: CpuOptions,
) -> CompiledCpu {
    let o = ConfigOverrides {
        image_size: Some(image),
        ..Default::default()
    };
    let cfg = DenseNetConfig::resolve(Some(arch), &o).expect("config");
    let opts = CompileOptions {
        cpus: vec![CpuOptions {
            cpu: cpu.into(),
            ..opts
        }],
        precision,
        batch,
        ..CompileOptions::default()
    };
    let mut compiled = compiler::compile(&cfg, &Weights::Random(3), &opts).expect("compile");
    compiled.code.cpu.swap_remove(0)
}

/// Whether the host runs the AVX-512 kernels (F, VL, BW, DQ).
pub fn host_has_avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512vl")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512dq")
}

/// The vector ISAs every kernel test runs on: the AVX2 kernels (`x86-64-v3`) everywhere, the
/// AVX-512 kernels (`x86-64-v4`) where the host has AVX-512 and compiled only elsewhere, with
/// the reason printed once.
pub fn test_isas() -> Vec<TestIsa> {
    static SKIP_NOTE: std::sync::Once = std::sync::Once::new();
    let runs = host_has_avx512();
    if !runs {
        SKIP_NOTE.call_once(|| {
            eprintln!("note: the host has no AVX-512: AVX-512 kernels are compiled, not run");
        });
    }
    let cpu = |name: &str| CpuOptions {
        cpu: name.into(),
        ..CpuOptions::default()
    };
    vec![
        TestIsa {
            name: "avx2",
            opts: cpu("x86-64-v3"),
            runs: true,
        },
        TestIsa {
            name: "avx512",
            opts: cpu("x86-64-v4"),
            runs,
        },
    ]
}

/// SplitMix64: small, deterministic, good enough for test data.
#[derive(Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi` (`hi` exclusive, `hi > lo`).
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo) as u64) as usize
    }

    pub fn f32(&mut self, lo: f32, hi: f32) -> f32 {
        let unit = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * unit
    }

    pub fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.f32(lo, hi)).collect()
    }
}

pub fn round_up(x: usize, m: usize) -> usize {
    x.div_ceil(m) * m
}

/// Declare a bound constant (panics on a malformed test).
pub fn constant(g: &mut Graph, name: &str, shape: Vec<usize>, data: Vec<f32>) {
    g.add_constant(name, Constant::with_data(shape, data))
        .expect("constant");
}

/// Elements past the compiled arena size, checked for stray writes too.
const SLACK: usize = 64;

/// An f32 arena pre-filled with a recognisable pattern.
#[derive(Debug, Clone)]
pub struct Arena(Vec<f32>);

impl Arena {
    pub fn new(bytes: usize) -> Arena {
        let n = bytes.div_ceil(4) + SLACK;
        Arena((0..n).map(|i| -777.0 - (i % 251) as f32).collect())
    }

    /// An arena of NaNs: any read of memory no kernel wrote shows.
    pub fn poisoned(bytes: usize) -> Arena {
        Arena(vec![f32::NAN; bytes.div_ceil(4) + SLACK])
    }

    fn index(v: &View, n: usize, c: usize, h: usize, w: usize) -> usize {
        v.element(n, h, w, c)
    }

    /// Arena indices of the view's channels in its buffer's border pixels.
    pub fn border_elements(v: &View) -> Vec<usize> {
        let [bh, bw] = v.border;
        let (rows, cols) = (v.h + 2 * bh, v.w + 2 * bw);
        let mut out = Vec::new();
        for n in 0..v.n {
            for r in 0..rows {
                for x in 0..cols {
                    if (bh..bh + v.h).contains(&r) && (bw..bw + v.w).contains(&x) {
                        continue;
                    }
                    let px = v.offset / 4 + ((n * rows + r) * cols + x) * v.pixel_stride;
                    out.extend((0..v.channels).map(|c| px + v.channel_offset + c));
                }
            }
        }
        out
    }

    /// The first element of the view's border slice that is not 0.
    pub fn first_nonzero_border(&self, v: &View) -> Option<usize> {
        Self::border_elements(v)
            .into_iter()
            .find(|&i| self.0[i].to_bits() != 0)
    }

    /// Store an NCHW (or `[N, C]`) tensor into the view.
    pub fn write(&mut self, v: &View, t: &Tensor) {
        assert_eq!(
            t.num_elements(),
            v.pixels() * v.channels,
            "tensor does not fit the view"
        );
        let mut k = 0;
        for n in 0..v.n {
            for c in 0..v.channels {
                for h in 0..v.h {
                    for w in 0..v.w {
                        self.0[Self::index(v, n, c, h, w)] = t.data[k];
                        k += 1;
                    }
                }
            }
        }
    }

    /// Read the view as an NCHW tensor of `shape`.
    pub fn read(&self, v: &View, shape: &[usize]) -> Tensor {
        let mut data = Vec::with_capacity(v.pixels() * v.channels);
        for n in 0..v.n {
            for c in 0..v.channels {
                for h in 0..v.h {
                    for w in 0..v.w {
                        data.push(self.0[Self::index(v, n, c, h, w)]);
                    }
                }
            }
        }
        Tensor::from_vec(shape.to_vec(), data).expect("view matches shape")
    }

    /// The first element that differs from `before` and is not part of any
    /// of `views` (their border slices included: their writers own them).
    pub fn first_change_outside_any(&self, before: &Arena, views: &[View]) -> Option<usize> {
        let mut inside = vec![false; self.0.len()];
        for v in views {
            for i in Self::border_elements(v) {
                inside[i] = true;
            }
            for n in 0..v.n {
                for h in 0..v.h {
                    for w in 0..v.w {
                        for c in 0..v.channels {
                            inside[Self::index(v, n, c, h, w)] = true;
                        }
                    }
                }
            }
        }
        (0..self.0.len()).find(|&i| !inside[i] && self.0[i].to_bits() != before.0[i].to_bits())
    }

    pub fn first_change_outside(&self, before: &Arena, v: &View) -> Option<usize> {
        self.first_change_outside_any(before, std::slice::from_ref(v))
    }

    pub fn poke(&mut self, i: usize, x: f32) {
        self.0[i] = x;
    }

    fn as_mut_ptr(&mut self) -> *mut f32 {
        self.0.as_mut_ptr()
    }
}

/// The generated code's context: the runtime's definition, the one both sides agree on.
pub type Ctx = runtime::abi::DncContext;
type TaskFn = runtime::abi::DncTaskFn;
type PforFn = runtime::abi::DncParallelForFn;

/// The parallel-fors the tests run kernels under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pfor {
    /// `task(ctx, 0, n)`.
    Sequential,
    /// Two threads, each one contiguous half.
    TwoThreads,
    /// One task per call, last task first.
    ReverseSingles,
    /// A persistent two-thread pool (the caller and one worker), for timing.
    Pool2,
}

unsafe extern "C" fn pfor_sequential(_: *mut c_void, task: TaskFn, ctx: *const Ctx, n: i64) {
    // SAFETY: the generated code passes its own task function and the
    // context it was called with; `[0, n)` is exactly the contract's range.
    unsafe { task(ctx, 0, n) }
}

unsafe extern "C" fn pfor_two_threads(_: *mut c_void, task: TaskFn, ctx: *const Ctx, n: i64) {
    let ctx = ctx as usize;
    let mid = n / 2;
    std::thread::scope(|s| {
        for (b, e) in [(0, mid), (mid, n)] {
            s.spawn(move || {
                // SAFETY: as for `pfor_sequential`; the two ranges are
                // disjoint, and the contract allows concurrent task calls.
                // The scope joins both threads before this function returns.
                unsafe { task(ctx as *const Ctx, b, e) }
            });
        }
    });
}

unsafe extern "C" fn pfor_reverse(_: *mut c_void, task: TaskFn, ctx: *const Ctx, n: i64) {
    for i in (0..n).rev() {
        // SAFETY: as for `pfor_sequential`, one task at a time.
        unsafe { task(ctx, i, i + 1) }
    }
}

/// One half of a parallel-for, handed to the pool's worker.
#[derive(Clone, Copy)]
struct Job {
    task: TaskFn,
    ctx: usize,
    begin: i64,
    end: i64,
}

/// The caller plus one persistent worker, synchronised by two barriers.
struct Pool2 {
    busy: Mutex<()>,
    job: Mutex<Option<Job>>,
    start: Barrier,
    done: Barrier,
}

fn pool2() -> &'static Pool2 {
    static POOL: OnceLock<&'static Pool2> = OnceLock::new();
    POOL.get_or_init(|| {
        let pool: &'static Pool2 = Box::leak(Box::new(Pool2 {
            busy: Mutex::new(()),
            job: Mutex::new(None),
            start: Barrier::new(2),
            done: Barrier::new(2),
        }));
        std::thread::spawn(move || loop {
            pool.start.wait();
            let job = *pool.job.lock().expect("job lock");
            if let Some(j) = job {
                // SAFETY: the job was published by `pfor_pool2`, which waits
                // on `done` before returning, so the context is alive.
                unsafe { (j.task)(j.ctx as *const Ctx, j.begin, j.end) }
            }
            pool.done.wait();
        });
        pool
    })
}

unsafe extern "C" fn pfor_pool2(pool: *mut c_void, task: TaskFn, ctx: *const Ctx, n: i64) {
    // SAFETY: `Loaded::ctx` sets `pool` to the leaked, never-freed `Pool2`.
    let pool = unsafe { &*(pool as *const Pool2) };
    let _busy = pool.busy.lock().expect("pool lock");
    let mid = n / 2;
    *pool.job.lock().expect("job lock") = Some(Job {
        task,
        ctx: ctx as usize,
        begin: mid,
        end: n,
    });
    pool.start.wait();
    // SAFETY: as for `pfor_sequential`; the worker runs the other half.
    unsafe { task(ctx, 0, mid) };
    pool.done.wait();
}

/// A compiled kernel list, loaded.
pub struct Loaded {
    lib: libloading::Library,
    weights: Vec<f32>,
}

impl Loaded {
    pub fn new(c: &CompiledCpu) -> Loaded {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("dnc-test-{}-{n}.so", std::process::id()));
        std::fs::write(&path, &c.shared_object).expect("write .so");
        // SAFETY: the file is the shared object the backend just produced;
        // its only initialisers are the C toolchain's defaults.
        let lib = unsafe { libloading::Library::new(&path) }.expect("dlopen");
        let _ = std::fs::remove_file(&path);
        let weights = c
            .packed_weights
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        Loaded { lib, weights }
    }

    fn ctx(&self, arena: &mut Arena, pfor: Pfor) -> Ctx {
        let parallel_for: PforFn = match pfor {
            Pfor::Sequential => pfor_sequential,
            Pfor::TwoThreads => pfor_two_threads,
            Pfor::ReverseSingles => pfor_reverse,
            Pfor::Pool2 => pfor_pool2,
        };
        let pool = match pfor {
            Pfor::Pool2 => pool2() as *const Pool2 as *mut c_void,
            _ => std::ptr::null_mut(),
        };
        Ctx {
            weights: self.weights.as_ptr(),
            arena: arena.as_mut_ptr(),
            parallel_for,
            pool,
        }
    }

    /// `dnc_run` over `arena`, which must be at least `arena_bytes` long.
    pub fn run(&self, arena: &mut Arena, pfor: Pfor) {
        let ctx = self.ctx(arena, pfor);
        // SAFETY: `dnc_run` has this signature (ABI v1); the context points
        // at live weights and an arena of the compiled size (plus slack).
        unsafe {
            let f = self
                .lib
                .get::<runtime::abi::DncRunFn>(symbols::RUN.as_bytes())
                .expect("dnc_run");
            f(&ctx);
        }
    }

    pub fn run_kernel(&self, arena: &mut Arena, index: i64) -> i32 {
        let ctx = self.ctx(arena, Pfor::Sequential);
        // SAFETY: as for `run`; `dnc_run_kernel` checks the index itself.
        unsafe {
            let f = self
                .lib
                .get::<runtime::abi::DncRunKernelFn>(symbols::RUN_KERNEL.as_bytes())
                .expect("dnc_run_kernel");
            f(&ctx, index)
        }
    }

    fn get_i64(&self, name: &str) -> unsafe extern "C" fn() -> i64 {
        // SAFETY: the metadata functions take nothing and return an i64
        // (`dnc_abi_version` an i32, read through its own getter).
        unsafe {
            *self
                .lib
                .get::<unsafe extern "C" fn() -> i64>(name.as_bytes())
                .expect("symbol")
        }
    }

    pub fn abi_version(&self) -> i32 {
        // SAFETY: `int32_t dnc_abi_version(void)`.
        unsafe {
            let f = self
                .lib
                .get::<unsafe extern "C" fn() -> i32>(symbols::ABI_VERSION.as_bytes())
                .expect("dnc_abi_version");
            f()
        }
    }

    pub fn kernel_count(&self) -> i64 {
        // SAFETY: `int64_t dnc_kernel_count(void)`; the library outlives the call.
        unsafe { (self.get_i64(symbols::KERNEL_COUNT))() }
    }

    pub fn kernel_tasks(&self, index: i64) -> i64 {
        // SAFETY: `int64_t dnc_kernel_tasks(int64_t)`, index checked by the callee.
        unsafe {
            let f = self
                .lib
                .get::<unsafe extern "C" fn(i64) -> i64>(symbols::KERNEL_TASKS.as_bytes())
                .expect("dnc_kernel_tasks");
            f(index)
        }
    }
}
