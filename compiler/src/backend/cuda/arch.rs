//! The NVPTX target machine: `nvptx64-nvidia-cuda`, a CUDA architecture
//! (`sm_80` by default) and the PTX ISA version it needs.

use crate::backend::BackendError;
use inkwell::targets::{
    CodeModel, InitializationConfig, RelocMode, Target, TargetMachine, TargetTriple,
};
use inkwell::OptimizationLevel;

/// The target triple of every module.
pub const TRIPLE: &str = "nvptx64-nvidia-cuda";

/// Supported architectures and the PTX ISA feature each is emitted with
/// (the oldest PTX version that knows the architecture, at least 7.0).
pub const ARCHES: &[(&str, &str)] = &[
    ("sm_80", "+ptx70"),
    ("sm_86", "+ptx71"),
    ("sm_87", "+ptx74"),
    ("sm_89", "+ptx78"),
    ("sm_90", "+ptx78"),
    ("sm_90a", "+ptx80"),
];

/// The PTX feature string for `arch`, or a clear error naming the
/// supported ones.
pub fn ptx_feature(arch: &str) -> Result<&'static str, BackendError> {
    ARCHES
        .iter()
        .find(|(a, _)| *a == arch)
        .map(|(_, f)| *f)
        .ok_or_else(|| {
            let names: Vec<&str> = ARCHES.iter().map(|(a, _)| *a).collect();
            BackendError::Target(format!(
                "unknown CUDA architecture `{arch}` (supported: {})",
                names.join(", ")
            ))
        })
}

/// The target machine for `arch`.
pub fn machine(arch: &str, opt_level: u8) -> Result<TargetMachine, BackendError> {
    let features = ptx_feature(arch)?;
    Target::initialize_nvptx(&InitializationConfig::default());
    let triple = TargetTriple::create(TRIPLE);
    let target = Target::from_triple(&triple).map_err(|e| {
        BackendError::Target(format!(
            "the NVPTX target is not available in this LLVM build ({e}); \
             the CUDA backend needs an LLVM 19 with NVPTX (Debian's llvm-19-dev has it)"
        ))
    })?;
    let level = match opt_level {
        0 => OptimizationLevel::None,
        1 => OptimizationLevel::Less,
        2 => OptimizationLevel::Default,
        _ => OptimizationLevel::Aggressive,
    };
    target
        .create_target_machine(
            &triple,
            arch,
            features,
            level,
            RelocMode::Default,
            CodeModel::Default,
        )
        .ok_or_else(|| {
            BackendError::Target(format!(
                "LLVM could not create an NVPTX target machine for {arch} ({features})"
            ))
        })
}
