//! Shared by `fuzz` and `legacy_fuzz`: the binary's global allocator, which
//! counts the bytes live on a thread only while that thread is inside
//! [`measure`] (the other tests of the binary allocate through it uncounted),
//! the panic hook naming the variant being parsed, the byte replacements and
//! a SplitMix64.

use crate::support::data;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::{Cell, RefCell};

struct Counting;

thread_local! {
    static TRACKING: Cell<bool> = const { Cell::new(false) };
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
    static CASE: RefCell<String> = const { RefCell::new(String::new()) };
}

fn note_alloc(size: usize) {
    // `try_with`: the allocator also runs while thread-locals are torn down.
    let _ = TRACKING.try_with(|t| {
        if t.get() {
            let live = LIVE.with(|l| {
                l.set(l.get() + size);
                l.get()
            });
            PEAK.with(|p| p.set(p.get().max(live)));
        }
    });
}

fn note_free(size: usize) {
    let _ = TRACKING.try_with(|t| {
        if t.get() {
            LIVE.with(|l| l.set(l.get().saturating_sub(size)));
        }
    });
}

// SAFETY: every call is forwarded unchanged to the system allocator; the
// bookkeeping touches only const-initialised thread-locals, which never
// allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_alloc(layout.size());
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note_free(layout.size());
        // SAFETY: as above; `ptr` came from `System.alloc`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_alloc(layout.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_free(layout.size());
        note_alloc(new_size);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Run `parse` on one variant (`case()` names it); returns the peak bytes
/// it held live, which must stay within a small multiple of its size.
pub fn measure<R>(
    bytes: &[u8],
    case: impl FnOnce() -> String,
    parse: impl FnOnce(&[u8]) -> R,
) -> usize {
    CASE.with(|c| *c.borrow_mut() = case());
    LIVE.with(|l| l.set(0));
    PEAK.with(|p| p.set(0));
    TRACKING.with(|t| t.set(true));
    let result = parse(bytes);
    drop(result);
    TRACKING.with(|t| t.set(false));
    let peak = PEAK.with(Cell::get);
    // The output holds at most the file's values; parsing needs a few
    // copies of small structures on top.
    let limit = 8 * bytes.len() + (256 << 10);
    assert!(
        peak <= limit,
        "{}: {peak} bytes live for a {}-byte input",
        CASE.with(|c| c.borrow().clone()),
        bytes.len()
    );
    peak
}

/// Name the variant in the message of a panic inside [`measure`]. Installed
/// once for the whole binary; a panic anywhere else prints no variant.
pub fn install_hook() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if TRACKING.try_with(Cell::get).unwrap_or(false) {
                let case = CASE.with(|c| c.borrow().clone());
                eprintln!("panic while parsing variant: {case}");
            }
            default(info);
        }));
    });
}

/// Byte replacements tried at each position.
pub fn replacements(b: u8) -> [u8; 4] {
    [b ^ 0x01, b ^ 0x80, 0x00, 0xff]
}

/// SplitMix64, for deterministic samples.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

pub fn read(name: &str) -> Vec<u8> {
    std::fs::read(data(name)).expect("test data")
}
