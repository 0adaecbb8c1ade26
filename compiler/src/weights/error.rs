//! Errors of weight import and binding.

use std::fmt;
use std::path::PathBuf;
use thiserror::Error;

/// How many binding problems an error message lists before summarising.
const LISTED_PROBLEMS: usize = 10;

/// An error reading a weights file or binding its tensors to a graph.
///
/// Reading errors name the file; binding errors list every mismatch found
/// (see [`BindProblem`]), so one run shows the whole difference between the
/// file and the graph.
#[derive(Debug, Error)]
pub enum WeightError {
    #[error("cannot read weights file `{}`: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("weights file `{}` is truncated or corrupt: {message}", path.display())]
    Corrupt { path: PathBuf, message: String },
    #[error("weights file `{}`: {message}", path.display())]
    Unsupported { path: PathBuf, message: String },
    #[error(
        "weights file `{}` uses PyTorch's oldest (tar-based, before 0.4) serialization \
         format, which densenetc does not read; re-save it with \
         torch.save(torch.load(path), new_path)",
        path.display()
    )]
    LegacyFormat { path: PathBuf },
    #[error(
        "weights file `{}` is not a format densenetc reads (a PyTorch checkpoint, zip or \
         legacy, or safetensors): {detail}",
        path.display()
    )]
    UnknownFormat { path: PathBuf, detail: String },
    /// The file holds no state dict or module (or none where `--weights-key`
    /// / `--weights-prefix` point).
    #[error("no network found in weights file `{}`: {message}", path.display())]
    NotFound { path: PathBuf, message: String },
    /// Several different networks fit the graph equally well.
    #[error("weights file `{}` is ambiguous: {message}", path.display())]
    Ambiguous { path: PathBuf, message: String },
    /// [`WeightError::Mismatch`] for the tensors found in a file, saying
    /// where they were found.
    #[error("weights file `{}`, {found}: {}", path.display(), MismatchList(.problems))]
    FileMismatch {
        path: PathBuf,
        found: String,
        problems: Vec<BindProblem>,
    },
    #[error("{}", MismatchList(.problems))]
    Mismatch { problems: Vec<BindProblem> },
}

impl WeightError {
    /// The binding problems, if this is a mismatch.
    pub fn problems(&self) -> Option<&[BindProblem]> {
        match self {
            WeightError::Mismatch { problems } | WeightError::FileMismatch { problems, .. } => {
                Some(problems)
            }
            _ => None,
        }
    }
}

/// One difference between the tensors of a weights file and the constants
/// of a graph. Names are the graph's (torchvision) names unless said
/// otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindProblem {
    /// The graph needs this constant and the file has no tensor for it.
    Missing { name: String, expected: Vec<usize> },
    /// The file has a tensor the graph has no constant for. `file_name` is
    /// the name as spelled in the file.
    Unexpected {
        name: String,
        file_name: String,
        shape: Vec<usize>,
    },
    /// The shapes differ.
    Shape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// The tensor is not float32.
    DType { name: String, dtype: String },
    /// Two tensors of the file name the same constant once normalised
    /// (e.g. `module.x` and `x`).
    Duplicate {
        name: String,
        first: String,
        second: String,
    },
    /// The tensor holds a number of values that does not match its shape.
    DataLength {
        name: String,
        shape: Vec<usize>,
        len: usize,
    },
}

impl fmt::Display for BindProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BindProblem::Missing { name, expected } => {
                write!(f, "missing tensor `{name}` (expected shape {expected:?})")
            }
            BindProblem::Unexpected {
                name,
                file_name,
                shape,
            } => {
                write!(f, "unexpected tensor `{file_name}`")?;
                if file_name != name {
                    write!(f, " (read as `{name}`)")?;
                }
                write!(f, " with shape {shape:?}: the graph has no such weight")
            }
            BindProblem::Shape {
                name,
                expected,
                found,
            } => write!(
                f,
                "tensor `{name}` has shape {found:?}, expected {expected:?}"
            ),
            BindProblem::DType { name, dtype } => write!(
                f,
                "tensor `{name}` is {dtype}; only float32 weights are supported \
                 (convert the checkpoint with .float())"
            ),
            BindProblem::Duplicate {
                name,
                first,
                second,
            } => write!(
                f,
                "tensors `{first}` and `{second}` both name `{name}` once normalised"
            ),
            BindProblem::DataLength { name, shape, len } => write!(
                f,
                "tensor `{name}` holds {len} values, which does not match its shape {shape:?}"
            ),
        }
    }
}

/// The kinds of [`BindProblem`], in the order the summary counts them.
const KINDS: [&str; 6] = [
    "missing",
    "unexpected",
    "mis-shaped",
    "not float32",
    "duplicate",
    "bad length",
];

impl BindProblem {
    fn kind(&self) -> &'static str {
        KINDS[match self {
            BindProblem::Missing { .. } => 0,
            BindProblem::Unexpected { .. } => 1,
            BindProblem::Shape { .. } => 2,
            BindProblem::DType { .. } => 3,
            BindProblem::Duplicate { .. } => 4,
            BindProblem::DataLength { .. } => 5,
        }]
    }
}

struct MismatchList<'a>(&'a [BindProblem]);

impl fmt::Display for MismatchList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let problems = self.0;
        let counts = KINDS.iter().filter_map(|&kind| {
            let n = problems.iter().filter(|p| p.kind() == kind).count();
            (n > 0).then_some((kind, n))
        });
        write!(f, "the weights do not match the graph (")?;
        for (i, (kind, n)) in counts.enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{n} {kind}")?;
        }
        write!(f, "):")?;
        for p in problems.iter().take(LISTED_PROBLEMS) {
            write!(f, "\n  - {p}")?;
        }
        if problems.len() > LISTED_PROBLEMS {
            write!(f, "\n  ... and {} more", problems.len() - LISTED_PROBLEMS)?;
        }
        Ok(())
    }
}

/// A format error found while parsing bytes, before the file path is known.
#[derive(Debug)]
pub(crate) enum ParseError {
    Corrupt(String),
    Unsupported(String),
}

impl ParseError {
    pub(crate) fn corrupt(message: impl Into<String>) -> Self {
        ParseError::Corrupt(message.into())
    }

    pub(crate) fn unsupported(message: impl Into<String>) -> Self {
        ParseError::Unsupported(message.into())
    }

    pub(crate) fn at(self, path: impl Into<PathBuf>) -> WeightError {
        let path = path.into();
        match self {
            ParseError::Corrupt(message) => WeightError::Corrupt { path, message },
            ParseError::Unsupported(message) => WeightError::Unsupported { path, message },
        }
    }
}

pub(crate) type ParseResult<T> = Result<T, ParseError>;
