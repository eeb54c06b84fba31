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
mod activations;
mod weights;

use activations::*;
use weights::*;

use std::collections::HashMap;

use rayon::prelude::*;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::ir::{Attribute, DType, Graph, Model, NodeId, NodeSpec, Tensor, ValueId};
use crate::quant::int8::{self, QType, ScaleZp, WeightSpec};
use crate::quant::QuantError;
use crate::rewrite::matchers::{constant, not_constant_reason, weight_matmul, ConstSource};
use crate::rewrite::{Pass, PassCx, PassOutcome, PASS_KEY};
use crate::transforms::common::qtypes::remove_orphans;
use crate::transforms::common::qtypes::{
    add_named, codes_tensor, drop_if_unused, qtype_dtype, scale_tensor, zp_tensor, WeightType,
};
use crate::transforms::common::select::Selection;

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
            crate::transforms::common::opset::raise_default_opset(model, 11)?;
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
            if self.selection.resolve(node.name())
                == crate::transforms::common::select::NodeOverride::Skip
            {
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
