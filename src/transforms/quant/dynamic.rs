//! Dynamic 8-bit quantization: weights quantized offline, activations at run time.
//!
//! Matches (every graph, subgraphs included), as onnxruntime's `quantize_dynamic`:
//! - MatMul/Gemm with a constant 2-D float32 weight (initializer or Constant node,
//!   directly or through Transpose; Gemm with alpha = beta = 1, transA = 0);
//! - Conv with a constant float32 weight;
//! - Gather on a constant float32 table.
//!
//! MatMul/Gemm activations are quantized per token by default (`activations =
//! "per-token"`): one symmetric int8 scale per row of A (absmax / 127 over the last
//! axis) and one weight scale per output channel, in standard ops:
//! `Abs → ReduceMax → Max(ε) → Div(127)` gives the row scales s, then
//! `Round(A / s + 128) → Cast(uint8) → MatMulInteger(·, W_q, 128, W_zp) → Cast →
//! Mul(s·W_scale)`; Gather tables become int8 with one scale per row. One scale per
//! tensor (onnxruntime's form) lets a few outlier tokens set the step for every
//! token of a window: on SmolLM2-135M dynamic per-tensor int8 costs +78 % perplexity
//! (+59 % with per-channel weights), per token +3.4 %.
//!
//! `activations = "per-tensor"` writes exactly what onnxruntime's tool writes (and
//! ONNX Runtime fuses at load into DynamicQuantizeMatMul / MatMulIntegerToFloat):
//! `DynamicQuantizeLinear(A) → MatMulInteger(A_q, W_q, A_zp, W_zp) → Cast →
//! Mul(A_scale·W_scale)` (+ `Add(C)` for Gemm), and for Gather the table as uint8
//! and `Gather → DequantizeLinear`. Conv is always `ConvInteger` per tensor
//! (+ bias Add). Weights are stored [K, N] (transposed ones pre-transposed), int8
//! symmetric or uint8 asymmetric, per tensor or per output channel (MatMul/Gemm;
//! Conv weights stay per tensor as in onnxruntime). Activations are quantized once
//! per value, whatever the number of consumers; a weight read by several nodes is
//! quantized once.
//! Leaves alone: attention ops (never rewritten into QAttention), anything already
//! quantized (weights behind DequantizeLinear are not constants), float16 models.
//! Keeps: every value name the rest of the graph reads.
use std::collections::HashMap;

use rayon::prelude::*;
use serde::Deserialize;

use super::select::Selection;
use super::weight_only::remove_orphans;
use crate::error::{Error, Result};
use crate::ir::{Attribute, DType, Graph, Model, NodeId, NodeSpec, Tensor, ValueId};
use crate::pass::{Pass, PassCx, PassOutcome, PASS_KEY};
use crate::quant::int8::{self, QType, ScaleZp, WeightSpec};
use crate::quant::QuantError;
use crate::rewrite::matchers::{constant, not_constant_reason, weight_matmul, ConstSource};

/// Integer type of quantized weights.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum WeightType {
    /// Signed, symmetric (zero point 0).
    #[default]
    Int8,
    /// Unsigned, asymmetric.
    Uint8,
}

impl WeightType {
    pub fn qtype(self) -> QType {
        match self {
            WeightType::Int8 => QType::I8,
            WeightType::Uint8 => QType::U8,
        }
    }
}

/// How MatMul/Gemm activations are scaled at run time.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ActivationScale {
    /// One symmetric int8 scale per row (token) of A, per-channel weight scales.
    #[default]
    PerToken,
    /// One asymmetric uint8 scale per tensor (DynamicQuantizeLinear), as onnxruntime.
    PerTensor,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct DynamicConfig {
    pub weight_type: WeightType,
    /// MatMul/Gemm activation scales: per token (default) or per tensor.
    pub activations: ActivationScale,
    /// One scale per output channel of MatMul/Gemm weights (always, per token).
    pub per_channel: bool,
    /// 7-bit weights (avoids int16 saturation of u8·s8 products on x86 without VNNI).
    pub reduce_range: bool,
    /// Op types to quantize: MatMul, Gemm, Conv, Gather.
    pub op_types: Vec<String>,
    /// Node name patterns (`*` wildcards) to leave in float.
    pub exclude: Vec<String>,
    /// JSON file of per-node settings: `{"pattern": "skip"}`.
    pub nodes_config: Option<String>,
}

impl Default for DynamicConfig {
    fn default() -> Self {
        DynamicConfig {
            weight_type: WeightType::Int8,
            activations: ActivationScale::PerToken,
            per_channel: false,
            reduce_range: false,
            op_types: ["MatMul", "Gemm", "Conv", "Gather"]
                .map(String::from)
                .to_vec(),
            exclude: Vec::new(),
            nodes_config: None,
        }
    }
}

pub const DYNAMIC_KEYS: &[&str] = &[
    "weight-type",
    "activations",
    "per-channel",
    "reduce-range",
    "op-types",
    "exclude",
    "nodes-config",
];

const SUPPORTED_OPS: &[&str] = &["MatMul", "Gemm", "Conv", "Gather"];

pub struct Dynamic {
    pub config: DynamicConfig,
    selection: Selection,
}

impl Dynamic {
    pub fn new(config: DynamicConfig) -> Result<Self> {
        if let Some(op) = config
            .op_types
            .iter()
            .find(|o| !SUPPORTED_OPS.contains(&o.as_str()))
        {
            return Err(Error::invalid(format!(
                "op type '{op}' cannot be quantized dynamically (supported: {})",
                SUPPORTED_OPS.join(", ")
            )));
        }
        if config.activations == ActivationScale::PerToken && config.weight_type != WeightType::Int8
        {
            return Err(Error::invalid(
                "per-token activations are symmetric int8 and take int8 weights; \
                 uint8 weights need activations = \"per-tensor\"",
            ));
        }
        let selection = Selection::new(
            &config.exclude,
            &config.op_types,
            config.nodes_config.as_deref(),
        )?;
        selection.refuse_unless(&[], "int8-dynamic")?;
        Ok(Dynamic { config, selection })
    }
}

const NAME: &str = "int8-dynamic";

/// One planned rewrite.
enum Job {
    MatMul(crate::rewrite::matchers::WeightMatMul),
    Conv {
        node: NodeId,
        weight: ValueId,
        source: ConstSource,
    },
    Gather {
        node: NodeId,
        table: ValueId,
        source: ConstSource,
    },
}

impl Pass for Dynamic {
    fn name(&self) -> &'static str {
        NAME
    }

    fn run(&self, model: &mut Model, _cx: &mut PassCx) -> Result<PassOutcome> {
        let mut outcome = PassOutcome::new(NAME);
        let opset = model.opset("").unwrap_or(1);
        let result = model.try_for_each_graph_mut(&mut |g| self.run_graph(g, opset, &mut outcome));
        result?;
        if outcome.changed {
            // DynamicQuantizeLinear is opset 11.
            super::opset::raise_default_opset(model, 11)?;
        }
        Ok(outcome)
    }
}

impl Dynamic {
    fn plan(&self, g: &Graph, outcome: &mut PassOutcome) -> Vec<Job> {
        let mut jobs = Vec::new();
        for (id, node) in g.nodes() {
            if !node.domain().is_empty() || !self.selection.op_included(&node.op_type) {
                continue;
            }
            if self.selection.resolve(node.name()) == super::select::NodeOverride::Skip {
                outcome.skip(node.name(), "excluded");
                continue;
            }
            let job = match node.op_type.as_str() {
                "MatMul" | "Gemm" => weight_matmul(g, id).and_then(|m| {
                    if m.dtype != DType::F32 {
                        Err(format!(
                            "weight is {}; dynamic quantization takes float32 activations",
                            m.dtype
                        ))
                    } else {
                        Ok(Job::MatMul(m))
                    }
                }),
                "Conv" => const_f32_input(g, id, 1).map(|(weight, source)| Job::Conv {
                    node: id,
                    weight,
                    source,
                }),
                "Gather" => const_f32_input(g, id, 0).map(|(table, source)| Job::Gather {
                    node: id,
                    table,
                    source,
                }),
                _ => continue,
            };
            match job {
                Ok(j) => jobs.push(j),
                Err(reason) => outcome.skip(node.name(), reason),
            }
        }
        jobs
    }

    fn weight_spec(&self, axis: Option<usize>, reduce: bool) -> WeightSpec {
        WeightSpec {
            qtype: self.config.weight_type.qtype(),
            symmetric: self.config.weight_type == WeightType::Int8,
            reduce_range: reduce && self.config.reduce_range,
            axis,
        }
    }

    fn run_graph(&self, g: &mut Graph, opset: i64, outcome: &mut PassOutcome) -> Result<()> {
        let jobs = self.plan(g, outcome);
        let mut st = State {
            opset: opset.max(11),
            ..State::default()
        };
        for job in jobs {
            match job {
                Job::MatMul(m) => self.matmul(g, &m, &mut st)?,
                Job::Conv {
                    node,
                    weight,
                    source,
                } => self.conv(g, node, weight, source, &mut st)?,
                Job::Gather {
                    node,
                    table,
                    source,
                } => self.gather(g, node, table, source, &mut st)?,
            }
            outcome.count("nodes quantized", 1);
            outcome.changed = true;
        }
        outcome.count("weights quantized", st.weights.len() as u64);
        outcome.count("weight bytes before", st.bytes_before);
        outcome.count("weight bytes after", st.bytes_after);
        Ok(())
    }

    fn matmul(
        &self,
        g: &mut Graph,
        m: &crate::rewrite::matchers::WeightMatMul,
        st: &mut State,
    ) -> Result<()> {
        let (node, name, out) = named(g, m.node)?;
        let a = node.input(0).ok_or_else(|| node_err(&node, "no A input"))?;
        let per_token = self.config.activations == ActivationScale::PerToken;
        // Per token, the weight scales multiply the output anyway: per channel is free.
        let axis = (self.config.per_channel || per_token).then_some(1);
        let spec = self.weight_spec(axis, true);
        let key = (m.weight, m.transposed, spec);
        let w = match st.weights.get(&key) {
            Some(w) => *w,
            None => {
                let w = quantize_matrix(g, m.weight, m.transposed, &spec, st)?;
                st.weights.insert(key, w);
                w
            }
        };
        let (aq, ascale, azp) = if per_token {
            token_quantize(g, a, m.node, st)?
        } else {
            dynamic_quantize(g, a, m.node, st)?
        };
        let mmi_out = g.fresh_name(&format!("{out}_output_quantized"));
        let mmi = g.add_node(
            NodeSpec::new("", "MatMulInteger")
                .name(g.fresh_node_name(&format!("{name}_quant")))
                .inputs([Some(aq), Some(w.data), Some(azp), Some(w.zero_point)])
                .output(mmi_out.clone())
                .meta(PASS_KEY, NAME),
        )?;
        // A constant bias Add after the scale Mul (the Gemm's, or the model's own)
        // must stay out of ONNX Runtime's fusion (see `rescale`).
        let split = per_token && (m.bias.is_some() || feeds_constant_add(g, m.node));
        let last = rescale(g, m.node, mmi, &name, &mmi_out, ascale, w.scale, split)?;
        let spec = match m.bias {
            Some(c) => {
                let scaled = g.add_node(last.output(g.fresh_name(&format!("{out}_MatMul"))))?;
                g.place_before(scaled, m.node);
                let scaled = g.node(scaled).output(0).expect("one output");
                NodeSpec::new("", "Add")
                    .name(g.fresh_node_name(&format!("{name}_Add")))
                    .inputs([Some(scaled), Some(c)])
                    .meta(PASS_KEY, NAME)
            }
            None => last,
        };
        g.swap_node(m.node, spec)?;
        remove_orphans(g, m);
        Ok(())
    }

    fn conv(
        &self,
        g: &mut Graph,
        id: NodeId,
        weight: ValueId,
        source: ConstSource,
        st: &mut State,
    ) -> Result<()> {
        let (node, name, out) = named(g, id)?;
        let x = node.input(0).ok_or_else(|| node_err(&node, "no input X"))?;
        // onnxruntime's ConvInteger path quantizes Conv weights per tensor.
        let w = quantized_constant(g, weight, &self.weight_spec(None, true), st)?;
        let (xq, xscale, xzp) = dynamic_quantize(g, x, id, st)?;
        let ci_out = g.fresh_name(&format!("{out}_output_quantized"));
        let mut spec = NodeSpec::new("", "ConvInteger")
            .name(g.fresh_node_name(&format!("{name}_quant")))
            .inputs([Some(xq), Some(w.data), Some(xzp), Some(w.zero_point)])
            .output(ci_out.clone())
            .meta(PASS_KEY, NAME);
        spec.attributes = node.attributes.clone();
        let ci = g.add_node(spec)?;
        let last = rescale(g, id, ci, &name, &ci_out, xscale, w.scale, false)?;
        let last = match node.input(2) {
            Some(b) => {
                let rank = constant(g, weight).map_or(4, |(_, t)| t.dims.len());
                let bias = broadcast_bias(g, b, rank, id)?;
                let scaled =
                    g.add_node(last.output(g.fresh_name(&format!("{out}quant_scaled_output"))))?;
                g.place_before(scaled, id);
                let scaled = g.node(scaled).output(0).expect("one output");
                NodeSpec::new("", "Add")
                    .name(g.fresh_node_name(&format!("{out}_bias_add")))
                    .inputs([Some(scaled), Some(bias)])
                    .meta(PASS_KEY, NAME)
            }
            None => last,
        };
        g.swap_node(id, last)?;
        drop_if_unused(g, weight, source);
        if let Some(b) = node.input(2) {
            if let Some((src, _)) = constant(g, b) {
                drop_if_unused(g, b, src);
            }
        }
        Ok(())
    }

    fn gather(
        &self,
        g: &mut Graph,
        id: NodeId,
        table: ValueId,
        source: ConstSource,
        st: &mut State,
    ) -> Result<()> {
        let (node, name, out) = named(g, id)?;
        let rows = constant(g, table).is_some_and(|(_, t)| t.dims.len() == 2)
            && node.attr_int("axis").unwrap_or(0) == 0;
        if self.config.activations == ActivationScale::PerToken && rows {
            return self.gather_rows(g, id, table, source, st);
        }
        // Tables are quantized like activations: uint8, asymmetric, full range.
        let spec = WeightSpec {
            qtype: QType::U8,
            symmetric: false,
            reduce_range: false,
            axis: None,
        };
        let w = quantized_constant(g, table, &spec, st)?;
        let mut inputs = node.inputs().to_vec();
        inputs[0] = Some(w.data);
        let mut spec = NodeSpec::new("", "Gather")
            .name(g.fresh_node_name(&format!("{name}_quant")))
            .inputs(inputs)
            .output(g.fresh_name(&format!("{out}_quantized")))
            .meta(PASS_KEY, NAME);
        spec.attributes = node.attributes.clone();
        let gq = g.add_node(spec)?;
        g.place_before(gq, id);
        let gq_out = g.node(gq).output(0).expect("one output");
        g.swap_node(
            id,
            NodeSpec::new("", "DequantizeLinear")
                .name(g.fresh_node_name(&format!("{out}_DequantizeLinear")))
                .inputs([Some(gq_out), Some(w.scale), Some(w.zero_point)])
                .meta(PASS_KEY, NAME),
        )?;
        drop_if_unused(g, table, source);
        Ok(())
    }

    /// A [V, H] table as int8 with one symmetric scale per row (token), the scales
    /// stored [V, 1]: `Gather(codes) → Cast → Mul(Gather(scales))`. One uint8 scale
    /// for the whole table (onnxruntime's form) costs SmolLM2-135M 1.6 % perplexity
    /// on its own; rows differ in norm, and every token reads exactly one row.
    fn gather_rows(
        &self,
        g: &mut Graph,
        id: NodeId,
        table: ValueId,
        source: ConstSource,
        st: &mut State,
    ) -> Result<()> {
        let (node, name, out) = named(g, id)?;
        let spec = WeightSpec {
            qtype: QType::I8,
            symmetric: true,
            reduce_range: false,
            axis: Some(0),
        };
        let w = quantized_constant(g, table, &spec, st)?;
        // Scales stored [V, 1], so the gathered ones broadcast over each row.
        if let Some(scales) = g.initializer(w.scale).filter(|t| t.dims.len() == 1) {
            let mut scales = scales.clone();
            scales.dims.push(1);
            g.set_initializer(w.scale, scales);
        }
        let indices = node.input(1).ok_or_else(|| node_err(&node, "no indices"))?;
        let mut added = Vec::new();
        for (data, what) in [(w.data, "quantized"), (w.scale, "row_scale")] {
            let gid = g.add_node(
                NodeSpec::new("", "Gather")
                    .name(g.fresh_node_name(&format!("{name}_{what}")))
                    .inputs([Some(data), Some(indices)])
                    .output(g.fresh_name(&format!("{out}_{what}")))
                    .meta(PASS_KEY, NAME),
            )?;
            g.place_before(gid, id);
            added.push(g.node(gid).output(0).expect("one output"));
        }
        let cast = g.add_node(
            NodeSpec::new("", "Cast")
                .name(g.fresh_node_name(&format!("{name}_cast")))
                .input(added[0])
                .output(g.fresh_name(&format!("{out}_cast")))
                .attr(Attribute::int("to", DType::F32.code() as i64))
                .meta(PASS_KEY, NAME),
        )?;
        g.place_before(cast, id);
        let cast = g.node(cast).output(0).expect("one output");
        g.swap_node(
            id,
            NodeSpec::new("", "Mul")
                .name(g.fresh_node_name(&format!("{name}_dequantize")))
                .inputs([Some(cast), Some(added[1])])
                .meta(PASS_KEY, NAME),
        )?;
        // The zero point is all zeros and unused by this form (already gone when
        // a second Gather reads the same table).
        let _ = g.remove_initializer(w.zero_point);
        drop_if_unused(g, table, source);
        Ok(())
    }
}

/// Whether the only reader of `node`'s output is an Add of a constant (either
/// side: ONNX Runtime puts constants second first): the bias it folds into
/// MatMulIntegerToFloat.
fn feeds_constant_add(g: &Graph, node: NodeId) -> bool {
    let Some(out) = g.node(node).output(0) else {
        return false;
    };
    match g.value(out).uses() {
        [crate::ir::Use::Input(user, slot)] => {
            let add = g.node(*user);
            add.op_type == "Add"
                && add
                    .input(1 - slot.min(&1))
                    .is_some_and(|b| constant(g, b).is_some())
        }
        _ => false,
    }
}

/// Places `int_node` before `anchor` and adds Cast(int32 → float32) and the Mul of
/// the two scales; returns the spec of the final Mul (no outputs yet: the caller
/// swaps it in for the original node or gives it a new output).
///
/// `Mul(Cast, Mul(A_scale, W_scale))` is what ONNX Runtime fuses into
/// MatMulIntegerToFloat (u8·s8 GEMM and scaling in one kernel). With per-row A
/// scales that kernel (1.32) adds a fused constant bias *before* scaling by them,
/// multiplying the bias by each row's scale; `split` writes
/// `Mul(Mul(Cast, W_scale), A_scale)` instead, which it does not fuse.
#[allow(clippy::too_many_arguments)]
fn rescale(
    g: &mut Graph,
    anchor: NodeId,
    int_node: NodeId,
    name: &str,
    int_out: &str,
    ascale: ValueId,
    wscale: ValueId,
    split: bool,
) -> Result<NodeSpec> {
    g.place_before(int_node, anchor);
    let int_val = g.node(int_node).output(0).expect("one output");
    let cast = g.add_node(
        NodeSpec::new("", "Cast")
            .name(g.fresh_node_name(&format!("{int_out}_cast")))
            .input(int_val)
            .output(g.fresh_name(&format!("{int_out}_cast_output")))
            .attr(Attribute::int("to", DType::F32.code() as i64))
            .meta(PASS_KEY, NAME),
    )?;
    g.place_before(cast, anchor);
    let c = g.node(cast).output(0).expect("one output");
    let (x, y, mul_name, mul_out) = if split {
        (
            c,
            wscale,
            "quant_weight_scale_mul",
            format!("{int_out}_column_scaled"),
        )
    } else {
        (
            ascale,
            wscale,
            "quant_scales_mul",
            format!("{name}_quant_scales_mul:0"),
        )
    };
    let first = g.add_node(
        NodeSpec::new("", "Mul")
            .name(g.fresh_node_name(&format!("{name}_{mul_name}")))
            .inputs([Some(x), Some(y)])
            .output(g.fresh_name(&mul_out))
            .meta(PASS_KEY, NAME),
    )?;
    g.place_before(first, anchor);
    let f = g.node(first).output(0).expect("one output");
    let inputs = if split { [f, ascale] } else { [c, f] };
    Ok(NodeSpec::new("", "Mul")
        .name(g.fresh_node_name(&format!("{name}_quant_output_scale_mul")))
        .inputs(inputs.map(Some))
        .meta(PASS_KEY, NAME))
}

/// Quantized weight initializers.
#[derive(Clone, Copy, Debug)]
pub(crate) struct QuantInit {
    pub data: ValueId,
    pub scale: ValueId,
    pub zero_point: ValueId,
}

#[derive(Clone, Copy)]
struct TokenConsts {
    /// Floor of a row's absmax: an all-zero row (padding) gets codes 128, not 0/0.
    eps: ValueId,
    /// 127.0: the row scale is absmax / 127.
    q127: ValueId,
    /// 128.0 and 128u8: the codes' zero point, as float (added) and uint8 (for
    /// MatMulInteger).
    zp_f: ValueId,
    zp: ValueId,
    /// [-1], ReduceMax's axes input from opset 18 (an attribute before).
    axes: Option<ValueId>,
}

#[derive(Default)]
struct State {
    weights: HashMap<(ValueId, bool, WeightSpec), QuantInit>,
    /// Activation value → (quantized, scale, zero point) of its DynamicQuantizeLinear.
    activations: HashMap<ValueId, (ValueId, ValueId, ValueId)>,
    /// Activation value → (codes, row scales, zero point) of its per-token quantization.
    tokens: HashMap<ValueId, (ValueId, ValueId, ValueId)>,
    /// Constants of the per-token arithmetic, added once per graph.
    token_consts: Option<TokenConsts>,
    /// Default-domain opset (ReduceMax takes `axes` as an input from 18).
    opset: i64,
    bytes_before: u64,
    bytes_after: u64,
}

/// The node `id` (cloned), its name and the name of its first output.
fn named(g: &Graph, id: NodeId) -> Result<(crate::ir::Node, String, String)> {
    let node = g.node(id).clone();
    let out = node.output(0).ok_or_else(|| node_err(&node, "no output"))?;
    let out = g.value_name(out).to_string();
    let name = node.name().to_string();
    Ok((node, name, out))
}

/// The constant `v` quantized with `spec`, once per (value, spec).
fn quantized_constant(
    g: &mut Graph,
    v: ValueId,
    spec: &WeightSpec,
    st: &mut State,
) -> Result<QuantInit> {
    let key = (v, false, *spec);
    if let Some(w) = st.weights.get(&key) {
        return Ok(*w);
    }
    let t = constant(g, v).expect("matched as constant").1.clone();
    let w = add_quantized(g, &t, g.value_name(v).to_string(), spec, st)?;
    st.weights.insert(key, w);
    Ok(w)
}

fn node_err(node: &crate::ir::Node, reason: &str) -> Error {
    Error::Node {
        node: node.name().to_string(),
        op: node.op_type.clone(),
        reason: reason.to_string(),
    }
}

/// Input `slot` of `node` as a constant float32 tensor, or why not.
fn const_f32_input(g: &Graph, node: NodeId, slot: usize) -> Result<(ValueId, ConstSource), String> {
    let v = g.node(node).input(slot).ok_or("missing input")?;
    let (source, t) = constant(g, v).ok_or_else(|| not_constant_reason(g, v))?;
    if t.dtype() != DType::F32 {
        return Err(format!(
            "'{}' is {}, not float32",
            g.value_name(v),
            t.dtype()
        ));
    }
    Ok((v, source))
}

/// The DynamicQuantizeLinear of activation `a` (one per value), placed before `user`.
fn dynamic_quantize(
    g: &mut Graph,
    a: ValueId,
    user: NodeId,
    st: &mut State,
) -> Result<(ValueId, ValueId, ValueId)> {
    if let Some(&q) = st.activations.get(&a) {
        return Ok(q);
    }
    let base = g.value_name(a).to_string();
    let id = g.add_node(
        NodeSpec::new("", "DynamicQuantizeLinear")
            .name(g.fresh_node_name(&format!("{base}_QuantizeLinear")))
            .input(a)
            .output(g.fresh_name(&format!("{base}_quantized")))
            .output(g.fresh_name(&format!("{base}_scale")))
            .output(g.fresh_name(&format!("{base}_zero_point")))
            .meta(PASS_KEY, NAME),
    )?;
    g.place_before(id, user);
    let n = g.node(id);
    let q = (
        n.output(0).expect("output"),
        n.output(1).expect("output"),
        n.output(2).expect("output"),
    );
    st.activations.insert(a, q);
    Ok(q)
}

/// The per-token quantization of activation `a` (one per value), placed before
/// `user`: row scales s = max(absmax over the last axis, ε) / 127 and codes
/// Round(a / s + 128) as uint8 with zero point 128, i.e. symmetric int8 values in
/// the u8·s8 form ONNX Runtime's integer GEMM is fast at (int8 A ran ~12x slower
/// there on SmolLM2). |a / s| <= 127 up to one rounding, so the Cast never
/// saturates; 128 is even, so ties still round to even (the add itself rounds a / s
/// to 2⁻¹⁶, which moves only values that close to a half).
fn token_quantize(
    g: &mut Graph,
    a: ValueId,
    user: NodeId,
    st: &mut State,
) -> Result<(ValueId, ValueId, ValueId)> {
    if let Some(&q) = st.tokens.get(&a) {
        return Ok(q);
    }
    let c = match st.token_consts {
        Some(c) => c,
        None => {
            let f = |v: f32| Tensor::from_f32("", vec![], &[v]);
            let c = TokenConsts {
                eps: add_named(g, "token_absmax_floor", f(1e-30))?,
                q127: add_named(g, "token_int8_max", f(127.0))?,
                zp_f: add_named(g, "token_zero_point_float", f(128.0))?,
                zp: add_named(
                    g,
                    "token_zero_point",
                    codes_tensor("", QType::U8, vec![], &[128]),
                )?,
                axes: if st.opset >= 18 {
                    Some(add_named(
                        g,
                        "token_reduce_axes",
                        Tensor::from_i64("", vec![1], &[-1]),
                    )?)
                } else {
                    None
                },
            };
            st.token_consts = Some(c);
            c
        }
    };
    let TokenConsts {
        eps,
        q127,
        zp_f,
        zp,
        axes,
    } = c;
    let base = g.value_name(a).to_string();
    let step = |g: &mut Graph, spec: NodeSpec, suffix: &str| -> Result<ValueId> {
        let id = g.add_node(
            spec.name(g.fresh_node_name(&format!("{base}_{suffix}")))
                .output(g.fresh_name(&format!("{base}_{suffix}")))
                .meta(PASS_KEY, NAME),
        )?;
        g.place_before(id, user);
        Ok(g.node(id).output(0).expect("one output"))
    };
    let abs = step(g, NodeSpec::new("", "Abs").input(a), "abs")?;
    let reduce = NodeSpec::new("", "ReduceMax").attr(Attribute::int("keepdims", 1));
    let reduce = match axes {
        Some(axes) => reduce.inputs([Some(abs), Some(axes)]),
        None => reduce.input(abs).attr(Attribute::ints("axes", vec![-1])),
    };
    let absmax = step(g, reduce, "absmax")?;
    let binary = |g: &mut Graph, op: &str, x: ValueId, y: ValueId, suffix: &str| {
        step(g, NodeSpec::new("", op).inputs([Some(x), Some(y)]), suffix)
    };
    let floored = binary(g, "Max", absmax, eps, "absmax_floored")?;
    let scale = binary(g, "Div", floored, q127, "token_scale")?;
    let scaled = binary(g, "Div", a, scale, "scaled")?;
    let shifted = binary(g, "Add", scaled, zp_f, "shifted")?;
    let rounded = step(g, NodeSpec::new("", "Round").input(shifted), "rounded")?;
    let codes = step(
        g,
        NodeSpec::new("", "Cast")
            .input(rounded)
            .attr(Attribute::int("to", DType::U8.code() as i64)),
        "quantized",
    )?;
    st.tokens.insert(a, (codes, scale, zp));
    Ok((codes, scale, zp))
}

/// Quantizes a constant 2-D weight as [K, N] (transposing an [N, K] one).
fn quantize_matrix(
    g: &mut Graph,
    weight: ValueId,
    transposed: bool,
    spec: &WeightSpec,
    st: &mut State,
) -> Result<QuantInit> {
    let t = constant(g, weight).expect("matched as constant").1.clone();
    let base = g.value_name(weight).to_string();
    if !transposed {
        return add_quantized(g, &t, base, spec, st);
    }
    let (r, c) = (t.dims[0] as usize, t.dims[1] as usize);
    let wt = super::kernels::with_f32(&t, |w| crate::quant::transpose(w, r, c))?;
    add_quantized_values(g, &wt, &[c, r], &t, format!("{base}_Transposed"), spec, st)
}

/// Quantizes float tensor `t` and adds `{base}_quantized`, `{base}_scale` and
/// `{base}_zero_point` initializers (onnxruntime's names).
fn add_quantized(
    g: &mut Graph,
    t: &Tensor,
    base: String,
    spec: &WeightSpec,
    st: &mut State,
) -> Result<QuantInit> {
    let dims: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
    // The float values are borrowed from the map where possible (pages dropped after).
    super::kernels::with_f32(t, |w| add_quantized_values(g, w, &dims, t, base, spec, st))?
}

/// Quantizes the values `w` (dims `dims`) of the float tensor `original` (stored
/// as-is or transposed) and adds `{base}_quantized`, `{base}_scale` and
/// `{base}_zero_point`. Codes are made a block of rows at a time, in parallel, and
/// spilled: no i32 code array of the whole weight, nothing resident until the save.
fn add_quantized_values(
    g: &mut Graph,
    w: &[f32],
    dims: &[usize],
    original: &Tensor,
    base: String,
    spec: &WeightSpec,
    st: &mut State,
) -> Result<QuantInit> {
    let err = |e: QuantError| Error::tensor(original.name(), e.to_string());
    let params = weight_params(w, dims, spec).map_err(err)?;
    let raw = encode_rows(w, dims, &params, spec).map_err(err)?;
    st.bytes_before += original.stored_len() as u64;
    let data = Tensor::from_raw(
        "",
        qtype_dtype(spec.qtype),
        dims.iter().map(|&d| d as i64).collect(),
        crate::io::spill::bytes(raw),
    )
    .stored_like(original);
    st.bytes_after += data.stored_len() as u64;
    let pdims = if spec.axis.is_some() {
        vec![params.len() as i64]
    } else {
        vec![]
    };
    let data = add_named(g, &format!("{base}_quantized"), data)?;
    let scale = add_named(
        g,
        &format!("{base}_scale"),
        scale_tensor(&params, pdims.clone()),
    )?;
    let zero_point = add_named(
        g,
        &format!("{base}_zero_point"),
        zp_tensor(&params, spec.qtype, pdims),
    )?;
    Ok(QuantInit {
        data,
        scale,
        zero_point,
    })
}

/// Elements quantized per parallel step of [`encode_rows`] and [`weight_params`].
const CODES_PER_STEP: usize = 1 << 20;

/// Leading rows per step for a tensor of `dims`, and the elements in one row.
fn row_steps(dims: &[usize]) -> (usize, usize) {
    let row: usize = dims[1..].iter().product::<usize>().max(1);
    ((CODES_PER_STEP / row).max(1), row)
}

/// Smallest and largest value per channel.
type ChannelRange = (Vec<f32>, Vec<f32>);

/// `int8::weight_params`, with the min/max scan split over blocks of leading rows
/// in parallel (the same ranges, so the same parameters).
fn weight_params(w: &[f32], dims: &[usize], spec: &WeightSpec) -> Result<Vec<ScaleZp>, QuantError> {
    if dims.len() < 2 || w.len() <= CODES_PER_STEP || spec.axis.is_some_and(|a| a >= dims.len()) {
        return int8::weight_params(w, dims, spec);
    }
    let (rows_per_step, row) = row_steps(dims);
    let channels = spec.axis.map_or(1, |a| dims[a]);
    let inner: usize = spec.axis.map_or(1, |a| dims[a + 1..].iter().product());
    let blocks: Vec<Result<ChannelRange, QuantError>> = w
        .par_chunks(rows_per_step * row)
        .enumerate()
        .map(|(b, chunk)| {
            let r0 = b * rows_per_step;
            let mut lo = vec![f32::INFINITY; channels];
            let mut hi = vec![f32::NEG_INFINITY; channels];
            for (e, &v) in chunk.iter().enumerate() {
                if !v.is_finite() {
                    return Err(QuantError(format!("value #{} is {v}", r0 * row + e)));
                }
                // Blocks start on a row, so channels of later axes repeat within a row.
                let c = match spec.axis {
                    None => 0,
                    Some(0) => r0 + e / row,
                    Some(_) => (e / inner) % channels,
                };
                lo[c] = lo[c].min(v);
                hi[c] = hi[c].max(v);
            }
            Ok((lo, hi))
        })
        .collect();
    let mut lo = vec![f32::INFINITY; channels];
    let mut hi = vec![f32::NEG_INFINITY; channels];
    for block in blocks {
        let (l, h) = block?;
        for c in 0..channels {
            lo[c] = lo[c].min(l[c]);
            hi[c] = hi[c].max(h[c]);
        }
    }
    let (qmin, qmax) = spec.qtype.range(spec.reduce_range, spec.symmetric);
    lo.iter()
        .zip(&hi)
        .map(|(&l, &h)| {
            let (l, h) = if l > h { (0.0, 0.0) } else { (l, h) };
            int8::scale_zp(l, h, qmin, qmax, spec.symmetric)
        })
        .collect()
}

/// The encoded codes of `w` (dims `dims`) with `params`, computed over blocks of
/// leading rows in parallel (the same codes as quantizing the whole tensor at once).
fn encode_rows(
    w: &[f32],
    dims: &[usize],
    params: &[ScaleZp],
    spec: &WeightSpec,
) -> Result<Vec<u8>, QuantError> {
    let bytes = spec.qtype.bytes();
    if dims.len() < 2 || w.is_empty() {
        let codes = int8::quantize_with(w, dims, params, spec.axis, spec.qtype)?;
        return Ok(spec.qtype.encode(&codes));
    }
    let (rows_per_step, row) = row_steps(dims);
    let mut out = vec![0u8; w.len() * bytes];
    out.par_chunks_mut(rows_per_step * row * bytes)
        .zip(w.par_chunks(rows_per_step * row))
        .enumerate()
        .try_for_each(|(b, (o, chunk))| {
            let r0 = b * rows_per_step;
            let rows = chunk.len() / row;
            let mut cdims = dims.to_vec();
            cdims[0] = rows;
            // Per-channel along axis 0: this block's rows have their own parameters.
            let p = match spec.axis {
                Some(0) => &params[r0..r0 + rows],
                _ => params,
            };
            let codes = int8::quantize_with(chunk, &cdims, p, spec.axis, spec.qtype)?;
            o.copy_from_slice(&spec.qtype.encode(&codes));
            Ok(())
        })?;
    Ok(out)
}

/// Adds `t` as an initializer under a fresh name derived from `name`.
pub(crate) fn add_named(g: &mut Graph, name: &str, mut t: Tensor) -> Result<ValueId> {
    t.name = Some(g.fresh_name(name));
    g.add_initializer(t)
}

pub(crate) fn qtype_dtype(q: QType) -> DType {
    match q {
        QType::U8 => DType::U8,
        QType::I8 => DType::I8,
        QType::U16 => DType::U16,
        QType::I16 => DType::I16,
    }
}

/// A tensor of encoded codes; a large payload is spilled (`crate::io::spill`) so it
/// does not stay resident until the save.
pub(crate) fn codes_tensor(name: &str, q: QType, dims: Vec<i64>, codes: &[i32]) -> Tensor {
    Tensor::from_raw(
        name,
        qtype_dtype(q),
        dims,
        crate::io::spill::bytes(q.encode(codes)),
    )
}

pub(crate) fn scale_tensor(params: &[ScaleZp], dims: Vec<i64>) -> Tensor {
    let s: Vec<f32> = params.iter().map(|p| p.scale).collect();
    Tensor::from_f32("", dims, &s)
}

pub(crate) fn zp_tensor(params: &[ScaleZp], q: QType, dims: Vec<i64>) -> Tensor {
    let z: Vec<i32> = params.iter().map(|p| p.zero_point).collect();
    codes_tensor("", q, dims, &z)
}

/// The bias of a Conv shaped [1, M, 1, ...] so it broadcasts over the output.
fn broadcast_bias(g: &mut Graph, b: ValueId, rank: usize, anchor: NodeId) -> Result<ValueId> {
    let mut shape = vec![1i64; rank.max(2)];
    shape[1] = -1;
    let base = g.value_name(b).to_string();
    if let Some((_, t)) = constant(g, b) {
        if t.dims.len() == 1 {
            let mut dims = vec![1i64; rank.max(2)];
            dims[1] = t.dims[0];
            let mut r = t.clone();
            r.dims = dims;
            return add_named(g, &format!("{base}_reshaped"), r);
        }
    }
    let s = add_named(
        g,
        &format!("{base}_reshape_shape"),
        Tensor::from_i64("", vec![shape.len() as i64], &shape),
    )?;
    let id = g.add_node(
        NodeSpec::new("", "Reshape")
            .name(g.fresh_node_name(&format!("{base}_Reshape")))
            .inputs([Some(b), Some(s)])
            .output(g.fresh_name(&format!("{base}_reshaped")))
            .meta(PASS_KEY, NAME),
    )?;
    g.place_before(id, anchor);
    Ok(g.node(id).output(0).expect("one output"))
}

/// Removes a constant (initializer or Constant node) nothing reads any more.
pub(crate) fn drop_if_unused(g: &mut Graph, v: ValueId, source: ConstSource) {
    if !g.value(v).uses().is_empty() || g.is_graph_output(v) {
        return;
    }
    match source {
        ConstSource::Initializer(v) => {
            let _ = g.remove_initializer(v);
        }
        ConstSource::ConstantNode(n) => {
            if g.contains_node(n) {
                let _ = g.remove_node(n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_and_codes_made_by_row_blocks_equal_the_whole_tensor_at_once() {
        // 600 rows of 2000: more than one block of CODES_PER_STEP.
        let dims = [600usize, 2000];
        let w: Vec<f32> = (0..dims[0] * dims[1])
            .map(|i| ((i * 7919) % 1000) as f32 / 250.0 - 2.0 + (i / 2000) as f32 * 0.01)
            .collect();
        for (qtype, symmetric, axis) in [
            (QType::I8, true, None),
            (QType::U8, false, None),
            (QType::I8, true, Some(1)),
            (QType::I8, true, Some(0)),
        ] {
            let spec = WeightSpec {
                qtype,
                symmetric,
                reduce_range: false,
                axis,
            };
            let params = int8::weight_params(&w, &dims, &spec).unwrap();
            assert_eq!(
                weight_params(&w, &dims, &spec).unwrap(),
                params,
                "{qtype:?} {axis:?}"
            );
            let whole = int8::quantize_with(&w, &dims, &params, axis, qtype).unwrap();
            let got = encode_rows(&w, &dims, &params, &spec).unwrap();
            assert_eq!(got, qtype.encode(&whole), "{qtype:?} {axis:?}");
        }
        let mut bad = w.clone();
        bad[700_001] = f32::NAN;
        let spec = WeightSpec {
            qtype: QType::I8,
            symmetric: true,
            reduce_range: false,
            axis: None,
        };
        let want = int8::weight_params(&bad, &dims, &spec).unwrap_err().0;
        assert_eq!(weight_params(&bad, &dims, &spec).unwrap_err().0, want);
    }
}
