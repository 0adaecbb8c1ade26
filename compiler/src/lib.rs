//! densenetc compiler.
