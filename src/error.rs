//! The one error type of onnxq. Every variant names what it is about (file, tensor,
//! node, pass) so a user can find the problem without a debugger.
use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a valid ONNX model ({reason})")]
    Decode { path: PathBuf, reason: String },
    #[error("tensor '{tensor}': {reason}")]
    Tensor { tensor: String, reason: String },
    #[error("tensor '{tensor}': external data {location}: {reason}")]
    ExternalData {
        tensor: String,
        location: String,
        reason: String,
    },
    #[error("node '{node}' ({op}): {reason}")]
    Node {
        node: String,
        op: String,
        reason: String,
    },
    #[error("graph '{graph}': {reason}")]
    Graph { graph: String, reason: String },
    #[error("pass '{pass}': {reason}")]
    Pass { pass: String, reason: String },
    #[error("recipe {recipe}: {reason}")]
    Recipe { recipe: String, reason: String },
    #[error("{0}")]
    Invalid(String),
    /// The command line asked for something inconsistent or unknown (exit code 2).
    #[error("{0}")]
    Usage(String),
    /// A check the user asked for failed (a verify threshold, `--fail-if-unchanged`):
    /// exit code 3.
    #[error("{0}")]
    CheckFailed(String),
    /// The reference model of a comparison cannot run: nothing is known about the
    /// candidate.
    #[error("{0}")]
    Reference(String),
    #[error("runtime {runtime}: {reason}")]
    Runtime { runtime: String, reason: String },
    /// A graph read as an LLM decoder that has no decoder structure at all.
    #[error("not a decoder: {0}")]
    NotDecoder(String),
    /// A decoder whose structure broke off at one step of the pattern: `at` is the
    /// layer ("layer 1") or part ("lm_head"), `step` the component being matched.
    #[error("{at}: {step}: {reason}")]
    DecoderMap {
        at: String,
        step: String,
        reason: String,
    },
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub fn tensor(tensor: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Tensor {
            tensor: tensor.into(),
            reason: reason.into(),
        }
    }

    pub fn graph(graph: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Graph {
            graph: graph.into(),
            reason: reason.into(),
        }
    }

    pub fn invalid(reason: impl Into<String>) -> Self {
        Error::Invalid(reason.into())
    }

    /// This error, reclassified as a usage error (bad flags, unknown names).
    pub fn into_usage(self) -> Self {
        match self {
            Error::Usage(_) => self,
            e => Error::Usage(e.to_string()),
        }
    }
}

/// The closest of `candidates` to `word` when it is close enough to be a typo:
/// feeds "did you mean" hints.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro(word, c), c))
        .filter(|(score, _)| *score > 0.7)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// ` (did you mean 'x'?)`, or nothing.
pub fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    closest(word, candidates)
        .map(|c| format!(" (did you mean '{c}'?)"))
        .unwrap_or_default()
}
