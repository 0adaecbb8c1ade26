//! The f32 AVX-512 micro-kernels bring the next kernel's weights into the L2 while they
//! multiply (`env::NextWeights`): one `prefetcht1` per reduction step. The AVX2 and bf16 ones
//! do not, where the instruction cost more than it hid (`env::prefetches_next`). Reads the
//! assembly of a whole DenseNet-BC-100, so it needs no particular host.

use crate::support::assembly;
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
