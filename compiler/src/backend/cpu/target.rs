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

/// The named CPUs (beyond [`AVX512_CPUS`]) with the whole `x86-64-v3` level: AVX2, FMA, BMI1/2,
/// F16C, LZCNT and MOVBE (LLVM's `X86.td`; `knl`/`knm` have it but not AVX-512 VL/BW).
const V3_CPUS: &[&str] = &[
    "alderlake",
    "arrowlake",
    "arrowlake-s",
    "arrowlake_s",
    "bdver4",
    "broadwell",
    "clearwaterforest",
    "core-avx2",
    "core_4th_gen_avx",
    "core_4th_gen_avx_tsx",
    "core_5th_gen_avx",
    "core_5th_gen_avx_tsx",
    "gracemont",
    "grandridge",
    "haswell",
    "knl",
    "knm",
    "lunarlake",
    "meteorlake",
    "mic_avx512",
    "pantherlake",
    "raptorlake",
    "sierraforest",
    "skylake",
    "znver1",
    "znver2",
    "znver3",
];

/// The names that are x86-64 levels themselves (`generic` is the baseline's): their code uses
/// the level's extensions, which the runtime knows by the name.
const LEVEL_NAMES: &[&str] = &["generic", "x86-64", "x86-64-v2", "x86-64-v3", "x86-64-v4"];

/// A resolved code-generation target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetInfo {
    pub triple: String,
    /// The LLVM CPU name (the host's for `native`), as the artefact records it.
    pub cpu: String,
    /// The LLVM feature string: the host's for `native`; else the extensions beyond the CPU
    /// (or level) name that the code uses, `+avx512bf16` and the AMX ones (empty for fp32).
    pub features: String,
    /// The vector ISA the kernels are written for: AVX-512 where the CPU has it.
    pub isa: VectorIsa,
    /// Whether this is the host (`native`): `features` are the host's.
    pub native: bool,
    /// For a named CPU model (`znver4`, `skylake`): the x86-64 level whose extensions its code
    /// uses (`x86-64-v4`, `x86-64-v3`). LLVM gets the level as its CPU and the model as its
    /// tuning (`tune-cpu`: scheduling, not instructions), so the code needs exactly what the
    /// artefact records and the runtime checks: a model's other extensions (GFNI, VBMI, …,
    /// which LLVM otherwise uses where it sees fit) would make a multi-CPU artefact pick code
    /// an older CPU of the same level cannot run. `None` for `native` and level names.
    pub level: Option<&'static str>,
}

impl TargetInfo {
    /// The CPU LLVM compiles for: the level of a named CPU model, else `cpu`.
    pub fn llvm_cpu(&self) -> &str {
        self.level.unwrap_or(&self.cpu)
    }

    /// The CPU LLVM tunes for when it is not [`TargetInfo::llvm_cpu`]: a named model's.
    pub fn tune_cpu(&self) -> Option<&str> {
        self.level.map(|_| self.cpu.as_str())
    }
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
            native: true,
            level: None,
        });
    }
    if !X86_CPUS.contains(&cpu) {
        return Err(BackendError::UnknownCpu(cpu.to_string()));
    }
    let level = if LEVEL_NAMES.contains(&cpu) {
        None
    } else if AVX512_CPUS.contains(&cpu) {
        Some("x86-64-v4")
    } else if V3_CPUS.contains(&cpu) {
        Some("x86-64-v3")
    } else {
        return Err(BackendError::Target(format!(
            "CPU `{cpu}` lacks AVX2 and FMA (x86-64-v3), which the CPU kernels of a named CPU \
             are written for: compile for the level it has (--cpu x86-64-v2 or x86-64) or for \
             native on it"
        )));
    };
    Ok(TargetInfo {
        triple,
        cpu: cpu.to_string(),
        features: String::new(),
        isa: isa_of(cpu, ""),
        native: false,
        level,
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
    let has = if info.native {
        has_feature(&info.features, "avx512bf16")
    } else {
        BF16_CPUS.contains(&info.cpu.as_str()) || info.cpu == "x86-64-v4"
    };
    if !has {
        let which = if info.native {
            format!("this host (`{}`)", info.cpu)
        } else {
            format!("CPU `{}`", info.cpu)
        };
        return Err(BackendError::Target(format!(
            "--precision bf16 needs AVX512_BF16 (vdpbf16ps), which {which} lacks: compile for \
             a CPU that has it (--cpu znver4, znver5, sapphirerapids, x86-64-v4, …) or use \
             --precision fp32"
        )));
    }
    let amx = has_amx(info) && std::env::var("DNC_AMX").as_deref() != Ok("0");
    if !info.native {
        // LLVM compiles a named CPU for its level (`TargetInfo::level`), which does not
        // include these: it must be told, and the artefact records them for the runtime.
        info.features = if amx {
            "+avx512bf16,+amx-tile,+amx-bf16"
        } else {
            "+avx512bf16"
        }
        .into();
    }
    info.isa = if amx {
        info.isa.with_amx()
    } else {
        info.isa.with_bf16()
    };
    Ok(())
}

/// Whether the target has the AMX tile unit with bf16 (AMX-TILE and AMX-BF16): the host's
/// features for `native`, else the named CPU's.
fn has_amx(info: &TargetInfo) -> bool {
    if info.native {
        has_feature(&info.features, "amx-tile") && has_feature(&info.features, "amx-bf16")
    } else {
        AMX_CPUS.contains(&info.cpu.as_str())
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
            info.llvm_cpu(),
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
