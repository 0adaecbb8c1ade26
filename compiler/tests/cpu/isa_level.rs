//! The code of a named CPU model uses the instructions of its x86-64 level only (plus bf16 and
//! AMX where its precision asks for them): exactly the extensions the artefact records and the
//! runtime checks before it picks a variant. LLVM compiling for `znver5` itself put GFNI
//! instructions (`vgf2p8affineqb`, in a vectorised loop of a pointer table) into DenseNet
//! code, which a multi-CPU artefact would then have run on an AVX-512 Xeon without GFNI
//! (Skylake-SP, Cascade Lake): an illegal instruction instead of its other variant. Reads the
//! assembly, so it needs no particular host.

use crate::support::assembly;
use compiler::backend::precision::Precision;

/// Mnemonic prefixes of extensions beyond AVX-512 F/CD/BW/DQ/VL (GFNI, VBMI, VBMI2, BITALG,
/// VPOPCNTDQ, IFMA, VNNI, VAES, VPCLMULQDQ, VP2INTERSECT, FP16) and of AVX512_BF16.
const BEYOND_V4: &[&str] = &[
    "vgf2p8",
    "vpermb",
    "vpermi2b",
    "vpermt2b",
    "vpmultishiftqb",
    "vpcompressb",
    "vpcompressw",
    "vpexpandb",
    "vpexpandw",
    "vpshld",
    "vpshrd",
    "vpopcnt",
    "vpshufbitqmb",
    "vpmadd52",
    "vpdpbusd",
    "vpdpwssd",
    "vaesenc",
    "vaesdec",
    "vpclmulqdq",
    "vp2intersect",
    "vfmaddcph",
    "vaddph",
];
const BF16: &[&str] = &["vdpbf16ps", "vcvtneps2bf16", "vcvtne2ps2bf16"];

/// The instructions of `asm` whose mnemonic starts with one of `prefixes`.
fn uses<'a>(asm: &'a str, prefixes: &[&str]) -> Vec<&'a str> {
    asm.lines()
        .map(str::trim)
        .filter(|l| {
            let mnemonic = l.split_whitespace().next().unwrap_or("");
            prefixes.iter().any(|p| mnemonic.starts_with(p))
        })
        .collect()
}

#[test]
fn named_avx512_models_use_the_v4_level_only() {
    for cpu in ["znver4", "znver5", "sapphirerapids", "icelake-server"] {
        let asm = assembly("densenet121", 56, cpu, Precision::Fp32);
        assert!(asm.contains("zmm"), "{cpu}: no AVX-512 code");
        let beyond = uses(&asm, &[BEYOND_V4, BF16].concat());
        assert!(beyond.is_empty(), "{cpu} fp32 uses {beyond:?}");
    }
    let asm = assembly("densenet121", 56, "znver4", Precision::Bf16);
    assert!(
        !uses(&asm, &["vdpbf16ps"]).is_empty(),
        "znver4 bf16: no vdpbf16ps"
    );
    let beyond = uses(&asm, BEYOND_V4);
    assert!(beyond.is_empty(), "znver4 bf16 uses {beyond:?}");
}

#[test]
fn named_avx2_models_use_no_avx512() {
    for cpu in ["znver3", "skylake", "alderlake", "knl"] {
        let asm = assembly("densenet-bc-100", 32, cpu, Precision::Fp32);
        assert!(asm.contains("vfmadd"), "{cpu}: no FMA");
        assert!(
            !asm.contains("zmm") && !asm.contains("{%k"),
            "{cpu} uses AVX-512"
        );
    }
}
