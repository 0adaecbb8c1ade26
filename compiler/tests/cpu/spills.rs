//! No micro-kernel's reduction loop keeps a vector on the stack. A loop that does spills an
//! accumulator, whose FMA then waits on a store-to-load round trip every step: DenseNet-121's
//! 14x32 zmm tile once did, in every loop, and ran 5% slower for it
//! (`microkernel::unroll_by_two`). Reads the assembly LLVM emits for a whole DenseNet-121 and
//! DenseNet-BC-100 per vector ISA, precision and scheduling model (generic `x86-64-vN`, Zen 3,
//! Zen 4, Sapphire Rapids), so it needs no particular host.

use crate::support::assembly;
use compiler::backend::precision::Precision;

/// `(function, loop label, lines)` of every loop in a micro-kernel (`dnc_uk*`) of `asm` that
/// reads or writes a vector register from or to the stack: a loop is the lines from a label
/// to a later branch back to it.
fn stack_vectors_in_loops(asm: &str) -> Vec<(String, String, Vec<String>)> {
    let mut found = Vec::new();
    let mut function = String::new();
    let mut lines: Vec<&str> = Vec::new();
    let mut check = |function: &str, lines: &[&str]| {
        if !function.starts_with("dnc_uk") {
            return;
        }
        for (end, line) in lines.iter().enumerate() {
            let Some(target) = line
                .trim()
                .strip_prefix('j')
                .and_then(|j| j.split_whitespace().nth(1))
            else {
                continue;
            };
            let Some(start) = lines[..end]
                .iter()
                .position(|l| l.trim() == format!("{target}:"))
            else {
                continue;
            };
            let bad: Vec<String> = lines[start..end]
                .iter()
                .filter(|l| l.contains("mm") && l.contains("(%rsp)"))
                .map(|l| l.trim().to_owned())
                .collect();
            if !bad.is_empty() {
                found.push((function.to_owned(), target.to_owned(), bad));
            }
        }
    };
    for line in asm.lines() {
        if !line.starts_with(char::is_whitespace) && !line.starts_with('.') {
            if let Some(name) = line.strip_suffix(':') {
                check(&function, &lines);
                function = name.to_owned();
                lines.clear();
                continue;
            }
        }
        lines.push(line);
    }
    check(&function, &lines);
    found
}

#[test]
fn micro_kernel_loops_keep_every_vector_in_registers() {
    for (arch, image) in [("densenet121", 224), ("densenet-bc-100", 32)] {
        for (cpu, precision) in [
            ("x86-64-v4", Precision::Fp32),
            ("x86-64-v3", Precision::Fp32),
            ("znver4", Precision::Bf16),
            ("x86-64-v4", Precision::Bf16),
            ("sapphirerapids", Precision::Fp32),
            ("znver3", Precision::Fp32),
        ] {
            let asm = assembly(arch, image, cpu, precision);
            let kernels = asm.lines().filter(|l| l.starts_with("dnc_uk")).count();
            assert!(kernels > 0, "{arch} {cpu}: no micro-kernel in the assembly");
            let spills = stack_vectors_in_loops(&asm);
            assert!(
                spills.is_empty(),
                "{arch} {cpu} {precision:?}: {} micro-kernel loops use the stack, first {:?}",
                spills.len(),
                spills.first()
            );
        }
    }
}

#[test]
fn the_loop_scan_finds_a_stack_access() {
    let asm = "dnc_uk0_14x32:\n\tmovq %rdi, %rax\n.LBB0_2:\n\tvmovups %zmm29, -16(%rsp)\n\t\
               vfmadd231ps %zmm1, %zmm2, %zmm3\n\tjl .LBB0_2\n\tretq\n\
               dnc_k0_x:\n.LBB1_1:\n\tvmovups %zmm1, (%rsp)\n\tjne .LBB1_1\n";
    let found = stack_vectors_in_loops(asm);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(
        (found[0].0.as_str(), found[0].1.as_str()),
        ("dnc_uk0_14x32", ".LBB0_2")
    );
}
