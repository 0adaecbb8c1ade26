//! A zero-initialised, 64-byte-aligned byte buffer: the in-memory artefact (so every section
//! keeps the 64-byte alignment it has in the file) and each session's arena.
//!
//! Allocation failure is an error, never an abort: an arena size comes from a manifest.

use std::alloc::{self, Layout};
use std::ptr::NonNull;

use crate::error::{Error, Result};

/// The alignment of every buffer: one cache line, and enough for any SIMD load the generated
/// code may use.
pub const ALIGN: usize = 64;

/// An owned, zeroed, 64-byte-aligned buffer of `len` bytes.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
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
        // A zero-sized allocation is not allowed; allocate one line instead.
        let layout = Layout::from_size_align(len.max(1), ALIGN).map_err(|_| oom())?;
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).ok_or_else(oom)?;
        Ok(Self { ptr, len })
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
        // The same layout as in `zeroed`, which already succeeded once.
        if let Ok(layout) = Layout::from_size_align(self.len.max(1), ALIGN) {
            // SAFETY: ptr was returned by alloc_zeroed with exactly this layout and is freed once.
            unsafe { alloc::dealloc(self.ptr.as_ptr(), layout) };
        }
    }
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

    #[test]
    fn absurd_size_is_an_error_not_an_abort() {
        let e = AlignedBuf::zeroed(usize::MAX - 10, "arena").expect_err("must fail");
        assert!(e.to_string().contains("arena"), "{e}");
    }
}
