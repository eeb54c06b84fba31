//! What can go wrong when running a model, each case naming the model, input, node
//! or library it is about, with a hint where one helps.
use std::path::PathBuf;

/// The ONNX Runtime release onnxq is built and tested against.
pub const ORT_SUPPORTED: &str = "1.32";

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "ONNX Runtime library not found (looked in: {searched}); install it with \
         `pip install onnxruntime=={ORT_SUPPORTED}.0` (onnxq asks $ONNXQ_PYTHON, the \
         checkout's .venv, then python3) or set ORT_DYLIB_PATH to libonnxruntime.so; \
         or use --runtime tract"
    )]
    OrtNotFound { searched: String },
    #[error(
        "{path}: ONNX Runtime {found} is not supported: onnxq needs {ORT_SUPPORTED}.x \
         (pip install onnxruntime=={ORT_SUPPORTED}.0, or point ORT_DYLIB_PATH at a \
         {ORT_SUPPORTED} library)"
    )]
    OrtVersion { path: PathBuf, found: String },
    #[error("{path}: cannot load ONNX Runtime: {reason}")]
    OrtLoad { path: PathBuf, reason: String },
    #[error(
        "ONNX Runtime is already loaded from {loaded}; it cannot be loaded again from {wanted} \
         in the same process"
    )]
    OrtReloaded { loaded: PathBuf, wanted: PathBuf },
    #[error("{model}: no input named '{name}' (the model's inputs: {expected})")]
    UnknownInput {
        model: String,
        name: String,
        expected: String,
    },
    #[error("{model}: no value given for input '{name}' ({declared})")]
    MissingInput {
        model: String,
        name: String,
        declared: String,
    },
    #[error("{model}: input '{name}' must be {expected}, got {got}")]
    InputDType {
        model: String,
        name: String,
        expected: String,
        got: String,
    },
    #[error("{model}: input '{name}' has shape {got:?}, the model declares {declared}")]
    InputShape {
        model: String,
        name: String,
        got: Vec<usize>,
        declared: String,
    },
    #[error(
        "{model}: symbolic dim '{dim}' is {first} in input '{first_input}' but {second} in \
         input '{second_input}'"
    )]
    DimConflict {
        model: String,
        dim: String,
        first: usize,
        first_input: String,
        second: usize,
        second_input: String,
    },
    #[error("input '{input}': symbolic dim '{dim}' has no value; pass --dim {dim}=<size>")]
    UnresolvedDim { input: String, dim: String },
    #[error("{runtime} cannot run node '{node}' ({op}) of {model}: {reason}{hint}")]
    UnsupportedOp {
        runtime: &'static str,
        model: String,
        node: String,
        op: String,
        reason: &'static str,
        hint: &'static str,
    },
    #[error("{runtime} cannot take {what} '{name}' of type {dtype}{hint}")]
    UnsupportedDType {
        runtime: &'static str,
        what: &'static str,
        name: String,
        dtype: String,
        hint: &'static str,
    },
    #[error("{runtime}: {model}: {reason}")]
    Backend {
        runtime: &'static str,
        model: String,
        reason: String,
    },
}

impl RuntimeError {
    pub fn backend(runtime: &'static str, model: impl Into<String>, reason: impl ToString) -> Self {
        RuntimeError::Backend {
            runtime,
            model: model.into(),
            reason: reason.to_string(),
        }
    }
}

// Backend failures become the crate's `Runtime` variant; every other case is a
// complete sentence already and becomes `Invalid`.
impl From<RuntimeError> for crate::Error {
    fn from(e: RuntimeError) -> Self {
        match e {
            RuntimeError::Backend {
                runtime,
                model,
                reason,
            } => crate::Error::Runtime {
                runtime: runtime.to_string(),
                reason: format!("{model}: {reason}"),
            },
            e => crate::Error::Invalid(e.to_string()),
        }
    }
}
