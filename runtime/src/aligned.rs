//! A zero-initialised, 64-byte-aligned byte buffer: the in-memory artefact (so every section
//! keeps the 64-byte alignment it has in the file) and each session's arena.
//!
//! Allocation failure is an error, never an abort: an arena size comes from a manifest.
//!
//! On Linux a buffer of at least [`HUGE_PAGE`] bytes is its own anonymous mapping, 2 MiB
//! aligned and advised `MADV_HUGEPAGE`, so that where transparent huge pages are enabled
//! (`always` or `madvise`, the usual defaults) the kernel backs it with 2 MiB pages. The
//! generated kernels stream the weights (DenseNet-121: 31 MB, read once per inference at
//! batch 1) and the dense blocks' buffers with few TLB misses then, and the physical layout
//! of a page no longer decides which of those lines collide in the L2. Without huge pages
//! (disabled, or none free) the mapping is ordinary 4 KiB pages, as before.

use std::alloc::{self, Layout};
use std::ptr::NonNull;

use crate::error::{Error, Result};

/// The alignment of every buffer: one cache line, and enough for any SIMD load the generated
/// code may use.
pub const ALIGN: usize = 64;

/// A transparent huge page on x86-64 Linux, and the least buffer mapped on its own
/// ([`AlignedBuf::zeroed`]).
pub const HUGE_PAGE: usize = 2 << 20;

/// An owned, zeroed, 64-byte-aligned buffer of `len` bytes.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    /// Where the bytes live: how `Drop` gives them back.
    home: Home,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Home {
    /// The global allocator, with the layout `len.max(1)` bytes, [`ALIGN`].
    Heap,
    /// An anonymous mapping of this many bytes from `ptr`, huge-page advised (Linux).
    Mapped(usize),
}

// SAFETY: AlignedBuf uniquely owns its allocation (like Vec<u8>); moving it to another thread or
// sharing `&AlignedBuf` (which only gives `&[u8]`) is as safe as it is for Vec<u8>.
unsafe impl Send for AlignedBuf {}
// SAFETY: see above; `&AlignedBuf` exposes no interior mutability.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// Allocates `len` zero bytes; `what` names the buffer in the error.
    pub fn zeroed(len: usize, what: &'static str) -> Result<Self> {
        let oom = || Error::OutOfMemory { what, bytes: len };
        if len >= HUGE_PAGE {
            if let Some((ptr, mapped)) = huge::map(len) {
                return Ok(Self {
                    ptr,
                    len,
                    home: Home::Mapped(mapped),
                });
            }
        }
        // A zero-sized allocation is not allowed; allocate one line instead.
        let layout = Layout::from_size_align(len.max(1), ALIGN).map_err(|_| oom())?;
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).ok_or_else(oom)?;
        Ok(Self {
            ptr,
            len,
            home: Home::Heap,
        })
    }

    /// A 64-byte-aligned copy of `bytes`.
    pub fn copy_from(bytes: &[u8], what: &'static str) -> Result<Self> {
        let mut buf = Self::zeroed(bytes.len(), what)?;
        buf.as_mut_slice().copy_from_slice(bytes);
        Ok(buf)
    }

    /// The buffer's length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// The buffer's bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr points to an allocation of at least `len` initialised (zeroed or written)
        // bytes owned by self, and the shared borrow of self prevents mutation meanwhile.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The buffer's bytes, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and the unique borrow of self makes this the only access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// The buffer as f32 elements (a trailing partial element is left out).
    pub fn as_f32(&self) -> &[f32] {
        // SAFETY: the allocation is 64-byte aligned, any bytes are a valid f32, and len / 4
        // elements fit in it; the shared borrow of self prevents mutation meanwhile.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().cast::<f32>(), self.len / 4) }
    }

    /// The buffer as f32 elements, mutably.
    pub fn as_f32_mut(&mut self) -> &mut [f32] {
        // SAFETY: as in `as_f32`, and the unique borrow of self makes this the only access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().cast::<f32>(), self.len / 4) }
    }

    /// The start of the buffer, for handing to generated code.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        match self.home {
            Home::Mapped(mapped) => huge::unmap(self.ptr, mapped),
            Home::Heap => {
                // The same layout as in `zeroed`, which already succeeded once.
                if let Ok(layout) = Layout::from_size_align(self.len.max(1), ALIGN) {
                    // SAFETY: ptr was returned by alloc_zeroed with exactly this layout and is
                    // freed once.
                    unsafe { alloc::dealloc(self.ptr.as_ptr(), layout) };
                }
            }
        }
    }
}

/// Anonymous mappings on [`HUGE_PAGE`] boundaries, advised `MADV_HUGEPAGE`.
#[cfg(target_os = "linux")]
mod huge {
    use super::HUGE_PAGE;
    use std::ptr::NonNull;

    /// A zeroed mapping of at least `len` bytes starting on a [`HUGE_PAGE`] boundary, and its
    /// length; `None` where the kernel refuses it (the caller falls back to the heap, whose
    /// failure is the error).
    pub(super) fn map(len: usize) -> Option<(NonNull<u8>, usize)> {
        let mapped = len.checked_next_multiple_of(HUGE_PAGE)?;
        // One huge page more than needed, so that a boundary falls within the first.
        let reserve = mapped.checked_add(HUGE_PAGE)?;
        // SAFETY: a fresh private anonymous mapping; no existing memory is touched.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                reserve,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return None;
        }
        let base = raw as usize;
        let start = base.next_multiple_of(HUGE_PAGE);
        let (head, tail) = (start - base, reserve - (start - base) - mapped);
        // SAFETY: both ranges are page-aligned parts of the mapping just made, outside
        // [start, start + mapped), and nothing refers to them.
        unsafe {
            if head > 0 {
                libc::munmap(raw, head);
            }
            if tail > 0 {
                libc::munmap((start + mapped) as *mut libc::c_void, tail);
            }
            // Advice only: a kernel without transparent huge pages returns EINVAL and the
            // mapping stays 4 KiB pages.
            libc::madvise(start as *mut libc::c_void, mapped, libc::MADV_HUGEPAGE);
        }
        NonNull::new(start as *mut u8).map(|p| (p, mapped))
    }

    pub(super) fn unmap(ptr: NonNull<u8>, mapped: usize) {
        // SAFETY: [ptr, ptr + mapped) is the mapping `map` returned, unmapped once, by the
        // buffer's drop.
        unsafe { libc::munmap(ptr.as_ptr().cast(), mapped) };
    }
}

/// Elsewhere every buffer comes from the heap.
#[cfg(not(target_os = "linux"))]
mod huge {
    use std::ptr::NonNull;

    pub(super) fn map(_len: usize) -> Option<(NonNull<u8>, usize)> {
        None
    }

    pub(super) fn unmap(_ptr: NonNull<u8>, _mapped: usize) {}
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.len)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_zeroed_and_copied() {
        for len in [0, 1, 63, 64, 65, 4096] {
            let mut b = AlignedBuf::zeroed(len, "test").expect("alloc");
            assert_eq!(b.as_mut_ptr() as usize % ALIGN, 0);
            assert!(b.as_slice().iter().all(|&x| x == 0));
            assert_eq!(b.len(), len);
        }
        let c = AlignedBuf::copy_from(b"hello", "test").expect("alloc");
        assert_eq!(c.as_slice(), b"hello");
    }

    /// The `VmFlags` of the mapping of this process that holds `addr` (Linux `smaps`).
    #[cfg(target_os = "linux")]
    fn vm_flags(addr: usize) -> Option<String> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let mut inside = false;
        for line in smaps.lines() {
            let range = line
                .split_whitespace()
                .next()
                .and_then(|r| r.split_once('-'));
            if let Some((lo, hi)) = range {
                if let (Ok(lo), Ok(hi)) =
                    (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
                {
                    inside = (lo..hi).contains(&addr);
                    continue;
                }
            }
            if inside {
                if let Some(flags) = line.strip_prefix("VmFlags:") {
                    return Some(flags.trim().to_string());
                }
            }
        }
        None
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn large_buffers_are_huge_page_advised_mappings() {
        let len = 3 * HUGE_PAGE + 100;
        let mut b = AlignedBuf::zeroed(len, "test").expect("alloc");
        assert_eq!(b.home, Home::Mapped(4 * HUGE_PAGE));
        assert_eq!(b.as_mut_ptr() as usize % HUGE_PAGE, 0);
        assert!(b.as_slice().iter().all(|&x| x == 0));
        b.as_mut_slice()[len - 1] = 7;
        let copy = AlignedBuf::copy_from(b.as_slice(), "test").expect("alloc");
        assert_eq!(copy.as_slice()[len - 1], 7);
        let small = AlignedBuf::zeroed(HUGE_PAGE - 1, "test").expect("alloc");
        assert_eq!(small.home, Home::Heap);
        // The advice itself: `hg` in the mapping's flags, where this kernel has transparent
        // huge pages at all (without them `madvise` refuses it and the mapping stays small
        // pages, which is all the buffer needs).
        if !std::path::Path::new("/sys/kernel/mm/transparent_hugepage").exists() {
            eprintln!("skipped the MADV_HUGEPAGE check: this kernel has no transparent huge pages");
            return;
        }
        let flags = vm_flags(b.as_mut_ptr() as usize).expect("the buffer's mapping in smaps");
        assert!(
            flags.split_whitespace().any(|f| f == "hg"),
            "not huge-page advised: {flags}"
        );
    }

    #[test]
    fn absurd_size_is_an_error_not_an_abort() {
        let e = AlignedBuf::zeroed(usize::MAX - 10, "arena").expect_err("must fail");
        assert!(e.to_string().contains("arena"), "{e}");
    }
}
