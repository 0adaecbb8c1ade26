//! The errors of a compile ([`CompileError`]) and of assembling an artefact
//! ([`ArtefactBuildError`]): vocabulary the driver, the target code
//! generation and the artefact writer share, so none of them imports another
//! for its error type.

use crate::backend::BackendError;
use crate::builder::BuildError;
use crate::passes::PassError;
use crate::weights::WeightError;
use std::path::PathBuf;
use thiserror::Error;

/// Why a compile failed.
#[derive(Debug, Error)]
pub enum CompileError {
    /// The options contradict each other (e.g. `--precision tf32` without a CUDA target).
    #[error("{0}")]
    Options(String),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Weights(#[from] WeightError),
    #[error(transparent)]
    Pass(#[from] PassError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Artefact(#[from] ArtefactBuildError),
    /// The configuration exceeds a limit of [`crate::limits`] (the message gives the estimate,
    /// the limit and why).
    #[error("{0}")]
    Limit(String),
    /// A weight is NaN or infinite ([`crate::driver::CompileOptions::check_finite_weights`]).
    #[error(
        "weight `{tensor}` holds {value} at index {index} (of {len} values): NaN and infinite \
         weights are refused (--allow-nonfinite compiles them anyway)"
    )]
    NonFinite {
        tensor: String,
        index: usize,
        len: usize,
        value: f32,
    },
    /// Writing a dump or the artefact.
    #[error("writing {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Why an artefact could not be assembled: the parts disagree (a bug upstream) or the
/// runtime's writer refused them.
#[derive(Debug, Error)]
pub enum ArtefactBuildError {
    #[error("inconsistent artefact parts: {0}")]
    Inconsistent(String),
    #[error(transparent)]
    Format(#[from] runtime::ArtefactError),
    #[error("manifest JSON: {0}")]
    Json(#[from] serde_json::Error),
}
