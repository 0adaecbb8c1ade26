//! The graph side, one test binary (`cargo test -p compiler --test passes`):
//! the builder against torchvision (`builder`); the pass pipeline
//! (`pipeline`, `presets`, `proptest`, `golden`); the concatenation and
//! memory plans and the arena executor (`concat`, `memory`, `plan_exec`);
//! the IR after each pass (`snapshots`, insta files in `snapshots/`); and
//! the text-IR file tests (`filetests`, files in `tests/filetests/`). The
//! helpers are in `common`.

mod builder;
mod common;
mod concat;
mod filetests;
mod golden;
mod memory;
mod pipeline;
mod plan_exec;
mod presets;
mod proptest;
mod snapshots;
