//! The f32 AVX-512 micro-kernels bring the next kernel's weights into the L2 while they
//! multiply (`env::Env::next`): one `prefetcht1` per reduction step. The AVX2 and bf16 ones
//! do not, where the instruction cost more than it hid (`env::prefetches_next`). Those of the
//! packing GEMMs (the bottlenecks and transitions) also bring in the input rows their task's
//! thread packs next (`env::Env::next_input`, `ConvPlan::prefetch_input`). Reads the assembly
//! and the IR of a whole DenseNet-BC-100, so it needs no particular host.

use crate::support::{assembly, llvm_ir};
use compiler::backend::precision::Precision;

/// Each micro-kernel (`dnc_uk*`) of DenseNet-BC-100 at batch 1 with its `prefetcht1` count.
fn micro_kernel_l2_prefetches(cpu: &str, precision: Precision) -> Vec<(String, usize)> {
    let asm = assembly("densenet-bc-100", 32, cpu, precision);
    let mut out: Vec<(String, usize)> = Vec::new();
    for line in asm.lines() {
        if let Some(name) = line
            .strip_suffix(':')
            .filter(|l| !l.starts_with(['.', ' ', '\t']))
        {
            out.push((name.to_owned(), 0));
        } else if line.trim_start().starts_with("prefetcht1") {
            if let Some(last) = out.last_mut() {
                last.1 += 1;
            }
        }
    }
    out.retain(|(name, _)| name.starts_with("dnc_uk"));
    out
}

#[test]
fn avx512_f32_micro_kernels_prefetch_the_next_kernels_weights() {
    let uks = micro_kernel_l2_prefetches("x86-64-v4", Precision::Fp32);
    assert!(!uks.is_empty(), "no micro-kernel in the assembly");
    for (name, prefetches) in &uks {
        assert!(
            *prefetches > 0,
            "{name} prefetches nothing into the L2: {uks:?}"
        );
    }
}

#[test]
fn avx2_and_bf16_micro_kernels_do_not() {
    for (cpu, precision) in [
        ("x86-64-v3", Precision::Fp32),
        ("x86-64-v4", Precision::Bf16),
    ] {
        let uks = micro_kernel_l2_prefetches(cpu, precision);
        assert!(!uks.is_empty(), "{cpu}: no micro-kernel in the assembly");
        assert!(
            uks.iter().all(|(_, n)| *n == 0),
            "{cpu} {precision:?}: {uks:?}"
        );
    }
}

/// A function of the IR before optimisation: its name, the `dnc_*` functions it calls, and
/// whether it prefetches from its `next_input` parameter (a micro-kernel's tenth, `%9`) and
/// from its `next` one (the ninth, `%8`).
struct Function {
    name: String,
    calls: Vec<String>,
    prefetches_input: bool,
    prefetches_next: bool,
}

/// Every function of DenseNet-BC-100 at `batch`.
fn ir_functions(cpu: &str, batch: usize) -> Vec<Function> {
    let ir = llvm_ir("densenet-bc-100", [32, batch], cpu, Precision::Fp32);
    let mut out: Vec<Function> = Vec::new();
    for line in ir.lines() {
        if let Some(name) = line
            .strip_prefix("define ")
            .and_then(|l| l.split('@').nth(1))
            .and_then(|l| l.split('(').next())
        {
            out.push(Function {
                name: name.to_owned(),
                calls: Vec::new(),
                prefetches_input: false,
                prefetches_next: false,
            });
        } else if let Some(f) = out.last_mut() {
            if let Some(callee) = line
                .split("call void @")
                .nth(1)
                .and_then(|l| l.split('(').next())
                .filter(|c| c.starts_with("dnc_"))
            {
                f.calls.push(callee.to_owned());
            }
            f.prefetches_input |= line.contains("getelementptr i8, ptr %9,");
            f.prefetches_next |= line.contains("getelementptr i8, ptr %8,");
        }
    }
    out
}

/// [`ir_functions`] as (name, calls, prefetches the next input rows).
fn functions(cpu: &str, batch: usize) -> Vec<(String, Vec<String>, bool)> {
    ir_functions(cpu, batch)
        .into_iter()
        .map(|f| (f.name, f.calls, f.prefetches_input))
        .collect()
}

#[test]
fn avx512_bottleneck_micro_kernels_prefetch_the_next_tasks_input_rows() {
    bottleneck_micro_kernels_prefetch_input_rows(1);
    let avx2 = functions("x86-64-v3", 1);
    assert!(
        avx2.iter().any(|(n, ..)| n.starts_with("dnc_uk")),
        "{avx2:?}"
    );
    assert!(avx2.iter().all(|(_, _, p)| !p), "{avx2:?}");
}

/// At batch 64 BC-100's dense blocks run image group by image group (`schedule.rs`), where
/// the kernels still prefetch the input rows of their next task and the weights of the kernel
/// after them (`entry::runs_after`).
#[test]
fn batch_tiled_bottlenecks_prefetch_the_next_tasks_input_rows_too() {
    // Batch-tiled: the task functions read the image group they run from the context.
    let ir = llvm_ir("densenet-bc-100", [32, 64], "x86-64-v4", Precision::Fp32);
    assert!(ir.contains("%image0 = load i64"), "not batch-tiled");
    bottleneck_micro_kernels_prefetch_input_rows(64);
}

#[test]
fn batch_tiled_micro_kernels_prefetch_the_next_kernels_weights() {
    let fns = ir_functions("x86-64-v4", 64);
    let uks: Vec<&Function> = fns
        .iter()
        .filter(|f| f.name.starts_with("dnc_uk"))
        .collect();
    assert!(!uks.is_empty(), "no micro-kernel");
    for uk in uks {
        assert!(uk.prefetches_next, "{} prefetches no weights", uk.name);
    }
}

fn bottleneck_micro_kernels_prefetch_input_rows(batch: usize) {
    let fns = functions("x86-64-v4", batch);
    let calls = |name: &str| -> Vec<String> {
        let f = fns.iter().find(|(n, ..)| n == name);
        f.map(|(_, c, _)| c.clone()).unwrap_or_default()
    };
    let prefetches = |name: &str| fns.iter().any(|(n, _, p)| n == name && *p);
    // Every bottleneck (`denselayer*_conv1`, a 1x1 GEMM packing its BatchNorm+ReLU input in
    // pixel-block tasks) calls micro-kernels that do.
    let bottlenecks: Vec<_> = fns
        .iter()
        .filter(|(n, ..)| n.starts_with("dnc_k") && n.ends_with("_conv1"))
        .collect();
    assert_eq!(bottlenecks.len(), 48, "{fns:?}");
    for (kernel, bodies, _) in bottlenecks {
        let uks: Vec<String> = bodies.iter().flat_map(|b| calls(b)).collect();
        let uks: Vec<&String> = uks.iter().filter(|u| u.starts_with("dnc_uk")).collect();
        assert!(!uks.is_empty(), "{kernel}: {bodies:?}");
        for uk in uks {
            assert!(
                prefetches(uk),
                "{kernel}: {uk} does not prefetch input rows"
            );
        }
    }
    // No micro-kernel that only direct or Winograd bodies call does.
    for (name, ..) in fns.iter().filter(|(n, ..)| n.starts_with("dnc_uk")) {
        let gemm = fns
            .iter()
            .any(|(b, c, _)| b.ends_with("_gemm") && c.contains(name));
        assert!(gemm || !prefetches(name), "{name}");
    }
}
