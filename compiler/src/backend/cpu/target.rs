//! The LLVM target machine: x86-64, the host CPU (`native`) or a named LLVM
//! CPU, PIC, optimisation level O3 by default.

use super::isa::VectorIsa;
use crate::backend::precision::Precision;
use crate::backend::BackendError;
use inkwell::targets::{
    CodeModel, InitializationConfig, RelocMode, Target, TargetMachine, TargetTriple,
};
use inkwell::OptimizationLevel;

/// The x86 CPU names LLVM 19 accepts (`llc -march=x86-64 -mcpu=help`).
/// LLVM only warns on an unknown name and falls back to a generic CPU, so
/// the name is checked here to make a typo an error.
const X86_CPUS: &[&str] = &[
    "alderlake",
    "amdfam10",
    "arrowlake",
    "arrowlake-s",
    "arrowlake_s",
    "athlon",
    "athlon-4",
    "athlon-fx",
    "athlon-mp",
    "athlon-tbird",
    "athlon-xp",
    "athlon64",
    "athlon64-sse3",
    "atom",
    "atom_sse4_2",
    "atom_sse4_2_movbe",
    "barcelona",
    "bdver1",
    "bdver2",
    "bdver3",
    "bdver4",
    "bonnell",
    "broadwell",
    "btver1",
    "btver2",
    "c3",
    "c3-2",
    "cannonlake",
    "cascadelake",
    "clearwaterforest",
    "cooperlake",
    "core-avx-i",
    "core-avx2",
    "core2",
    "core_2_duo_sse4_1",
    "core_2_duo_ssse3",
    "core_2nd_gen_avx",
    "core_3rd_gen_avx",
    "core_4th_gen_avx",
    "core_4th_gen_avx_tsx",
    "core_5th_gen_avx",
    "core_5th_gen_avx_tsx",
    "core_aes_pclmulqdq",
    "core_i7_sse4_2",
    "corei7",
    "corei7-avx",
    "emeraldrapids",
    "generic",
    "geode",
    "goldmont",
    "goldmont-plus",
    "goldmont_plus",
    "gracemont",
    "grandridge",
    "graniterapids",
    "graniterapids-d",
    "graniterapids_d",
    "haswell",
    "i386",
    "i486",
    "i586",
    "i686",
    "icelake-client",
    "icelake-server",
    "icelake_client",
    "icelake_server",
    "ivybridge",
    "k6",
    "k6-2",
    "k6-3",
    "k8",
    "k8-sse3",
    "knl",
    "knm",
    "lakemont",
    "lunarlake",
    "meteorlake",
    "mic_avx512",
    "nehalem",
    "nocona",
    "opteron",
    "opteron-sse3",
    "pantherlake",
    "penryn",
    "pentium",
    "pentium-m",
    "pentium-mmx",
    "pentium2",
    "pentium3",
    "pentium3m",
    "pentium4",
    "pentium4m",
    "pentium_4",
    "pentium_4_sse3",
    "pentium_ii",
    "pentium_iii",
    "pentium_iii_no_xmm_regs",
    "pentium_m",
    "pentium_mmx",
    "pentium_pro",
    "pentiumpro",
    "prescott",
    "raptorlake",
    "rocketlake",
    "sandybridge",
    "sapphirerapids",
    "sierraforest",
    "silvermont",
    "skx",
    "skylake",
    "skylake-avx512",
    "skylake_avx512",
    "slm",
    "tigerlake",
    "tremont",
    "westmere",
    "winchip-c6",
    "winchip2",
    "x86-64",
    "x86-64-v2",
    "x86-64-v3",
    "x86-64-v4",
    "yonah",
    "znver1",
    "znver2",
    "znver3",
    "znver4",
    "znver5",
];

/// The CPUs of [`X86_CPUS`] with AVX-512 F/VL/BW/DQ (LLVM's `X86.td`; `knl`/`knm` lack VL/BW
/// and keep the AVX2 kernels).
const AVX512_CPUS: &[&str] = &[
    "cannonlake",
    "cascadelake",
    "cooperlake",
    "emeraldrapids",
    "graniterapids",
    "graniterapids-d",
    "graniterapids_d",
    "icelake-client",
    "icelake-server",
    "icelake_client",
    "icelake_server",
    "rocketlake",
    "sapphirerapids",
    "skx",
    "skylake-avx512",
    "skylake_avx512",
    "tigerlake",
    "x86-64-v4",
    "znver4",
    "znver5",
];

/// The named CPUs with AVX512_BF16 (`vdpbf16ps`), for `--precision bf16`.
const BF16_CPUS: &[&str] = &[
    "cooperlake",
    "sapphirerapids",
    "emeraldrapids",
    "graniterapids",
    "graniterapids-d",
    "graniterapids_d",
    "znver4",
    "znver5",
];

/// The named CPUs with AMX-BF16 (`tdpbf16ps` on the tile unit), whose bf16 convolutions run
/// on the tiles ([`VectorIsa::amx`]).
const AMX_CPUS: &[&str] = &[
    "sapphirerapids",
    "emeraldrapids",
    "graniterapids",
    "graniterapids-d",
    "graniterapids_d",
];

/// A resolved code-generation target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetInfo {
    pub triple: String,
    /// The LLVM CPU name (the host's for `native`).
    pub cpu: String,
    /// The LLVM feature string (the host's for `native`, else empty: the CPU
    /// name implies its features).
    pub features: String,
    /// The vector ISA the kernels are written for: AVX-512 where the CPU has it.
    pub isa: VectorIsa,
}

/// Whether an LLVM feature string enables `feature` (`+avx512f`).
fn has_feature(features: &str, feature: &str) -> bool {
    features
        .split(',')
        .any(|f| f.strip_prefix('+') == Some(feature))
}

/// The vector ISA of the host (its feature string) or of a named CPU.
fn isa_of(cpu: &str, features: &str) -> VectorIsa {
    let avx512 = if features.is_empty() {
        AVX512_CPUS.contains(&cpu)
    } else {
        ["avx512f", "avx512vl", "avx512bw", "avx512dq"]
            .iter()
            .all(|f| has_feature(features, f))
    };
    if avx512 {
        VectorIsa::AVX512
    } else {
        VectorIsa::AVX2
    }
}

/// Resolve `native` or an LLVM CPU name.
pub fn resolve(cpu: &str) -> Result<TargetInfo, BackendError> {
    init()?;
    let triple = TargetMachine::get_default_triple();
    let triple = triple
        .as_str()
        .to_str()
        .map_err(|e| BackendError::Target(e.to_string()))?
        .to_string();
    if !triple.starts_with("x86_64") {
        return Err(BackendError::Target(format!(
            "the CPU backend targets x86-64, this host is `{triple}`"
        )));
    }
    if cpu == "native" {
        let name = TargetMachine::get_host_cpu_name().to_string();
        let features = TargetMachine::get_host_cpu_features().to_string();
        let isa = isa_of(&name, &features);
        return Ok(TargetInfo {
            triple,
            cpu: name,
            features,
            isa,
        });
    }
    if !X86_CPUS.contains(&cpu) {
        return Err(BackendError::UnknownCpu(cpu.to_string()));
    }
    Ok(TargetInfo {
        triple,
        cpu: cpu.to_string(),
        features: String::new(),
        isa: isa_of(cpu, ""),
    })
}

/// Makes `info` compute its convolutions in `precision`: bf16 needs AVX512_BF16, which the
/// host (for `native`) or the named CPU must have; `x86-64-v4` gets it added (the artefact
/// then requires it, and the runtime checks it before loading the code).
pub fn set_precision(info: &mut TargetInfo, precision: Precision) -> Result<(), BackendError> {
    match precision {
        Precision::Fp32 => return Ok(()),
        Precision::Bf16 => {}
        other => {
            return Err(BackendError::Target(format!(
                "--precision {other} has no CPU kernels (the CPU computes fp32, or bf16 on CPUs \
                 with AVX512_BF16)"
            )))
        }
    }
    let has = if info.features.is_empty() {
        BF16_CPUS.contains(&info.cpu.as_str()) || info.cpu == "x86-64-v4"
    } else {
        has_feature(&info.features, "avx512bf16")
    };
    if !has {
        let which = if info.features.is_empty() {
            format!("CPU `{}`", info.cpu)
        } else {
            format!("this host (`{}`)", info.cpu)
        };
        return Err(BackendError::Target(format!(
            "--precision bf16 needs AVX512_BF16 (vdpbf16ps), which {which} lacks: compile for \
             a CPU that has it (--cpu znver4, znver5, sapphirerapids, x86-64-v4, …) or use \
             --precision fp32"
        )));
    }
    if info.cpu == "x86-64-v4" {
        // The level does not include AVX512_BF16: LLVM must be told (the other named CPUs
        // imply it; the artefact records it for the runtime's check either way).
        info.features = "+avx512bf16".into();
    }
    info.isa = if has_amx(info) && std::env::var("DNC_AMX").as_deref() != Ok("0") {
        info.isa.with_amx()
    } else {
        info.isa.with_bf16()
    };
    Ok(())
}

/// Whether the target has the AMX tile unit with bf16 (AMX-TILE and AMX-BF16): the host's
/// features for `native`, else the named CPU's.
fn has_amx(info: &TargetInfo) -> bool {
    if info.features.is_empty() || info.features == "+avx512bf16" {
        AMX_CPUS.contains(&info.cpu.as_str())
    } else {
        has_feature(&info.features, "amx-tile") && has_feature(&info.features, "amx-bf16")
    }
}

fn init() -> Result<(), BackendError> {
    Target::initialize_x86(&InitializationConfig::default());
    Ok(())
}

/// The target machine for `info` (position-independent, for a shared object).
pub fn machine(info: &TargetInfo, opt_level: u8) -> Result<TargetMachine, BackendError> {
    let triple = TargetTriple::create(&info.triple);
    let target = Target::from_triple(&triple).map_err(|e| BackendError::Target(e.to_string()))?;
    let level = match opt_level {
        0 => OptimizationLevel::None,
        1 => OptimizationLevel::Less,
        2 => OptimizationLevel::Default,
        _ => OptimizationLevel::Aggressive,
    };
    target
        .create_target_machine(
            &triple,
            &info.cpu,
            &info.features,
            level,
            RelocMode::PIC,
            CodeModel::Default,
        )
        .ok_or_else(|| {
            BackendError::Target(format!(
                "LLVM could not create a target machine for {} / {}",
                info.triple, info.cpu
            ))
        })
}
