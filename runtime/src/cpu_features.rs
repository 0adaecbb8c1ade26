//! Checking, before the CPU code is loaded, that this CPU has the instruction-set extensions
//! the code was compiled for: an artefact built with `--cpu native` on an AVX-512 machine must
//! be an error on an AVX2 one, not an illegal-instruction crash.
//!
//! The requirements come from the manifest's `cpu.features` (an LLVM feature string such as
//! `+avx2,+fma,-avx512f`, recorded for `--cpu native`) and, for the x86-64 micro-architecture
//! levels, from `cpu.cpu` (`x86-64-v2`, `-v3`, `-v4`). Features this runtime cannot detect, and
//! other CPU names, are not checked.

/// The x86-64 micro-architecture levels and the extensions each one adds.
const LEVELS: [(&str, &[&str]); 3] = [
    (
        "x86-64-v2",
        &["sse3", "ssse3", "sse4.1", "sse4.2", "popcnt", "cmpxchg16b"],
    ),
    (
        "x86-64-v3",
        &[
            "avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "lzcnt", "movbe",
        ],
    ),
    (
        "x86-64-v4",
        &["avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"],
    ),
];

/// Whether this CPU has the extension named as LLVM names it; `None` if it cannot tell.
#[cfg(target_arch = "x86_64")]
fn host_has(feature: &str) -> Option<bool> {
    use std::arch::is_x86_feature_detected as has;
    Some(match feature {
        "sse3" => has!("sse3"),
        "ssse3" => has!("ssse3"),
        "sse4.1" => has!("sse4.1"),
        "sse4.2" => has!("sse4.2"),
        "popcnt" => has!("popcnt"),
        "cmpxchg16b" | "cx16" => has!("cmpxchg16b"),
        "avx" => has!("avx"),
        "avx2" => has!("avx2"),
        "bmi" | "bmi1" => has!("bmi1"),
        "bmi2" => has!("bmi2"),
        "f16c" => has!("f16c"),
        "fma" => has!("fma"),
        "lzcnt" => has!("lzcnt"),
        "movbe" => has!("movbe"),
        "avx512f" => has!("avx512f"),
        "avx512bw" => has!("avx512bw"),
        "avx512cd" => has!("avx512cd"),
        "avx512dq" => has!("avx512dq"),
        "avx512vl" => has!("avx512vl"),
        "avx512vnni" => has!("avx512vnni"),
        "avx512bf16" => has!("avx512bf16"),
        "avx512fp16" => has!("avx512fp16"),
        "avxvnni" => has!("avxvnni"),
        // Extensions LLVM's code generator uses on its own where the CPU has them (GFNI for
        // byte arithmetic, VBMI for byte shuffles, …). Those only intrinsics reach (AES, SHA,
        // XSAVE, …) are not checked: the code has none, and a check would only refuse it.
        "avx512vbmi" => has!("avx512vbmi"),
        "avx512vbmi2" => has!("avx512vbmi2"),
        "avx512bitalg" => has!("avx512bitalg"),
        "avx512vpopcntdq" => has!("avx512vpopcntdq"),
        "avx512ifma" => has!("avx512ifma"),
        "gfni" => has!("gfni"),
        "amx-tile" | "amx-bf16" => amx_usable(),
        _ => return None,
    })
}

/// Whether this process may run AMX-BF16 code: the CPU has AMX-TILE and AMX-BF16 (CPUID leaf
/// 7: EDX bits 24 and 22), the OS saves the tile state (XCR0 bits 17 and 18), and, on Linux,
/// the kernel granted this process the tile data (`arch_prctl(ARCH_REQ_XCOMP_PERM,
/// XFEATURE_XTILEDATA)`, asked once: without it the first tile instruction raises SIGILL).
/// The permission is the process's, for every thread, and costs nothing until tiles are
/// used (8 KiB more state per context switch of a thread that uses them).
#[cfg(target_arch = "x86_64")]
fn amx_usable() -> bool {
    static USABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *USABLE.get_or_init(|| {
        use std::arch::x86_64::{__cpuid, __cpuid_count};
        // SAFETY: CPUID exists on every x86-64 CPU; leaf 7 is read only where leaf 0 says it
        // exists, and XGETBV only where CPUID.1:ECX.OSXSAVE says the OS enabled it.
        let (cpu, os) = unsafe {
            if __cpuid(0).eax < 7 {
                return false;
            }
            let edx = __cpuid_count(7, 0).edx;
            let cpu = edx & (1 << 24) != 0 && edx & (1 << 22) != 0;
            let osxsave = __cpuid(1).ecx & (1 << 27) != 0;
            (cpu, osxsave && xcr0() & (0b11 << 17) == 0b11 << 17)
        };
        cpu && os && request_tile_data()
    })
}

/// XCR0, the state components the OS saves (`xgetbv 0`).
#[cfg(target_arch = "x86_64")]
unsafe fn xcr0() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY (the caller's): CPUID.1:ECX.OSXSAVE is set.
    unsafe {
        std::arch::asm!("xgetbv", in("ecx") 0, out("eax") lo, out("edx") hi, options(nomem, nostack));
    }
    u64::from(hi) << 32 | u64::from(lo)
}

/// Linux: ask for the AMX tile data state (`ARCH_REQ_XCOMP_PERM`, feature 18). Idempotent.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn request_tile_data() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a plain system call with integer arguments.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

/// Other systems enable the tile state for every process (XCR0 said so above).
#[cfg(all(target_arch = "x86_64", not(target_os = "linux")))]
fn request_tile_data() -> bool {
    true
}

/// Whether this CPU can run the AMX code of a bf16 artefact compiled for it (see
/// [`amx_usable`]); `false` off x86-64.
pub fn host_has_amx() -> bool {
    host_has("amx-tile") == Some(true)
}

#[cfg(not(target_arch = "x86_64"))]
fn host_has(_feature: &str) -> Option<bool> {
    None
}

/// The extensions of an x86-64 level (`x86-64-v4`) with those of the levels below it, as LLVM
/// names them; `None` for another name. The compiler lists them for code of a named CPU model,
/// which it compiles for that model's level.
pub fn level_extensions(level: &str) -> Option<Vec<&'static str>> {
    let top = LEVELS.iter().position(|(name, _)| *name == level)?;
    Some(
        LEVELS[..=top]
            .iter()
            .flat_map(|(_, f)| f.iter().copied())
            .collect(),
    )
}

/// The extensions the code requires, from the CPU name and the feature string.
fn required(cpu: &str, features: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    if let Some(level) = LEVELS.iter().position(|(name, _)| *name == cpu) {
        out.extend(
            LEVELS[..=level]
                .iter()
                .flat_map(|(_, f)| f.iter().map(|s| s.to_string())),
        );
    }
    for f in features
        .split(',')
        .filter_map(|f| f.trim().strip_prefix('+'))
    {
        if !out.iter().any(|o| o == f) {
            out.push(f.to_owned());
        }
    }
    out
}

/// The required extensions this CPU is known to lack.
pub fn missing(cpu: &str, features: &str) -> Vec<String> {
    missing_with(cpu, features, host_has)
}

fn missing_with(cpu: &str, features: &str, has: impl Fn(&str) -> Option<bool>) -> Vec<String> {
    required(cpu, features)
        .into_iter()
        .filter(|f| has(f) == Some(false))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_feature_strings_combine() {
        let r = required("x86-64-v3", "+avx512f,-avx512bw,+fma");
        assert!(r.contains(&"sse4.2".to_string()) && r.contains(&"avx2".to_string()));
        assert!(r.contains(&"avx512f".to_string()) && !r.contains(&"avx512bw".to_string()));
        assert_eq!(r.iter().filter(|f| *f == "fma").count(), 1);
        assert!(required("skylake", "").is_empty());
    }

    #[test]
    fn only_known_absent_features_are_reported() {
        let has = |f: &str| match f {
            "avx512f" => Some(false),
            "mystery" => None,
            _ => Some(true),
        };
        assert_eq!(missing_with("x86-64-v4", "+mystery", has), ["avx512f"]);
        assert!(missing_with("x86-64-v3", "+mystery", has).is_empty());
    }

    #[test]
    fn levels_list_their_extensions_and_those_below() {
        let v4 = level_extensions("x86-64-v4").expect("a level");
        for f in ["avx512vl", "avx512bw", "fma", "movbe", "sse4.2"] {
            assert!(v4.contains(&f), "{f}");
        }
        assert!(!level_extensions("x86-64-v3")
            .expect("a level")
            .contains(&"avx512f"));
        assert!(level_extensions("znver4").is_none());
    }

    /// The extensions beyond the levels that LLVM uses where a CPU has them (a `native`
    /// artefact compiled on a Zen 4 has GFNI instructions) are checked, not passed as unknown.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn extensions_beyond_the_levels_are_detected() {
        for f in [
            "gfni",
            "avx512vbmi",
            "avx512vbmi2",
            "avx512bitalg",
            "avx512vpopcntdq",
            "avx512ifma",
            "avx512vnni",
            "avx512bf16",
        ] {
            assert!(host_has(f).is_some(), "{f} is not detected");
        }
    }

    #[test]
    fn this_host_can_run_code_for_itself_and_for_baseline_x86_64() {
        assert!(missing("x86-64", "").is_empty());
        // Whatever this CPU has, the check agrees with std's detection for it.
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            assert!(missing("generic", "+avx2,+avx").is_empty());
        }
    }
}
