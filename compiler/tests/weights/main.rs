//! Weight import, one test binary (`cargo test -p compiler --test weights`):
//! reading checkpoints (`read`), binding them to a graph (`bind`), finding
//! the network in checkpoints as users save them (`discovery`),
//! deterministic random weights (`random`), and corrupt files, never a panic
//! nor a huge allocation (`fuzz`, `legacy_fuzz`, with the counting
//! allocator of `fuzz_support`). `support` holds the test data paths and a
//! hand-built torchvision-style DenseNet.

mod bind;
mod discovery;
mod fuzz;
mod fuzz_support;
mod legacy_fuzz;
mod random;
mod read;
mod support;
