//! Throughput of DenseNet-shaped CPU kernels (ignored by default: a
//! measurement, not a check). Run with
//!
//! ```text
//! cargo test -p compiler --test cpu kernels_bench:: -- --ignored --nocapture
//! ```
//!
//! The generated code is optimised by LLVM at O3 whatever the Rust profile.
//! `DNC_BENCH_ONLY=TEXT` times only the shapes whose name contains TEXT.
//! `DNC_BENCH_ASM=DIR` writes each kernel's assembly there;
//! `DNC_BENCH_ARCH=NAME` and `DNC_BENCH_BATCH=N` choose the network timed
//! after the pass pipeline (default `densenet121`, batch 1);
//! `DNC_BENCH_IR=DIR` writes its LLVM module before and after optimisation
//! and the shared object.

use crate::support::{Arena, Loaded, Pfor, Rng};
use compiler::backend::cpu::{self, CpuOptions};
use compiler::backend::graph::kernels_of;
use compiler::backend::kernel::{Affine, ConvKernel, KernelDesc, KernelOp, View};
use compiler::builder::{build, ConfigOverrides, DenseNetConfig};
use compiler::passes::optimize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

struct Shape {
    name: &'static str,
    hw: usize,
    ic: usize,
    oc: usize,
    k: usize,
    stride: usize,
    /// Channels per pixel of the block buffer the views live in.
    block: usize,
    prologue: bool,
}

fn desc(s: &Shape, rng: &mut Rng) -> KernelDesc {
    let pad = s.k / 2;
    let weight = rng.vec(s.oc * s.ic * s.k * s.k, -0.05, 0.05);
    let affine = |rng: &mut Rng| Affine {
        scale: Arc::new(rng.vec(s.ic, 0.5, 1.5)),
        shift: Arc::new(rng.vec(s.ic, -0.2, 0.5)),
        relu: true,
    };
    let input = View::dense(0, 1, s.hw, s.hw, s.block).slice(0, s.ic);
    let out_buf = input.end_bytes().div_ceil(64) * 64;
    let out_hw = (s.hw + 2 * pad - s.k) / s.stride + 1;
    let output = if s.k == 1 || s.stride > 1 {
        View::dense(out_buf, 1, out_hw, out_hw, s.oc)
    } else {
        // A 3x3 growth conv writes its slice of the block buffer.
        View {
            offset: 0,
            channels: s.oc,
            channel_offset: s.ic,
            ..input
        }
    };
    KernelDesc {
        name: s.name.into(),
        op: KernelOp::Conv(ConvKernel {
            out_channels: s.oc,
            kernel: [s.k, s.k],
            stride: [s.stride, s.stride],
            padding: [pad, pad],
            weight: Arc::new(weight),
            bias: Some(Arc::new(rng.vec(s.oc, -0.1, 0.1))),
            prologue: s.prologue.then(|| affine(rng)),
            relu: true,
        }),
        input,
        output,
        output_to_next_only: false,
    }
}

fn median_ms(mut f: impl FnMut(), iters: usize) -> f64 {
    for _ in 0..3 {
        f();
    }
    let mut t: Vec<f64> = (0..iters)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

#[test]
#[ignore = "measurement; run with --ignored --nocapture"]
fn densenet_conv_throughput() {
    // (name, spatial, in, out, kernel, stride, block-buffer channels, prologue)
    let shapes = [
        ("1x1_28x28_512to128", 28, 512, 128, 1, 1, 512, true),
        ("3x3_28x28_128to32", 28, 128, 32, 3, 1, 512, false),
        ("1x1_56x56_256to128", 56, 256, 128, 1, 1, 256, true),
        ("3x3_56x56_128to32", 56, 128, 32, 3, 1, 256, false),
        ("3x3_14x14_128to32", 14, 128, 32, 3, 1, 1024, false),
        ("3x3_7x7_128to32", 7, 128, 32, 3, 1, 1024, false),
        ("1x1_7x7_1024to128", 7, 1024, 128, 1, 1, 1024, true),
        ("1x1_7x7_512to128", 7, 512, 128, 1, 1, 1024, true),
        ("7x7s2_224_3to64", 224, 3, 64, 7, 2, 3, false),
        ("1x1_14x14_1024to128", 14, 1024, 128, 1, 1, 1024, true),
        // DenseNet-BC-100's bottlenecks (C -> 48 in a 216-channel block):
        // 32x32 at batch 1, and 256x256 for the 65536 pixels of batch 64.
        ("1x1_32x32_24to48", 32, 24, 48, 1, 1, 216, true),
        ("1x1_32x32_120to48", 32, 120, 48, 1, 1, 216, true),
        ("1x1_32x32_216to48", 32, 216, 48, 1, 1, 216, true),
        ("1x1_256x256_24to48", 256, 24, 48, 1, 1, 216, true),
        ("1x1_256x256_120to48", 256, 120, 48, 1, 1, 216, true),
        ("1x1_256x256_216to48", 256, 216, 48, 1, 1, 216, true),
    ]
    .map(|(name, hw, ic, oc, k, stride, block, prologue)| Shape {
        name,
        hw,
        ic,
        oc,
        k,
        stride,
        block,
        prologue,
    });
    let asm_dir = std::env::var_os("DNC_BENCH_ASM");
    let mut rng = Rng::new(7);
    println!(
        "{:<22} {:>8} {:>6} {:>10} {:>10} {:>10} {:>10}",
        "kernel", "MFLOP", "tasks", "1T ms", "1T GF/s", "2T ms", "2T GF/s"
    );
    let only = std::env::var("DNC_BENCH_ONLY").unwrap_or_default();
    for s in shapes.iter().filter(|s| s.name.contains(only.as_str())) {
        let d = desc(s, &mut rng);
        let opts = CpuOptions {
            emit_asm: asm_dir.is_some(),
            ..CpuOptions::default()
        };
        let compiled = cpu::compile(std::slice::from_ref(&d), &opts).expect("compile");
        if let (Some(dir), Some(asm)) = (&asm_dir, &compiled.asm) {
            std::fs::create_dir_all(dir).expect("asm dir");
            std::fs::write(std::path::Path::new(dir).join(format!("{}.s", s.name)), asm)
                .expect("write asm");
        }
        let lib = Loaded::new(&compiled);
        let mut arena = Arena::new(compiled.arena_bytes);
        let flop = 2.0 * d.macs() as f64;
        let iters = (2e9 / flop).clamp(10.0, 400.0) as usize;
        let t1 = median_ms(|| lib.run(&mut arena, Pfor::Sequential), iters);
        let t2 = median_ms(|| lib.run(&mut arena, Pfor::Pool2), iters);
        println!(
            "{:<22} {:>8.1} {:>6} {:>10.3} {:>10.1} {:>10.3} {:>10.1}",
            s.name,
            flop / 1e6,
            compiled.kernels[0].tasks,
            t1,
            flop / t1 / 1e6,
            t2,
            flop / t2 / 1e6
        );
    }
}

/// User + system CPU time of this process in seconds (Linux; 0 elsewhere):
/// compile time that the other jobs on a shared machine do not inflate.
fn process_cpu_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the line, in clock ticks (100 per second).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|x| x.parse().ok())
        .collect();
    f.iter().sum::<f64>() / 100.0
}

/// The kernel class a DenseNet kernel's time is reported under.
fn class(k: &KernelDesc) -> String {
    match &k.op {
        KernelOp::Conv(c) if k.name.contains("transition") => {
            format!("transition conv {}x{}", c.kernel[0], c.kernel[1])
        }
        KernelOp::Conv(c) => format!("conv {}x{}", c.kernel[0], c.kernel[1]),
        op => op.mnemonic().to_string(),
    }
}

#[test]
#[ignore = "measurement; run with --ignored --nocapture"]
fn densenet_kernel_chain() {
    let batch = std::env::var("DNC_BENCH_BATCH")
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or(1);
    // The real pipeline: the preset (torchvision's DenseNet-121 by default),
    // random weights, every pass and the memory plan, then the backend's
    // graph mapping.
    let arch = std::env::var("DNC_BENCH_ARCH").unwrap_or_else(|_| "densenet121".into());
    let cfg = DenseNetConfig::resolve(Some(&arch), &ConfigOverrides::default()).expect("config");
    let mut g = build(&cfg, batch).expect("build");
    compiler::weights::randomize(&mut g, 1);
    optimize(&mut g, false).expect("pipeline");
    let net = kernels_of(&g).expect("kernels");
    let (start, cpu0) = (Instant::now(), process_cpu_s());
    let opts = CpuOptions {
        keep_ir: std::env::var_os("DNC_BENCH_IR").is_some(),
        ..CpuOptions::default()
    };
    let compiled = cpu::compile(&net.kernels, &opts).expect("compile");
    let compile_s = start.elapsed().as_secs_f64();
    let compile_cpu_s = process_cpu_s() - cpu0;
    if let Some(dir) = std::env::var_os("DNC_BENCH_IR") {
        let dir = std::path::Path::new(&dir);
        std::fs::create_dir_all(dir).expect("ir dir");
        std::fs::write(dir.join("densenet121.before.ll"), &compiled.llvm_ir_before)
            .expect("write ir");
        std::fs::write(dir.join("densenet121.after.ll"), &compiled.llvm_ir_after)
            .expect("write ir");
        std::fs::write(dir.join("densenet121.so"), &compiled.shared_object).expect("write so");
    }
    let lib = Loaded::new(&compiled);
    let mut arena = Arena::new(net.arena_bytes);
    let flop: f64 = net.kernels.iter().map(|k| 2.0 * k.macs() as f64).sum();
    println!(
        "{arch} b{batch}: {} kernels, compile {compile_s:.2} s ({compile_cpu_s:.2} s CPU), .so {} KiB, weights {:.1} MiB, arena {:.1} MiB, {:.2} GFLOP",
        net.kernels.len(),
        compiled.shared_object.len() / 1024,
        compiled.packed_weights.len() as f64 / 1_048_576.0,
        compiled.arena_bytes as f64 / 1_048_576.0,
        flop / 1e9
    );
    let iters = if batch > 2 { 5 } else { 15 };
    let t1 = median_ms(|| lib.run(&mut arena, Pfor::Sequential), iters);
    let t2 = median_ms(|| lib.run(&mut arena, Pfor::Pool2), iters);
    println!(
        "dnc_run: 1 thread {t1:.2} ms ({:.1} GFLOP/s), 2 threads {t2:.2} ms ({:.1} GFLOP/s)",
        flop / t1 / 1e6,
        flop / t2 / 1e6
    );

    // Kernel by kernel in schedule order, as in a real run (caches as the
    // chain leaves them), median per kernel over the passes.
    let mut times = vec![Vec::new(); net.kernels.len()];
    for _ in 0..iters {
        for (i, t) in times.iter_mut().enumerate() {
            let s = Instant::now();
            lib.run_kernel(&mut arena, i as i64);
            t.push(s.elapsed().as_secs_f64() * 1e3);
        }
    }
    let mut by_class: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for (k, t) in net.kernels.iter().zip(&mut times) {
        t.sort_by(f64::total_cmp);
        let e = by_class.entry(class(k)).or_default();
        e.0 += t[t.len() / 2];
        e.1 += 2.0 * k.macs() as f64;
    }
    let total: f64 = by_class.values().map(|v| v.0).sum();
    println!(
        "{:<22} {:>9} {:>8} {:>8} {:>7}",
        "class (1 thread)", "ms", "GFLOP", "GFLOP/s", "share"
    );
    for (c, (ms, f)) in &by_class {
        println!(
            "{c:<22} {ms:>9.2} {:>8.3} {:>8.1} {:>6.1}%",
            f / 1e9,
            f / ms / 1e6,
            100.0 * ms / total
        );
    }
}
