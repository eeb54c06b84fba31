//! The pass interface: what a rewrite of the model is, the context it runs in and
//! what it reports. Passes live in `crate::transforms`; `crate::pass` composes them.
use std::collections::BTreeMap;

use serde::Serialize;

use crate::error::Result;
use crate::ir::Model;

/// Shared context of a pipeline run.
#[derive(Clone, Debug, Default)]
pub struct PassCx {
    /// Show progress bars on a terminal.
    pub progress: bool,
    /// Seed for anything random (sample selection, random inputs).
    pub seed: u64,
}

/// Why a candidate was left alone.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Skip {
    pub node: String,
    pub reason: String,
}

/// What a pass did. Passes do not print; the CLI reports this.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PassOutcome {
    pub pass: String,
    pub changed: bool,
    pub counters: BTreeMap<String, u64>,
    pub skipped: Vec<Skip>,
    pub notes: Vec<String>,
    /// Per-layer output error of calibrated passes (GPTQ, AWQ).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<LayerError>,
    /// Per-weight precision chosen by `mixed-precision`, with each setting's cost.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub precision: Vec<PrecisionRow>,
}

/// One weight's row of the mixed-precision table.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct PrecisionRow {
    /// Report name ("layer 3 q_proj") or the weight's name.
    pub name: String,
    /// Parameters (weight elements).
    pub params: u64,
    /// The chosen setting ("int4/b32", "float").
    pub setting: String,
    /// Bytes of the chosen setting as stored.
    pub bytes: u64,
    /// Predicted relative output error ‖X·(W − Ŵ)‖² / ‖X·W‖² of the chosen setting.
    pub error: f64,
    /// Bit width the variance prior (arXiv 2411.06084) predicts, up to a constant.
    pub prior_bits: f64,
    /// Every setting considered: (setting, bytes, predicted error).
    pub candidates: Vec<(String, u64, f64)>,
    /// The nodes that read the weight and carry its setting (the accuracy tuning
    /// loop re-annotates them by name).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
}

/// Output error of one quantized layer (or group of layers sharing an input) on the
/// calibration data, relative to the float layer: ‖X·(W − Ŵ)‖² / ‖X·W‖², with plain
/// round-to-nearest and with the pass's algorithm.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct LayerError {
    pub name: String,
    pub rtn: f64,
    pub after: f64,
}

impl PassOutcome {
    pub fn new(pass: &str) -> Self {
        PassOutcome {
            pass: pass.to_string(),
            ..Default::default()
        }
    }

    pub fn count(&mut self, key: &str, n: u64) {
        *self.counters.entry(key.to_string()).or_insert(0) += n;
    }

    pub fn skip(&mut self, node: &str, reason: impl Into<String>) {
        self.skipped.push(Skip {
            node: node.to_string(),
            reason: reason.into(),
        });
    }
}

/// A rewrite of the model. `run` either finishes or leaves the model unchanged.
pub trait Pass: Send + Sync {
    fn name(&self) -> &'static str;
    /// Refuses models the pass cannot handle, before any work.
    fn requires(&self, _model: &Model) -> Result<()> {
        Ok(())
    }
    fn run(&self, model: &mut Model, cx: &mut PassCx) -> Result<PassOutcome>;
}

/// Metadata key every node a pass creates carries, naming the pass.
pub const PASS_KEY: &str = "onnxq.pass";
