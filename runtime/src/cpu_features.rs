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
        _ => return None,
    })
}

#[cfg(not(target_arch = "x86_64"))]
fn host_has(_feature: &str) -> Option<bool> {
    None
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
    fn this_host_can_run_code_for_itself_and_for_baseline_x86_64() {
        assert!(missing("x86-64", "").is_empty());
        // Whatever this CPU has, the check agrees with std's detection for it.
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            assert!(missing("generic", "+avx2,+avx").is_empty());
        }
    }
}
