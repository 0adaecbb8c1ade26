//! Errors of the IR crate.

use thiserror::Error;

/// An error in building, checking, parsing or executing a graph. Every
/// variant names the node or constant it is about.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum IrError {
    #[error("node `{node}`: {message}")]
    Node { node: String, message: String },
    #[error("constant `{name}`: {message}")]
    Constant { name: String, message: String },
    #[error("graph: {0}")]
    Graph(String),
    #[error("parse error at line {line}: {message}")]
    Parse { line: usize, message: String },
    #[error("execution: {0}")]
    Exec(String),
}

impl IrError {
    pub fn node(node: impl Into<String>, message: impl Into<String>) -> Self {
        IrError::Node {
            node: node.into(),
            message: message.into(),
        }
    }

    pub fn constant(name: impl Into<String>, message: impl Into<String>) -> Self {
        IrError::Constant {
            name: name.into(),
            message: message.into(),
        }
    }
}

pub type Result<T, E = IrError> = std::result::Result<T, E>;
