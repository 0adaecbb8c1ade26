//! What the host offers: its physical memory, read once per call from the operating system.
//! Used by the command line to refuse (or warn about) an arena that cannot fit before trying to
//! allocate it; the runtime's own allocations are fallible whatever this says.

/// The host's physical memory in bytes (`MemTotal` of `/proc/meminfo`), or `None` where it
/// cannot be read (not Linux, no `/proc`).
pub fn physical_memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line
        .trim_start_matches("MemTotal:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

/// A vector of `len` zeros, or [`crate::Error::OutOfMemory`] naming `what`: never an abort,
/// for buffers whose size comes from a manifest or a file.
pub fn try_zeroed<T: Clone + Default>(len: usize, what: &'static str) -> crate::Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(len)
        .map_err(|_| crate::Error::OutOfMemory {
            what,
            bytes: len.saturating_mul(std::mem::size_of::<T>()),
        })?;
    v.resize(len, T::default());
    Ok(v)
}

#[cfg(test)]
mod tests {
    #[test]
    fn absurd_sizes_are_errors_not_aborts() {
        let e = super::try_zeroed::<f32>(usize::MAX / 8, "input").expect_err("must fail");
        assert!(e.to_string().contains("input"), "{e}");
        assert_eq!(super::try_zeroed::<f32>(3, "x").expect("small").len(), 3);
    }

    #[test]
    fn physical_memory_is_plausible_on_linux() {
        if cfg!(target_os = "linux") {
            let m = super::physical_memory_bytes().expect("MemTotal");
            assert!(m > 1 << 24, "{m}");
        }
    }
}
