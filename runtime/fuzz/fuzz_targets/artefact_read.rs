//! Raw bytes into the artefact reader: it must return, never crash.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = runtime::Artefact::read(data);
});
