//! densenetc compiler.
pub mod weights;
