//! Running models: one `Session` interface over tract (embedded, always there) and
//! ONNX Runtime (loaded at run time from the pip wheel or ORT_DYLIB_PATH).
//!
//! A session is opened on a model *file* and takes named host tensors. Intermediate
//! values are read by making them graph outputs first ([`expose::with_outputs`]).
pub mod check;
pub mod error;
pub mod expose;
pub mod guard;
pub mod inputs;
pub mod lowering;
pub mod ort;
pub mod prepare;
pub mod tensor;
pub mod tract;

use std::fmt;
use std::path::Path;
use std::str::FromStr;

pub use error::{RuntimeError, ORT_SUPPORTED};
pub use prepare::{prepare, Prepared};
pub use tensor::{HostTensor, NamedTensors};

use crate::error::Result;
use crate::ir::IoSpec;

/// Which engine runs a model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    /// ONNX Runtime when its library is found, else tract.
    #[default]
    Auto,
    Tract,
    Ort,
}

impl FromStr for RuntimeKind {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(RuntimeKind::Auto),
            "tract" => Ok(RuntimeKind::Tract),
            "ort" | "onnxruntime" => Ok(RuntimeKind::Ort),
            other => Err(format!(
                "unknown runtime '{other}' (expected auto, tract or ort)"
            )),
        }
    }
}

impl fmt::Display for RuntimeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RuntimeKind::Auto => "auto",
            RuntimeKind::Tract => "tract",
            RuntimeKind::Ort => "ort",
        })
    }
}

/// How to open sessions.
#[derive(Clone, Debug, Default)]
pub struct RuntimeOptions {
    pub kind: RuntimeKind,
    /// Intra-op threads for ONNX Runtime; `None` = the number of available cores.
    pub threads: Option<usize>,
    /// ONNX Runtime session config entries (`session.qdq_matmulnbits_accuracy_level`
    /// = `0` keeps DequantizeLinear→MatMul in fp32 instead of ORT's default fusion
    /// to int8-activation MatMulNBits).
    pub ort_config: Vec<(String, String)>,
}

/// An engine that opens sessions on model files.
pub trait Runtime: Send + Sync {
    /// `tract` or `onnxruntime`.
    fn name(&self) -> &'static str;

    /// Opens a session on the model at `path` (external data resolved next to it).
    fn open(&self, path: &Path) -> Result<Box<dyn Session>>;
}

/// A model ready to run.
pub trait Session {
    /// The inputs a caller must feed, as the model declares them.
    fn inputs(&self) -> &[IoSpec];

    /// Names of the values `run` returns, in graph output order.
    fn output_names(&self) -> &[String];

    /// Runs on named inputs (checked against [`Session::inputs`]); returns every
    /// graph output, in graph output order.
    fn run(&mut self, inputs: &[(String, HostTensor)]) -> Result<NamedTensors>;
}

/// The runtime picked for a [`RuntimeOptions`], and why `auto` fell back to tract.
pub struct Selection {
    pub runtime: Box<dyn Runtime>,
    /// Set when `auto` wanted ONNX Runtime but could not load it.
    pub fallback: Option<String>,
}

/// Picks the runtime: tract, ONNX Runtime, or (auto) ONNX Runtime when its library
/// is found and loads, tract otherwise.
pub fn select(opts: &RuntimeOptions) -> Result<Selection> {
    match opts.kind {
        RuntimeKind::Tract => Ok(Selection {
            runtime: Box::new(tract::TractRuntime),
            fallback: None,
        }),
        RuntimeKind::Ort => Ok(Selection {
            runtime: Box::new(ort::OrtRuntime::new(opts.threads)?.with_config(&opts.ort_config)),
            fallback: None,
        }),
        RuntimeKind::Auto => match ort::OrtRuntime::new(opts.threads) {
            Ok(r) => Ok(Selection {
                runtime: Box::new(r.with_config(&opts.ort_config)),
                fallback: None,
            }),
            Err(e) => Ok(Selection {
                runtime: Box::new(tract::TractRuntime),
                fallback: Some(e.to_string()),
            }),
        },
    }
}

/// The runtime named `name` (tract, ort or auto) with default options.
pub fn named(name: &str) -> Result<Box<dyn Runtime>> {
    let kind = name
        .parse::<RuntimeKind>()
        .map_err(crate::error::Error::invalid)?;
    Ok(select(&RuntimeOptions {
        kind,
        ..Default::default()
    })?
    .runtime)
}

/// How a whole model was checked by a runtime.
#[derive(Clone, Debug, PartialEq)]
pub enum Validation {
    /// Loaded (graph checks, type and shape inference) by this runtime.
    Checked(&'static str),
    /// No runtime here can read the model; why.
    Skipped(String),
}

/// Checks `model` as a runtime does on load: an ONNX Runtime session when the
/// library is found (its graph checks, type and shape inference, kernel
/// resolution), else tract's type and shape inference. Writes the model to a
/// temporary file (ORT) or serializes it (tract) once.
pub fn validate(model: &crate::ir::Model) -> Result<Validation> {
    if ort::available() {
        let temp = expose::TempModel::save(model, "check.onnx")?;
        ort::OrtRuntime::new(Some(1))?.open(temp.path())?;
        return Ok(Validation::Checked("onnxruntime"));
    }
    Ok(match tract::infer_types(model)? {
        None => Validation::Checked("tract"),
        Some(why) => Validation::Skipped(why),
    })
}

/// A session on an in-memory model; keeps its temporary file alive.
struct ModelSession {
    _file: Prepared,
    _temp: expose::TempModel,
    inner: Box<dyn Session>,
}

impl Session for ModelSession {
    fn inputs(&self) -> &[IoSpec] {
        self.inner.inputs()
    }

    fn output_names(&self) -> &[String] {
        self.inner.output_names()
    }

    fn run(&mut self, inputs: &[(String, HostTensor)]) -> Result<NamedTensors> {
        self.inner.run(inputs)
    }
}

/// Opens a session on an in-memory model (saved to a temporary file, lowered for
/// tract when needed), exposing the values `extra_outputs` as outputs too.
pub fn open_model(
    rt: &dyn Runtime,
    model: &crate::ir::Model,
    extra_outputs: &[String],
) -> Result<Box<dyn Session>> {
    let temp = expose::TempModel::save_referencing(model, "onnxq-temp-model.onnx")?;
    let file = prepare(temp.path(), rt.name(), extra_outputs)?;
    let inner = rt.open(file.path())?;
    Ok(Box::new(ModelSession {
        _file: file,
        _temp: temp,
        inner,
    }))
}

/// Opens `path` on the selected runtime and runs it once (a convenience for
/// one-shot callers; loops should keep the session).
pub fn run_file(
    path: &Path,
    inputs: &[(String, HostTensor)],
    opts: &RuntimeOptions,
) -> Result<NamedTensors> {
    let sel = select(opts)?;
    let mut s = sel.runtime.open(path)?;
    s.run(inputs)
}

/// The display name of a model path in messages.
pub(crate) fn model_label(path: &Path) -> String {
    path.display().to_string()
}
