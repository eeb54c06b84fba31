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
}
