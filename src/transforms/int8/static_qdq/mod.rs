//! Static (calibrated) 8-bit quantization in QDQ form.
//!
//! Runs the float model on calibration samples (crate::calib: .npz/.npy files,
//! seeded windows of a text tokenized with a tokenizer.json for decoders, or seeded
//! random inputs; statistics are reduced sample by sample, no activation is kept)
//! to learn the range of every activation it will quantize, then inserts `QuantizeLinear →
//! DequantizeLinear` pairs on activations and stores weights quantized behind a
//! `DequantizeLinear` (int32 biases for Conv/Gemm), choosing tensors as
//! onnxruntime's `quantize_static` (QDQ) does for the same op types, with the
//! same scale/zero-point arithmetic:
//! - Conv/ConvTranspose, Gemm, MatMul: activation inputs and outputs; constant
//!   weights (initializers or Constant nodes, directly or through Transpose) per
//!   tensor or per output channel; constant biases as int32 with scale
//!   input_scale·weight_scale (weight scales enlarged when that would overflow).
//!   By default a MatMul of two activations (attention scores) stays float;
//! - Relu/Clip after a quantized tensor: removed, their range given to the
//!   producer's output (Conv+Relu folding) when activations are asymmetric and the
//!   calibrated range clips as the activation would;
//! - MaxPool, AveragePool, Reshape, Flatten, Transpose, Squeeze, Unsqueeze, Slice,
//!   Resize, Split, TopK: output shares the input's scale when the input is
//!   quantized;
//! - any other listed op: every float input and output.
//!
//! The output of a quantized op is dequantized for all its readers; any other
//! quantized tensor only for the quantized readers, so an excluded node reads
//! float. Graph outputs keep their float value unless `quantize-outputs`.
//! Never quantized: ops in `keep-float` (Softmax and normalizations by default),
//! attention ops, nodes matching `exclude` (or found worst by `exclude-worst`),
//! values already produced by a DequantizeLinear. Main graph only.
mod emit;
mod plan;
mod ranges;

use emit::*;
use plan::*;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Deserialize;

use crate::calib::CalibData;
use crate::calib::{self, Method};
use crate::error::{Error, Result};
use crate::ir::{Attribute, DType, Graph, Model, NodeId, NodeSpec, Tensor, ValueId};
use crate::quant::int8::{self, QType, ScaleZp, WeightSpec};
use crate::rewrite::matchers::{constant, ConstSource};
use crate::rewrite::{Pass, PassCx, PassOutcome, PASS_KEY};
use crate::transforms::common::qtypes::{
    add_named, codes_tensor, drop_if_unused, scale_tensor, zp_tensor, ActivationType, WeightType,
};
use crate::transforms::common::select::{NodeOverride, Selection};

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum CalibMethod {
    #[default]
    Minmax,
    Entropy,
    Percentile,
    Distribution,
}

/// Which MatMul/Gemm/Conv groups `exclude-worst` leaves float.
#[derive(Deserialize, Debug, Clone, PartialEq)]
#[serde(untagged)]
pub enum ExcludeWorst {
    /// The N with the noisiest inputs.
    Count(usize),
    /// `"auto"`: all whose predicted input noise exceeds `exclude-noise`.
    Auto(String),
}

/// Predicted relative noise (step / (√12 · RMS)) above which `exclude-worst =
/// "auto"` leaves a group float. An int8 grid over a range of about ±4 RMS gives
/// ~0.01; on SmolLM2-135M every MLP down projection (whose inputs carry the
/// massive activations) lies between 0.08 and 1, every other group below.
pub const DEFAULT_EXCLUDE_NOISE: f64 = 0.075;

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct StaticConfig {
    /// Calibration data: a directory of .npz samples (or of <input>.npy
    /// directories), or one .npz file; every sample is used. Without it (and without
    /// `calib-text`), `calib-samples` seeded random inputs are used (and the report
    /// says so).
    pub calib: Option<String>,
    /// Calibration text for decoders (needs `tokenizer`): `calib-samples` seeded
    /// windows of `calib-seqlen` tokens, fed as input_ids, an all-ones mask,
    /// positions 0.. and an empty past KV cache (as gptq/awq).
    pub calib_text: Option<String>,
    /// Hugging Face tokenizer.json (byte-level BPE) for `calib-text`.
    pub tokenizer: Option<String>,
    /// Text windows or random inputs.
    pub calib_samples: usize,
    /// Tokens per text window.
    pub calib_seqlen: usize,
    /// Seed of the text windows and random inputs (default: the pipeline's seed).
    pub seed: Option<u64>,
    pub calib_method: CalibMethod,
    /// Percentile method: share of values kept, in %.
    pub percentile: f64,
    /// Histogram bins (Entropy, Percentile).
    pub num_bins: usize,
    /// Entropy: quantized levels the histogram is compared against.
    pub num_quantized_bins: usize,
    /// Percentile: histogram of |x| and a symmetric range (onnxruntime's default).
    pub percentile_symmetric: bool,
    pub activation_type: ActivationType,
    /// Symmetric activation ranges (zero point at the middle code).
    pub activation_symmetric: bool,
    pub weight_type: WeightType,
    pub per_channel: bool,
    pub reduce_range: bool,
    /// Op types to quantize (see the module docs for what each means).
    pub op_types: Vec<String>,
    /// Op types never quantized, even when listed in `op-types`.
    pub keep_float: Vec<String>,
    /// Node name patterns (`*` wildcards) to leave in float.
    pub exclude: Vec<String>,
    /// JSON file of per-node settings: `{"pattern": "skip" | {"activation-type":
    /// "int16"}}` (first matching pattern wins; int16 where nodes share a value).
    pub nodes_config: Option<String>,
    /// Leave float the groups of MatMul/Gemm/Conv nodes (nodes reading the same
    /// activation) whose input the per-tensor grid serves worst: outliers stretch
    /// the range, so the step is large against the typical value. Ranked by the
    /// predicted relative noise scale / (√12 · RMS) of the calibrated input (for
    /// weights without outlier rows, about the group's relative output error); `N`
    /// leaves the N worst float, `"auto"` every group above `exclude-noise`.
    /// Reported.
    pub exclude_worst: ExcludeWorst,
    /// `exclude-worst = "auto"`: predicted relative noise above which a group stays
    /// float.
    pub exclude_noise: f64,
    /// Also quantize graph outputs (as onnxruntime does); by default they stay exact.
    pub quantize_outputs: bool,
    /// Quantize only MatMuls whose B is a constant: products of two activations
    /// (attention scores) stay float. onnxruntime's QDQ quantizer quantizes both.
    pub matmul_const_b_only: bool,
    /// Op types whose outputs are not quantized (their inputs still are).
    pub exclude_output_ops: Vec<String>,
    /// Runtime calibration runs on: tract (default: embedded, the same ranges on
    /// every machine), ort (ONNX Runtime: faster on large models) or auto.
    pub runtime: String,
}

impl Default for StaticConfig {
    fn default() -> Self {
        StaticConfig {
            calib: None,
            calib_text: None,
            tokenizer: None,
            calib_samples: 8,
            calib_seqlen: 128,
            seed: None,
            calib_method: CalibMethod::Minmax,
            percentile: 99.999,
            num_bins: 2048,
            num_quantized_bins: 128,
            percentile_symmetric: true,
            activation_type: ActivationType::Int8,
            activation_symmetric: false,
            weight_type: WeightType::Int8,
            per_channel: false,
            reduce_range: false,
            op_types: DEFAULT_OPS.iter().map(|s| s.to_string()).collect(),
            keep_float: KEEP_FLOAT.iter().map(|s| s.to_string()).collect(),
            exclude: Vec::new(),
            nodes_config: None,
            exclude_worst: ExcludeWorst::Count(0),
            exclude_noise: DEFAULT_EXCLUDE_NOISE,
            quantize_outputs: false,
            matmul_const_b_only: true,
            exclude_output_ops: Vec::new(),
            runtime: "tract".into(),
        }
    }
}

pub const STATIC_KEYS: &[&str] = &[
    "calib",
    "calib-text",
    "tokenizer",
    "calib-samples",
    "calib-seqlen",
    "seed",
    "calib-method",
    "percentile",
    "num-bins",
    "num-quantized-bins",
    "percentile-symmetric",
    "activation-type",
    "activation-symmetric",
    "weight-type",
    "per-channel",
    "reduce-range",
    "op-types",
    "keep-float",
    "exclude",
    "nodes-config",
    "exclude-worst",
    "exclude-noise",
    "quantize-outputs",
    "matmul-const-b-only",
    "exclude-output-ops",
    "runtime",
];

/// Ops quantized by default: the compute-heavy ones and those a quantized tensor
/// passes through unchanged. Elementwise Add/Mul are left out: in decoders they
/// carry the residual stream and the normalizations, which int8 destroys.
pub const DEFAULT_OPS: &[&str] = &[
    "Conv",
    "ConvTranspose",
    "MatMul",
    "Gemm",
    "Relu",
    "Clip",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "Reshape",
    "Flatten",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
];

/// Ops that must stay float: their inputs and outputs need the dynamic range.
pub const KEEP_FLOAT: &[&str] = &[
    "Softmax",
    "LogSoftmax",
    "LayerNormalization",
    "RMSNormalization",
    "SimplifiedLayerNormalization",
    "SkipLayerNormalization",
    "SkipSimplifiedLayerNormalization",
    "GroupNormalization",
    "InstanceNormalization",
    "BatchNormalization",
    "LpNormalization",
];

/// Never quantized whatever the configuration (onnxruntime's tools would rewrite
/// some of these into ops that do not load).
const ATTENTION: &[&str] = &[
    "Attention",
    "MultiHeadAttention",
    "GroupQueryAttention",
    "RotaryEmbedding",
];

const SHARING: &[&str] = &[
    "MaxPool",
    "AveragePool",
    "Reshape",
    "Flatten",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "Slice",
    "Resize",
    "Split",
    "TopK",
];

const NAME: &str = "int8-static-qdq";

pub struct StaticQdq {
    pub config: StaticConfig,
    selection: Selection,
    data: CalibData,
}

impl StaticQdq {
    pub fn new(config: StaticConfig) -> Result<Self> {
        if config.calib.is_none() && config.calib_samples == 0 {
            return Err(Error::invalid(
                "calib-samples = 0 and no calibration files: nothing to calibrate on",
            ));
        }
        if config.calib_text.is_some() && config.calib_seqlen == 0 {
            return Err(Error::invalid("calib-seqlen must be at least 1"));
        }
        let data = CalibData::open(
            config.calib.as_deref(),
            config.calib_text.as_deref(),
            config.tokenizer.as_deref(),
        )?;
        if !(0.0..=100.0).contains(&config.percentile) {
            return Err(Error::invalid(format!(
                "percentile {} is not within [0, 100]",
                config.percentile
            )));
        }
        if config.calib_method == CalibMethod::Entropy
            && (config.num_quantized_bins == 0
                || config.num_quantized_bins / 2 > config.num_bins / 2)
        {
            return Err(Error::invalid(format!(
                "entropy calibration needs num-quantized-bins ({}) <= num-bins ({})",
                config.num_quantized_bins, config.num_bins
            )));
        }
        if config.activation_type == ActivationType::Int8 && config.weight_type == WeightType::Uint8
        {
            return Err(Error::invalid(
                "int8 activations with uint8 weights have no kernels in ONNX Runtime; use \
                 weight-type = \"int8\" or activation-type = \"uint8\"",
            ));
        }
        if let ExcludeWorst::Auto(word) = &config.exclude_worst {
            if word != "auto" {
                return Err(Error::invalid(format!(
                    "exclude-worst takes a count or \"auto\", not '{word}'"
                )));
            }
        }
        if config.exclude_noise.is_nan() || config.exclude_noise <= 0.0 {
            return Err(Error::invalid(format!(
                "exclude-noise must be above 0, not {}",
                config.exclude_noise
            )));
        }
        config
            .runtime
            .parse::<crate::runtime::RuntimeKind>()
            .map_err(Error::invalid)?;
        let selection = Selection::new(
            &config.exclude,
            &config.op_types,
            config.nodes_config.as_deref(),
        )?;
        selection.refuse_unless(&["activation-type"], "int8-static-qdq")?;
        // Relu folding and Q/DQ placement are planned for the pass-wide type.
        let float8_override = selection.overrides().any(|o| {
            matches!(o, NodeOverride::Quantize { activation_type: Some(t), .. } if t.is_float8())
        });
        if float8_override {
            return Err(Error::invalid(
                "nodes-config: float8 activations apply to the whole pass (activation-type)",
            ));
        }
        Ok(StaticQdq {
            config,
            selection,
            data,
        })
    }

    /// The runtime calibration runs on.
    pub(super) fn runtime(&self) -> Result<Box<dyn crate::runtime::Runtime>> {
        crate::runtime::named(&self.config.runtime)
    }

    pub(super) fn method(&self) -> Method {
        let c = &self.config;
        match c.calib_method {
            CalibMethod::Minmax => Method::MinMax,
            CalibMethod::Distribution => Method::Distribution,
            CalibMethod::Entropy => Method::Entropy {
                bins: c.num_bins,
                quantized_bins: c.num_quantized_bins,
            },
            CalibMethod::Percentile => Method::Percentile {
                bins: c.num_bins,
                percentile: c.percentile,
                symmetric: c.percentile_symmetric,
            },
        }
    }

    pub(super) fn weight_spec(&self, axis: Option<usize>) -> WeightSpec {
        let per_channel = axis.is_some();
        WeightSpec {
            qtype: self.config.weight_type.qtype(),
            // Per-channel weights are symmetric: QLinear kernels want one zero point.
            symmetric: per_channel || self.config.weight_type == WeightType::Int8,
            reduce_range: self.config.reduce_range,
            axis,
        }
    }

    /// Constants read by an elementwise op are quantized like activations.
    pub(super) fn const_act_spec(&self) -> WeightSpec {
        WeightSpec {
            qtype: self.config.activation_type.qtype(),
            symmetric: self.config.activation_symmetric,
            reduce_range: self.config.reduce_range,
            axis: None,
        }
    }

    pub(super) fn skipped_op(&self, op: &str) -> bool {
        ATTENTION.contains(&op) || self.config.keep_float.iter().any(|k| k == op)
    }
}

impl Pass for StaticQdq {
    fn name(&self) -> &'static str {
        NAME
    }

    fn requires(&self, model: &Model) -> Result<()> {
        if !model.has_graph {
            return Err(Error::invalid("the model has no graph to quantize"));
        }
        Ok(())
    }

    fn run(&self, model: &mut Model, cx: &mut PassCx) -> Result<PassOutcome> {
        let mut outcome = PassOutcome::new(NAME);
        let mut plan = self.plan(&model.graph, &mut PassOutcome::default(), &BTreeSet::new());
        if plan.order.is_empty() && plan.weights.is_empty() {
            self.plan(&model.graph, &mut outcome, &BTreeSet::new());
            return Ok(outcome);
        }
        let g = &model.graph;
        // Folded activations' inputs too, in case their range forbids the fold.
        let observe: BTreeSet<String> = plan
            .order
            .iter()
            .copied()
            .chain(plan.merges.iter().filter_map(|&(r, _)| g.node(r).input(0)))
            .map(|v| g.value_name(v).to_string())
            .collect();
        let (count, mut feeds) = self.data.feeds_for(
            model,
            self.config.calib_samples,
            self.config.calib_seqlen,
            self.config.seed.unwrap_or(cx.seed),
            "ranges",
            &mut outcome,
        )?;
        let progress =
            crate::transforms::common::nbits::progress_bar(cx.progress, 0, "calibrating");
        let cal = calib::observe::calibrate_with(
            model,
            &observe,
            count,
            &mut feeds,
            self.method(),
            self.runtime()?.as_ref(),
            &progress,
        )?;
        progress.finish_and_clear();
        outcome.notes.extend(cal.notes.iter().cloned());
        outcome.count("calibration samples", cal.samples as u64);
        let mut excluded = BTreeSet::new();
        if self.config.exclude_worst != ExcludeWorst::Count(0) {
            excluded = self.worst_nodes(&model.graph, &plan, &cal, &mut outcome)?;
            plan = self.plan(&model.graph, &mut PassOutcome::default(), &excluded);
        }
        self.plan(&model.graph, &mut outcome, &excluded);
        self.check_folds(&model.graph, &mut plan, &cal, &mut outcome);
        let params = self.activation_params(&model.graph, &plan, &cal)?;
        let qdq_domain = self.prepare_opset(model, &plan, &mut outcome)?;
        let g = &mut model.graph;
        apply(self, g, &plan, &params, &qdq_domain, &mut outcome)?;
        outcome.count("nodes quantized", plan.nodes as u64);
        outcome.changed = true;
        Ok(outcome)
    }
}
