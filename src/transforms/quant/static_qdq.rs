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
use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Deserialize;

use super::dynamic::{
    add_named, codes_tensor, drop_if_unused, scale_tensor, zp_tensor, WeightType,
};
use super::gptq::CalibData;
use super::select::{NodeOverride, Selection};
use crate::calib::{self, Method, Source};
use crate::error::{Error, Result};
use crate::ir::{Attribute, DType, Graph, Model, NodeId, NodeSpec, Tensor, ValueId};
use crate::pass::{Pass, PassCx, PassOutcome, PASS_KEY};
use crate::quant::int8::{self, QType, ScaleZp, WeightSpec};
use crate::rewrite::matchers::{constant, ConstSource};

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum CalibMethod {
    #[default]
    Minmax,
    Entropy,
    Percentile,
    Distribution,
}

/// Integer type of quantized activations.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ActivationType {
    #[default]
    Int8,
    Uint8,
    /// Needs opset 21 (raised when possible, else com.microsoft Q/DQ).
    Int16,
    /// 8-bit float (1-4-3, no infinities, max 448), zero point 0, scale absmax /
    /// 448: a relative grid that outliers cannot flatten. Needs opset 19. Q/DQ
    /// only (no integer kernels); constants of elementwise ops stay float.
    Float8e4m3fn,
}

/// Largest finite float8 e4m3fn value.
pub const FLOAT8_E4M3FN_MAX: f32 = 448.0;

impl ActivationType {
    /// The integer type; float8 is modelled as symmetric int8 where only an
    /// integer grid is known (SmoothQuant's search refuses it instead).
    pub fn qtype(self) -> QType {
        match self {
            ActivationType::Int8 | ActivationType::Float8e4m3fn => QType::I8,
            ActivationType::Uint8 => QType::U8,
            ActivationType::Int16 => QType::I16,
        }
    }

    pub fn is_float8(self) -> bool {
        self == ActivationType::Float8e4m3fn
    }

    /// Scale and zero point of an activation calibrated to [lo, hi].
    fn params(self, lo: f32, hi: f32, symmetric: bool) -> std::result::Result<ScaleZp, String> {
        if self.is_float8() {
            if !lo.is_finite() || !hi.is_finite() {
                return Err(format!("range [{lo}, {hi}] is not finite"));
            }
            let absmax = lo.abs().max(hi.abs());
            let scale = if absmax > 0.0 {
                absmax / FLOAT8_E4M3FN_MAX
            } else {
                1.0
            };
            return Ok(ScaleZp {
                scale,
                zero_point: 0,
            });
        }
        let (qmin, qmax) = self.qtype().range(false, symmetric);
        int8::scale_zp(lo, hi, qmin, qmax, symmetric).map_err(|e| e.to_string())
    }

    /// The zero-point tensor of `p`.
    fn zero_point(self, p: ScaleZp) -> Tensor {
        if self.is_float8() {
            // float8 +0.0 is the all-zero byte.
            return Tensor::from_raw("", DType::F8E4M3FN, vec![], vec![0u8].into());
        }
        zp_tensor(&[p], self.qtype(), vec![])
    }
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
    fn runtime(&self) -> Result<Box<dyn crate::runtime::Runtime>> {
        runtime_named(&self.config.runtime)
    }

    fn method(&self) -> Method {
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

    fn weight_spec(&self, axis: Option<usize>) -> WeightSpec {
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
    fn const_act_spec(&self) -> WeightSpec {
        WeightSpec {
            qtype: self.config.activation_type.qtype(),
            symmetric: self.config.activation_symmetric,
            reduce_range: self.config.reduce_range,
            axis: None,
        }
    }

    fn skipped_op(&self, op: &str) -> bool {
        ATTENTION.contains(&op) || self.config.keep_float.iter().any(|k| k == op)
    }
}

/// Calibration feeds of `data` for `model` and how many samples they give: every
/// file of a calibration set, `samples` seeded windows of `seqlen` tokens of a text
/// (refused when the tokenizer's ids do not fit the model's embedding table), or
/// `samples` seeded random inputs (noted in the report with `what` they are for).
pub(crate) fn calib_feeds<'a>(
    data: &'a CalibData,
    model: &Model,
    samples: usize,
    seqlen: usize,
    seed: u64,
    what: &str,
    outcome: &mut PassOutcome,
) -> Result<(usize, Box<calib::observe::Feeds<'a>>)> {
    match data {
        CalibData::Random => {
            outcome.notes.push(format!(
                "no calibration data: {what} come from {samples} seeded random inputs (seed \
                 {seed}) shaped like the model's inputs; give calibration files or a text and \
                 tokenizer for statistics that match real data"
            ));
            let specs = model.graph.input_specs();
            let hints = crate::verify::inputs::InputHints::from_model(model);
            let src = Source::Random {
                samples,
                seed,
                dims: BTreeMap::new(),
            };
            Ok((samples, Box::new(move |i| src.sample(i, &specs, &hints))))
        }
        CalibData::Files(_) => data.feeds(model, usize::MAX, seqlen, seed, outcome),
        CalibData::Text(_) => data.feeds(model, samples, seqlen, seed, outcome),
    }
}

/// The runtime named `name` (tract, ort or auto).
pub(crate) fn runtime_named(name: &str) -> Result<Box<dyn crate::runtime::Runtime>> {
    let kind = name
        .parse::<crate::runtime::RuntimeKind>()
        .map_err(Error::invalid)?;
    Ok(crate::runtime::select(&crate::runtime::RuntimeOptions {
        kind,
        ..Default::default()
    })?
    .runtime)
}

/// How a node reads one constant weight.
#[derive(Clone, Debug)]
pub(crate) struct WeightUse {
    pub node: NodeId,
    pub slot: usize,
    /// The constant value (behind the Transpose, if any).
    pub value: ValueId,
    pub source: ConstSource,
    pub transpose: Option<NodeId>,
    pub spec: WeightSpec,
}

#[derive(Clone, Debug)]
struct BiasUse {
    node: NodeId,
    value: ValueId,
    source: ConstSource,
    input: ValueId,
    /// Index into `Plan::weights` of the node's weight.
    weight: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mark {
    /// Its own calibrated range.
    Act,
    /// Shares the scale/zero point of another quantized tensor.
    Shared(ValueId),
}

/// What the pass will do, decided on the unmodified graph.
#[derive(Default)]
struct Plan {
    order: Vec<ValueId>,
    marks: HashMap<ValueId, Mark>,
    weights: Vec<WeightUse>,
    biases: Vec<BiasUse>,
    /// (Relu/Clip, its producer): the producer takes over the activation's output.
    merges: Vec<(NodeId, NodeId)>,
    /// Relu/Clip whose input takes the output's range.
    range_from_output: Vec<(ValueId, ValueId)>,
    nodes: usize,
    /// Every node the pass quantizes: only these read the dequantized copies.
    members: BTreeSet<NodeId>,
    /// Activations whose type `nodes-config` sets (others: `activation-type`).
    types: HashMap<ValueId, ActivationType>,
}

impl Plan {
    fn is_marked(&self, v: ValueId) -> bool {
        self.marks.contains_key(&v)
    }

    /// An own-range mark never replaces an existing one; sharing always does (as
    /// onnxruntime's QDQ quantizer).
    fn mark(&mut self, v: ValueId, m: Mark) {
        match self.marks.get(&v) {
            Some(_) if m == Mark::Act => return,
            Some(_) => {}
            None => self.order.push(v),
        }
        self.marks.insert(v, m);
    }

    fn unmark(&mut self, v: ValueId) {
        self.marks.remove(&v);
        self.order.retain(|&x| x != v);
    }
}

/// A weight input of `node` at `slot`: the constant read directly or through a
/// 2-D Transpose.
fn weight_at(
    g: &Graph,
    node: NodeId,
    slot: usize,
) -> Option<(ValueId, ConstSource, Option<NodeId>)> {
    let v = g.node(node).input(slot)?;
    if let Some((src, t)) = constant(g, v) {
        return t.dtype().is_float().then_some((v, src, None));
    }
    let p = g.producer(v)?;
    let t = g.node(p);
    if !t.is("", "Transpose") || g.value(v).uses().len() != 1 {
        return None;
    }
    let perm = t.attr("perm").map(|a| a.ints.clone());
    let w = t.input(0)?;
    let (src, tensor) = constant(g, w)?;
    let two_d = tensor.dims.len() == 2 && perm.as_ref().is_none_or(|p| p == &[1, 0]);
    (two_d && tensor.dtype().is_float()).then_some((w, src, Some(p)))
}

impl StaticQdq {
    fn plan(&self, g: &Graph, outcome: &mut PassOutcome, excluded: &BTreeSet<String>) -> Plan {
        let mut plan = Plan::default();
        let from_dq: BTreeSet<ValueId> = g
            .nodes()
            .filter(|(_, n)| n.op_type == "DequantizeLinear")
            .flat_map(|(_, n)| n.outputs().iter().flatten().copied().collect::<Vec<_>>())
            .collect();
        // ONNX Runtime (1.32) drops a Relu whose only reader is a QuantizeLinear
        // when the zero point looks like the bottom of the type, and takes float8's
        // zero for that: with float8 a Relu output is never quantized; its input is,
        // and Relu commutes with a symmetric grid, so the values are the same.
        let float8 = self.config.activation_type.is_float8();
        let after_relu =
            |v: ValueId| float8 && g.producer(v).is_some_and(|p| g.node(p).op_type == "Relu");
        let act = |plan: &mut Plan, v: Option<ValueId>| {
            if let Some(v) = v {
                if !from_dq.contains(&v) && constant(g, v).is_none() && !after_relu(v) {
                    plan.mark(v, Mark::Act);
                }
            }
        };
        for (id, node) in g.nodes() {
            let op = node.op_type.as_str();
            if !node.domain().is_empty()
                || !self.selection.op_included(op)
                || op == "QuantizeLinear"
                || op == "DequantizeLinear"
            {
                continue;
            }
            if self.skipped_op(op) {
                outcome.skip(node.name(), format!("{op} stays float (keep-float)"));
                continue;
            }
            if self.selection.resolve(node.name()) == NodeOverride::Skip
                || excluded.contains(node.name())
            {
                outcome.skip(node.name(), "excluded");
                continue;
            }
            plan.members.insert(id);
            let before = (plan.order.len(), plan.weights.len(), plan.merges.len());
            match op {
                "MatMul" if self.config.matmul_const_b_only && weight_at(g, id, 1).is_none() => {
                    outcome.skip(node.name(), "B is not a constant (matmul-const-b-only)");
                    continue;
                }
                "Conv" | "ConvTranspose" | "Gemm" | "MatMul" => {
                    self.plan_weighted(g, id, &mut plan, &act, outcome)
                }
                "Relu" | "Clip" => {
                    let (Some(i), Some(o)) = (node.input(0), node.output(0)) else {
                        continue;
                    };
                    if !plan.is_marked(i) {
                        continue;
                    }
                    let producer = g.producer(i);
                    // Only an asymmetric integer grid clips at 0 as Relu does.
                    let mergeable = !self.config.activation_symmetric
                        && !self.config.activation_type.is_float8()
                        && producer.is_some()
                        && g.value(i).uses().len() == 1
                        && !g.is_graph_output(i)
                        && !g.is_graph_input(i)
                        && plan.marks.get(&i) == Some(&Mark::Act);
                    if mergeable {
                        plan.unmark(i);
                        plan.merges.push((id, producer.expect("checked")));
                    } else {
                        plan.range_from_output.push((i, o));
                    }
                    act(&mut plan, Some(o));
                }
                _ if SHARING.contains(&op) => {
                    let Some(i) = node.input(0) else { continue };
                    if plan.is_marked(i) {
                        for o in node.outputs().iter().flatten() {
                            plan.mark(*o, Mark::Shared(i));
                        }
                    }
                }
                "Where" => {
                    if node.input(1).is_some_and(|v| plan.is_marked(v))
                        && node.input(2).is_some_and(|v| plan.is_marked(v))
                    {
                        for o in node.outputs().iter().flatten() {
                            act(&mut plan, Some(*o));
                        }
                    }
                }
                _ => {
                    for (slot, v) in node.inputs().iter().enumerate() {
                        let Some(v) = *v else { continue };
                        match constant(g, v) {
                            // float8 constants would need float8 storage: they stay float.
                            Some((_, t))
                                if t.dtype().is_float()
                                    && self.config.activation_type.is_float8() => {}
                            Some((src, t)) if t.dtype().is_float() => {
                                plan.weights.push(WeightUse {
                                    node: id,
                                    slot,
                                    value: v,
                                    source: src,
                                    transpose: None,
                                    spec: self.const_act_spec(),
                                })
                            }
                            Some(_) => {}
                            None => act(&mut plan, Some(v)),
                        }
                    }
                    for o in node.outputs().iter().flatten() {
                        act(&mut plan, Some(*o));
                    }
                }
            }
            if (plan.order.len(), plan.weights.len(), plan.merges.len()) != before {
                plan.nodes += 1;
            }
        }
        self.plan_types(g, &mut plan);
        plan
    }

    /// Per-node activation types (`nodes-config`): every quantized value the node
    /// reads or writes takes the type (through shared scales, the value that owns
    /// them); where two nodes disagree, int16 wins.
    fn plan_types(&self, g: &Graph, plan: &mut Plan) {
        for &n in &plan.members {
            let node = g.node(n);
            let NodeOverride::Quantize {
                activation_type: Some(t),
                ..
            } = self.selection.resolve(node.name())
            else {
                continue;
            };
            for &v in node.inputs().iter().chain(node.outputs()).flatten() {
                let mut root = v;
                while let Some(Mark::Shared(up)) = plan.marks.get(&root) {
                    root = *up;
                }
                if plan.marks.get(&root) == Some(&Mark::Act) {
                    let e = plan.types.entry(root).or_insert(t);
                    if t == ActivationType::Int16 {
                        *e = t;
                    }
                }
            }
        }
    }

    /// The domain of the Q/DQ of a value `nodes-config` gives type `t`, when not
    /// the pass's: int16 among 8-bit activations is written as com.microsoft
    /// Q/DQ. At opset 21 in the default domain, ONNX Runtime (1.32) fails to load
    /// such a mix (its QDQ propagation builds an int8 Q with a uint8 zero point).
    fn override_domain(&self, t: ActivationType) -> Option<&'static str> {
        (t == ActivationType::Int16 && self.config.activation_type != ActivationType::Int16)
            .then_some("com.microsoft")
    }

    /// The type of activation `v`'s grid.
    fn type_of(&self, plan: &Plan, v: ValueId) -> ActivationType {
        plan.types
            .get(&v)
            .copied()
            .unwrap_or(self.config.activation_type)
    }

    fn plan_weighted(
        &self,
        g: &Graph,
        id: NodeId,
        plan: &mut Plan,
        act: &dyn Fn(&mut Plan, Option<ValueId>),
        outcome: &mut PassOutcome,
    ) {
        let node = g.node(id);
        let op = node.op_type.as_str();
        let rank_of = |v: ValueId| constant(g, v).map_or(0, |(_, t)| t.dims.len());
        let (wslot, axis) = match op {
            "Conv" => (1, 0),
            "ConvTranspose" => (1, 1),
            "Gemm" => (
                1,
                if node.attr_int("transB").unwrap_or(0) != 0 {
                    0
                } else {
                    1
                },
            ),
            _ => (1, 1),
        };
        // MatMul: any constant input is a weight (onnxruntime does the same for A).
        let mut weight_index = None;
        for slot in 0..node.inputs().len().min(2) {
            let w = if slot == wslot || op == "MatMul" {
                weight_at(g, id, slot)
            } else {
                None
            };
            match w {
                Some((value, source, transpose)) => {
                    let rank = if transpose.is_some() {
                        2
                    } else {
                        rank_of(value)
                    };
                    let axis = (self.config.per_channel && axis < rank).then_some(axis);
                    if slot == wslot {
                        weight_index = Some(plan.weights.len());
                    }
                    plan.weights.push(WeightUse {
                        node: id,
                        slot,
                        value,
                        source,
                        transpose,
                        spec: self.weight_spec(axis),
                    });
                }
                None => act(plan, node.input(slot)),
            }
        }
        if !self.config.exclude_output_ops.iter().any(|o| o == op) {
            for o in node.outputs().iter().take(1).flatten() {
                act(plan, Some(*o));
            }
        }
        let Some(bias) = node.input(2) else { return };
        if op == "MatMul" {
            return;
        }
        let beta = node.attr_float("beta").unwrap_or(1.0);
        match (constant(g, bias), weight_index, node.input(0)) {
            (Some((src, t)), Some(w), Some(input))
                if t.dtype().is_float() && beta == 1.0 && plan.is_marked(input) =>
            {
                plan.biases.push(BiasUse {
                    node: id,
                    value: bias,
                    source: src,
                    input,
                    weight: w,
                })
            }
            _ => outcome.skip(
                node.name(),
                "bias left float (not a constant, beta != 1, or weight not constant)",
            ),
        }
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
        let (count, mut feeds) = calib_feeds(
            &self.data,
            model,
            self.config.calib_samples,
            self.config.calib_seqlen,
            self.config.seed.unwrap_or(cx.seed),
            "ranges",
            &mut outcome,
        )?;
        let progress = super::kernels::progress_bar(cx.progress, 0, "calibrating");
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
        let qdq_domain = self.prepare_opset(model, &plan)?;
        let g = &mut model.graph;
        apply(self, g, &plan, &params, &qdq_domain, &mut outcome)?;
        outcome.count("nodes quantized", plan.nodes as u64);
        outcome.changed = true;
        Ok(outcome)
    }
}

impl StaticQdq {
    /// A Relu/Clip is folded into its producer's QuantizeLinear only when the
    /// quantized range clips as it would: [0, ·] for Relu, within [min, max] for
    /// Clip. Symmetric ranges (Distribution calibration) keep the activation.
    fn check_folds(
        &self,
        g: &Graph,
        plan: &mut Plan,
        cal: &calib::Calibration,
        outcome: &mut PassOutcome,
    ) {
        let mut keep = Vec::new();
        for (act, producer) in std::mem::take(&mut plan.merges) {
            let node = g.node(act);
            let (Some(i), Some(o)) = (node.input(0), node.output(0)) else {
                continue;
            };
            let range = cal.ranges.get(g.value_name(o)).copied();
            let bound = |slot: usize, attr: &str, default: f32| {
                node.input(slot)
                    .and_then(|v| constant(g, v))
                    .and_then(|(_, t)| t.to_f32().ok())
                    .and_then(|v| v.first().copied())
                    .or_else(|| node.attr_float(attr))
                    .unwrap_or(default)
            };
            let foldable = match (node.op_type.as_str(), range) {
                ("Relu", Some((lo, _))) => lo >= 0.0,
                ("Clip", Some((lo, hi))) => {
                    lo >= bound(1, "min", f32::NEG_INFINITY) && hi <= bound(2, "max", f32::INFINITY)
                }
                _ => false,
            };
            if foldable {
                keep.push((act, producer));
            } else {
                outcome.skip(
                    node.name(),
                    "kept: the calibrated range would not clip as the activation does",
                );
                plan.mark(i, Mark::Act);
                plan.range_from_output.push((i, o));
            }
        }
        plan.merges = keep;
    }

    /// Scale/zero point of every calibrated activation, after onnxruntime's range
    /// adjustments (a Relu/Clip input takes its output's range).
    fn activation_params(
        &self,
        g: &Graph,
        plan: &Plan,
        cal: &calib::Calibration,
    ) -> Result<HashMap<ValueId, ScaleZp>> {
        let mut ranges: HashMap<ValueId, (f32, f32)> = HashMap::new();
        for (name, r) in &cal.ranges {
            if let Some(v) = g.find(name) {
                ranges.insert(v, *r);
            }
        }
        for &(i, o) in &plan.range_from_output {
            if g.value(i).uses().len() == 1 {
                if let Some(r) = ranges.get(&o).copied() {
                    ranges.insert(i, r);
                }
            }
        }
        let sym = self.config.activation_symmetric;
        let mut out = HashMap::new();
        for &v in &plan.order {
            if plan.marks.get(&v) != Some(&Mark::Act) {
                continue;
            }
            let Some(&(lo, hi)) = ranges.get(&v) else {
                continue; // not float
            };
            let p = self
                .type_of(plan, v)
                .params(lo, hi, sym)
                .map_err(|e| Error::tensor(g.value_name(v), e))?;
            out.insert(v, p);
        }
        Ok(out)
    }

    /// Raises the opset for per-axis DQ (13), float8 (19) or 16-bit Q/DQ (21);
    /// returns the domain Q/DQ nodes use ("" or com.microsoft when 21 is refused).
    fn prepare_opset(&self, model: &mut Model, plan: &Plan) -> Result<String> {
        if plan
            .types
            .values()
            .any(|t| self.override_domain(*t).is_some())
        {
            model.require_opset("com.microsoft", 1);
        }
        if self.config.activation_type.is_float8() {
            super::opset::raise_default_opset(model, 19)
                .map_err(|e| Error::invalid(format!("float8 activations need opset 19: {e}")))?;
            if model.ir_version.unwrap_or(0) < 9 {
                model.ir_version = Some(9);
            }
            return Ok(String::new());
        }
        if self.config.activation_type == ActivationType::Int16 {
            if super::opset::raise_default_opset(model, 21).is_ok() {
                if model.ir_version.unwrap_or(0) < 10 {
                    model.ir_version = Some(10);
                }
                return Ok(String::new());
            }
            model.require_opset("com.microsoft", 1);
            return Ok("com.microsoft".into());
        }
        if model.opset("").unwrap_or(1) < 13 {
            super::opset::raise_default_opset(model, 13)?;
        }
        Ok(String::new())
    }

    /// The nodes of the MatMul/Gemm/Conv groups (nodes reading one activation, so
    /// sharing its quantization) `exclude-worst` leaves float, ranked by the
    /// predicted relative noise of their input on the calibrated grid,
    /// scale / (√12 · RMS): uniform rounding noise against the signal. Outlier
    /// channels or tokens stretch the range and show up here. No extra model runs:
    /// the calibration statistics decide, so this scales to LLMs.
    fn worst_nodes(
        &self,
        g: &Graph,
        plan: &Plan,
        cal: &calib::Calibration,
        outcome: &mut PassOutcome,
    ) -> Result<BTreeSet<String>> {
        let mut groups: BTreeMap<ValueId, BTreeSet<String>> = BTreeMap::new();
        for w in &plan.weights {
            let n = g.node(w.node);
            if matches!(n.op_type.as_str(), "MatMul" | "Gemm" | "Conv") {
                if let Some(x) = n.input(0) {
                    groups.entry(x).or_default().insert(n.name().to_string());
                }
            }
        }
        let at = self.config.activation_type;
        let sym = self.config.activation_symmetric;
        let mut scored = Vec::new();
        for (x, members) in groups {
            let name = g.value_name(x);
            let (Some(&(lo, hi)), Some(&rms)) = (cal.ranges.get(name), cal.rms.get(name)) else {
                continue; // shares an upstream scale, or not float
            };
            if rms <= 0.0 {
                continue;
            }
            let p = at.params(lo, hi, sym).map_err(|e| Error::tensor(name, e))?;
            // float8's grid is relative (3 mantissa bits: a step of 1/8 of the
            // value's binade) down to its subnormal step, 2⁻⁹ of the scale: an
            // outlier-stretched range only hurts once typical values sink there.
            let step = if at.is_float8() {
                (rms as f64 / 8.0).max(p.scale as f64 / 512.0)
            } else {
                p.scale as f64
            };
            let noise = step / (12f64.sqrt() * rms as f64);
            scored.push((noise, name.to_string(), members));
        }
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let keep = match &self.config.exclude_worst {
            ExcludeWorst::Count(n) => *n,
            ExcludeWorst::Auto(_) => scored
                .iter()
                .take_while(|s| s.0 > self.config.exclude_noise)
                .count(),
        };
        if let Some((noise, x, _)) = scored.get(keep) {
            outcome.notes.push(format!(
                "noisiest input kept quantized: '{x}', predicted noise {:.1}% of its RMS",
                noise * 100.0
            ));
        }
        let mut out = BTreeSet::new();
        for (rank, (noise, x, members)) in scored.into_iter().take(keep).enumerate() {
            let names: Vec<&str> = members.iter().map(String::as_str).collect();
            outcome.notes.push(format!(
                "left float {}: the int8 step of their input '{x}' is predicted to add noise \
                 of {:.1}% of its RMS (outliers stretch its range; worst #{})",
                names.join(", "),
                noise * 100.0,
                rank + 1
            ));
            outcome.count("nodes left float (worst)", members.len() as u64);
            out.extend(members);
        }
        Ok(out)
    }
}

/// Scale/zero point initializers of one quantized tensor.
#[derive(Clone, Copy)]
struct ParamVals {
    scale: ValueId,
    zero_point: ValueId,
}

fn apply(
    pass: &StaticQdq,
    g: &mut Graph,
    plan: &Plan,
    params: &HashMap<ValueId, ScaleZp>,
    domain: &str,
    outcome: &mut PassOutcome,
) -> Result<()> {
    // Relu/Clip folding: the producer takes over the activation's output value.
    let mut remap: HashMap<NodeId, NodeId> = HashMap::new();
    for &(relu, producer) in &plan.merges {
        let p = g.node(producer).clone();
        let mut spec = NodeSpec::new(p.domain(), &p.op_type)
            .name(p.name().to_string())
            .inputs(p.inputs().to_vec())
            .meta(PASS_KEY, NAME);
        spec.attributes = p.attributes.clone();
        let new = g.swap_node(relu, spec)?;
        g.remove_node(producer)?;
        remap.insert(producer, new);
        outcome.count("activations folded", 1);
    }
    let outputs = pass.config.quantize_outputs;
    let root_of = |mut v: ValueId| {
        while let Some(Mark::Shared(up)) = plan.marks.get(&v) {
            v = *up;
        }
        v
    };
    let mut made: HashMap<ValueId, ParamVals> = HashMap::new();
    // Activations with their own range, then those sharing one (in plan order, so a
    // provider is always done first).
    for &v in &plan.order {
        let Mark::Act = plan.marks[&v] else { continue };
        let Some(p) = params.get(&v) else { continue };
        let base = g.value_name(v).to_string();
        let pv = ParamVals {
            scale: add_named(g, &format!("{base}_scale"), scale_tensor(&[*p], vec![]))?,
            zero_point: add_named(
                g,
                &format!("{base}_zero_point"),
                pass.type_of(plan, v).zero_point(*p),
            )?,
        };
        made.insert(v, pv);
        let d = pass
            .override_domain(pass.type_of(plan, v))
            .unwrap_or(domain);
        insert_qdq(g, v, pv, d, outputs, &plan.members, &mut remap)?;
        outcome.count("activations quantized", 1);
    }
    for &v in &plan.order {
        let Mark::Shared(_) = plan.marks[&v] else {
            continue;
        };
        let Some(&pv) = made.get(&root_of(v)) else {
            continue;
        };
        made.insert(v, pv);
        let d = pass
            .override_domain(pass.type_of(plan, root_of(v)))
            .unwrap_or(domain);
        insert_qdq(g, v, pv, d, outputs, &plan.members, &mut remap)?;
        outcome.count("activations quantized", 1);
    }
    let node_of = |old: NodeId| remap.get(&old).copied().unwrap_or(old);
    // Parameters nobody reads (graph outputs without consumers) go again.
    for pv in made.values() {
        if g.value(pv.scale).uses().is_empty() && g.initializer(pv.scale).is_some() {
            g.remove_initializer(pv.scale)?;
            g.remove_initializer(pv.zero_point)?;
        }
    }
    // Weights: parameters first, enlarged for int32 biases, then codes.
    let mut wparams: Vec<Option<Vec<ScaleZp>>> = vec![None; plan.weights.len()];
    let mut wdata: Vec<Option<(Vec<f32>, Vec<usize>)>> = vec![None; plan.weights.len()];
    for (i, w) in plan.weights.iter().enumerate() {
        let (vals, dims) = read_weight(g, w)?;
        let p = int8::weight_params(&vals, &dims, &w.spec)
            .map_err(|e| Error::tensor(g.value_name(w.value), e.to_string()))?;
        wparams[i] = Some(p);
        wdata[i] = Some((vals, dims));
    }
    let mut bias_inputs = Vec::new();
    for b in &plan.biases {
        let Some(&in_p) = params.get(&root_of(b.input)) else {
            continue;
        };
        let Some(Some(wp)) = wparams.get_mut(b.weight) else {
            continue;
        };
        let spec = plan.weights[b.weight].spec;
        let symmetric_int =
            matches!(spec.qtype, QType::I8 | QType::I16) && wp.iter().all(|p| p.zero_point == 0);
        let bias = super::kernels::read_f32(constant(g, b.value).expect("constant").1)?;
        if symmetric_int && int8::adjust_scales_for_bias(&bias, in_p.scale, wp) {
            outcome.count("weight scales enlarged for int32 biases", 1);
        }
        bias_inputs.push((b, in_p, bias));
    }
    // A weight read by several nodes with the same settings is quantized once.
    let mut shared: HashMap<(ValueId, bool, WeightSpec), ParamVals> = HashMap::new();
    let mut dq_of: HashMap<(ValueId, bool, WeightSpec), ValueId> = HashMap::new();
    for (i, w) in plan.weights.iter().enumerate() {
        let key = (w.value, w.transpose.is_some(), w.spec);
        let consumer = node_of(w.node);
        if !g.contains_node(consumer) {
            continue;
        }
        let dq = match dq_of.get(&key) {
            Some(&dq) => dq,
            None => {
                let (vals, dims) = wdata[i].take().expect("read once per use");
                let p = wparams[i].clone().expect("computed");
                let q = int8::quantize_with(&vals, &dims, &p, w.spec.axis, w.spec.qtype)
                    .map_err(|e| Error::tensor(g.value_name(w.value), e.to_string()))?;
                let original = constant(g, w.value).expect("constant").1.clone();
                let base = if w.transpose.is_some() {
                    format!("{}_Transposed", g.value_name(w.value))
                } else {
                    g.value_name(w.value).to_string()
                };
                let pdims = if w.spec.axis.is_some() {
                    vec![p.len() as i64]
                } else {
                    vec![]
                };
                let data = codes_tensor(
                    "",
                    w.spec.qtype,
                    dims.iter().map(|&d| d as i64).collect(),
                    &q,
                )
                .stored_like(&original);
                outcome.count("weight bytes before", original.stored_len() as u64);
                outcome.count("weight bytes after", data.stored_len() as u64);
                let data = add_named(g, &format!("{base}_quantized"), data)?;
                let pv = ParamVals {
                    scale: add_named(g, &format!("{base}_scale"), scale_tensor(&p, pdims.clone()))?,
                    zero_point: add_named(
                        g,
                        &format!("{base}_zero_point"),
                        zp_tensor(&p, w.spec.qtype, pdims),
                    )?,
                };
                let dq = add_dq(
                    g,
                    data,
                    pv,
                    &format!("{base}_DequantizeLinear"),
                    w.spec.axis,
                    domain,
                    consumer,
                )?;
                shared.insert(key, pv);
                dq_of.insert(key, dq);
                outcome.count("weights quantized", 1);
                dq
            }
        };
        g.set_input(consumer, w.slot, Some(dq));
        if let Some(t) = w.transpose {
            if g.contains_node(t)
                && g.node(t)
                    .outputs()
                    .iter()
                    .flatten()
                    .all(|&o| g.value(o).uses().is_empty() && !g.is_graph_output(o))
            {
                g.remove_node(t)?;
            }
        }
        drop_if_unused(g, w.value, w.source);
    }
    for (b, in_p, bias) in bias_inputs {
        let w = &plan.weights[b.weight];
        let key = (w.value, w.transpose.is_some(), w.spec);
        let Some(&wp) = shared.get(&key) else {
            continue;
        };
        let wscales = g
            .initializer(wp.scale)
            .map(|t| t.to_f32())
            .transpose()?
            .unwrap_or_default();
        let wparams: Vec<ScaleZp> = wscales
            .iter()
            .map(|&s| ScaleZp {
                scale: s,
                zero_point: 0,
            })
            .collect();
        let (codes, scales) = int8::quantize_bias(&bias, in_p.scale, &wparams);
        let base = g.value_name(b.value).to_string();
        let t = constant(g, b.value).expect("constant").1.clone();
        let per_channel = scales.len() > 1;
        let sdims = if per_channel {
            vec![scales.len() as i64]
        } else {
            vec![]
        };
        let data = Tensor::from_raw(
            "",
            DType::I32,
            t.dims.clone(),
            bytes::Bytes::from(
                codes
                    .iter()
                    .flat_map(|c| c.to_le_bytes())
                    .collect::<Vec<u8>>(),
            ),
        )
        .stored_like(&t);
        let data = add_named(g, &format!("{base}_quantized"), data)?;
        let pv = ParamVals {
            scale: add_named(
                g,
                &format!("{base}_quantized_scale"),
                Tensor::from_f32("", sdims.clone(), &scales),
            )?,
            zero_point: add_named(
                g,
                &format!("{base}_quantized_zero_point"),
                Tensor::from_raw(
                    "",
                    DType::I32,
                    sdims,
                    bytes::Bytes::from(vec![0u8; 4 * if per_channel { scales.len() } else { 1 }]),
                ),
            )?,
        };
        let consumer = node_of(b.node);
        let dq = add_dq(
            g,
            data,
            pv,
            &format!("{base}_DequantizeLinear"),
            per_channel.then_some(0),
            domain,
            consumer,
        )?;
        g.set_input(consumer, 2, Some(dq));
        drop_if_unused(g, b.value, b.source);
        outcome.count("biases quantized", 1);
    }
    Ok(())
}

/// Reads the tensor a weight use sees (transposed through its Transpose node).
fn read_weight(g: &Graph, w: &WeightUse) -> Result<(Vec<f32>, Vec<usize>)> {
    let t = constant(g, w.value).expect("constant").1;
    let vals = super::kernels::read_f32(t)?;
    let dims: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
    if w.transpose.is_some() {
        let (r, c) = (dims[0], dims[1]);
        return Ok((crate::quant::transpose(&vals, r, c), vec![c, r]));
    }
    Ok((vals, dims))
}

fn add_dq(
    g: &mut Graph,
    data: ValueId,
    pv: ParamVals,
    name: &str,
    axis: Option<usize>,
    domain: &str,
    before: NodeId,
) -> Result<ValueId> {
    let out = g.fresh_name(&format!("{}_Output", name));
    let mut spec = NodeSpec::new(domain, "DequantizeLinear")
        .name(g.fresh_node_name(name))
        .inputs([Some(data), Some(pv.scale), Some(pv.zero_point)])
        .output(out)
        .meta(PASS_KEY, NAME);
    if let Some(a) = axis {
        spec = spec.attr(Attribute::int("axis", a as i64));
    }
    let id = g.add_node(spec)?;
    g.place_before(id, before);
    Ok(g.node(id).output(0).expect("one output"))
}

/// `v → Q → DQ`, readers of `v` reading the DQ output instead: all of them when a
/// quantized node (`members`) produces `v`, else only the quantized ones. A graph output keeps its
/// float value unless `outputs` is set: then its producer writes a new value and
/// the DQ takes over the output's name (the producer's id moves, recorded in
/// `remap`). Without quantized consumers nothing is inserted.
fn insert_qdq(
    g: &mut Graph,
    v: ValueId,
    pv: ParamVals,
    domain: &str,
    outputs: bool,
    members: &BTreeSet<NodeId>,
    remap: &mut HashMap<NodeId, NodeId>,
) -> Result<()> {
    let base = g.value_name(v).to_string();
    if outputs && g.is_graph_output(v) {
        if let Some(p) = g.producer(v).filter(|&p| g.node(p).outputs().len() == 1) {
            let node = g.node(p).clone();
            let mut spec = NodeSpec::new(node.domain(), &node.op_type)
                .name(node.name().to_string())
                .inputs(node.inputs().to_vec())
                .output(g.fresh_name(&format!("{base}_QuantizeLinear_Input")))
                .meta(PASS_KEY, NAME);
            spec.attributes = node.attributes.clone();
            let new = g.add_node(spec)?;
            g.place_before(new, p);
            let raw = g.node(new).output(0).expect("one output");
            let q = g.add_node(
                NodeSpec::new(domain, "QuantizeLinear")
                    .name(g.fresh_node_name(&format!("{base}_QuantizeLinear")))
                    .inputs([Some(raw), Some(pv.scale), Some(pv.zero_point)])
                    .output(g.fresh_name(&format!("{base}_QuantizeLinear_Output")))
                    .meta(PASS_KEY, NAME),
            )?;
            g.place_before(q, p);
            let qo = g.node(q).output(0).expect("one output");
            g.swap_node(
                p,
                NodeSpec::new(domain, "DequantizeLinear")
                    .name(g.fresh_node_name(&format!("{base}_DequantizeLinear")))
                    .inputs([Some(qo), Some(pv.scale), Some(pv.zero_point)])
                    .meta(PASS_KEY, NAME),
            )?;
            for old in remap.values_mut().filter(|n| **n == p) {
                *old = new;
            }
            remap.insert(p, new);
            return Ok(());
        }
    }
    let member = |n: NodeId| {
        members.contains(&n)
            || remap
                .iter()
                .any(|(old, new)| *new == n && members.contains(old))
    };
    // The output of a quantized op is quantized for every reader (as onnxruntime);
    // anything else only for the quantized readers, so a node left float reads float.
    let all = g.producer(v).is_some_and(member);
    let users: Vec<(NodeId, usize)> = g
        .value(v)
        .uses()
        .iter()
        .filter_map(|u| match u {
            crate::ir::Use::Input(n, s) if all || member(*n) => Some((*n, *s)),
            _ => None,
        })
        .collect();
    if users.is_empty() {
        return Ok(());
    }
    let first = g
        .node_ids()
        .into_iter()
        .find(|n| users.iter().any(|(u, _)| u == n))
        .unwrap_or(users[0].0);
    let q = g.add_node(
        NodeSpec::new(domain, "QuantizeLinear")
            .name(g.fresh_node_name(&format!("{base}_QuantizeLinear")))
            .inputs([Some(v), Some(pv.scale), Some(pv.zero_point)])
            .output(g.fresh_name(&format!("{base}_QuantizeLinear_Output")))
            .meta(PASS_KEY, NAME),
    )?;
    g.place_before(q, first);
    let qo = g.node(q).output(0).expect("one output");
    let dq = g.add_node(
        NodeSpec::new(domain, "DequantizeLinear")
            .name(g.fresh_node_name(&format!("{base}_DequantizeLinear")))
            .inputs([Some(qo), Some(pv.scale), Some(pv.zero_point)])
            .output(g.fresh_name(&format!("{base}_DequantizeLinear_Output")))
            .meta(PASS_KEY, NAME),
    )?;
    g.place_before(dq, first);
    let dqo = g.node(dq).output(0).expect("one output");
    for (n, s) in users {
        g.set_input(n, s, Some(dqo));
    }
    Ok(())
}
