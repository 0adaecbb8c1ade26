//! The deterministic text form of a [`Graph`](crate::Graph): [`print()`] and
//! [`parse`] round-trip (`print(&parse(&print(g))?) == print(g)` for a graph
//! without bound constants; with them, up to the `= <bound>` markers), so
//! dumps after each pass diff cleanly and tests can pin them as snapshots.
//!
//! # Format
//!
//! ```text
//! graph tiny {
//!   const conv.weight: f32[8, 3, 3, 3] = <bound>
//!   const fc.weight: f32[10, 8]
//!
//!   %input = input : f32[1, 3, 8, 8]
//!   %conv = conv2d(%input) {kernel=[3, 3], out_channels=8, padding=[1, 1], relu=true, stride=[1, 1], weight=@conv.weight} : f32[1, 8, 8, 8]
//!   %pool = global_avg_pool(%conv) : f32[1, 8, 1, 1]
//!   %flat = flatten(%pool) : f32[1, 8]
//!   %fc = linear(%flat) {out_features=10, weight=@fc.weight} : f32[1, 10]
//!   return %fc
//! }
//! ```
//!
//! - One statement per line; `;` starts a comment to the end of the line;
//!   blank lines and indentation are free.
//! - `graph NAME {` opens the file and `}` closes it.
//! - `const NAME: f32[dims]` declares a constant, sorted by name. Data is
//!   never printed: `= <bound>` tells the reader the printed graph had data;
//!   parsed constants are always unbound.
//! - `%NAME = OP(%OPERAND, ...) {KEY=VALUE, ...} : TYPE` defines a node, in
//!   [`Graph::schedule`](crate::Graph::schedule) order, so operands are defined on earlier lines.
//!   `input` nodes have no operand list; ops without attributes have no
//!   braces. Attributes are sorted by key and every attribute of the op is
//!   printed, except optional ones that are absent (`bias`, `prologue`),
//!   which are left out. Values are integers, `true`/`false`, `[a, b]`
//!   pairs, floats as Rust's `{:?}` prints them (exact round trip),
//!   constant references `@NAME`, and
//!   `affine(relu=BOOL, scale=@NAME, shift=@NAME)` for prologues.
//! - Storage, once passes have chosen it: `arena BYTES` gives the size of
//!   the activation arena; `buffer NAME: TYPE {border=[r, c], offset=BYTES}`
//!   declares a buffer (sorted by name; `border` printed when non-zero,
//!   `offset` once planned); a node line ending in `in BUFFER[C]` places
//!   the node's value at channel `C` of that buffer.
//! - `TYPE` is `f32[d, ...]` (or `f16`/`bf16`); the parser infers every
//!   type again and rejects a printed type that differs.
//! - `return %A, ...` lists the graph outputs in order.
//! - Names made of ASCII letters, digits, `_`, `.` and `-` print bare;
//!   any other name (or an empty one) is quoted, with `\"`, `\\`, `\n`,
//!   `\r`, `\t` and `\u{HEX}` escapes.
//!
//! Graph inputs come back in the order their `input` lines appear (the
//! schedule order); a graph whose input list is in another order prints the
//! same text, so only that order survives a round trip.
//!
//! [`print_with_marker`] and [`print_with_error`] print the same text with a
//! comment line marking the node an error is about, for verifier failures.

mod attrs;
mod lex;
mod parse;
mod print;

pub use attrs::MAX_INT;
pub use parse::parse;
pub use print::{print, print_with_error, print_with_marker};
