//! Weight-only N-bit quantization of constant MatMul/Gemm weights.
//!
//! Matches: every MatMul/Gemm whose B is a constant 2-D float tensor (initializer or
//! Constant node, directly or through Transpose), in the main graph and subgraphs.
//! Emits: com.microsoft MatMulNBits (bits 2/4/8) or, with `format = "qdq"`, ONNX
//! DequantizeLinear (opset 21, blocked along K) → MatMul. Gemm's C and a following
//! Add of a constant `[N]` vector become MatMulNBits' bias.
//! Keeps: every value name the rest of the graph reads (outputs keep their names).
use std::collections::HashMap;

use rayon::prelude::*;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::ir::{Attribute, Graph, Model, NodeId, NodeSpec, Tensor, Use, ValueDef, ValueId};
use crate::rewrite::matchers::{following_bias_add, weight_matmul, WeightMatMul};
use crate::rewrite::{Pass, PassCx, PassOutcome, PASS_KEY};
use crate::transforms::common::nbits::{
    self as kernels, Algorithm, Format, NbitsWeight, ReadyWeight,
};
use crate::transforms::common::qtypes::remove_orphans;
use crate::transforms::common::select::{NodeOverride, Selection};

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct WeightOnlyConfig {
    pub bits: u8,
    pub block_size: usize,
    pub symmetric: bool,
    /// MatMulNBits accuracy_level (0 = unset: A stays in its float type).
    pub accuracy_level: i64,
    pub algorithm: Algorithm,
    pub format: Format,
    /// Node name patterns (`*` wildcards) to leave alone.
    pub exclude: Vec<String>,
    /// Op types to consider.
    pub include_ops: Vec<String>,
    /// JSON file: {"node name or pattern": {"bits": 8, "block-size": 64, "symmetric": false} | "skip"}.
    pub nodes_config: Option<String>,
    /// Absorb a following Add of a constant bias into MatMulNBits.
    pub fuse_bias: bool,
}

impl Default for WeightOnlyConfig {
    fn default() -> Self {
        WeightOnlyConfig {
            bits: 4,
            block_size: 32,
            symmetric: true,
            accuracy_level: 0,
            algorithm: Algorithm::Rtn,
            format: Format::Matmulnbits,
            exclude: Vec::new(),
            include_ops: vec!["MatMul".into(), "Gemm".into()],
            nodes_config: None,
            fuse_bias: true,
        }
    }
}

pub const WEIGHT_ONLY_KEYS: &[&str] = &[
    "bits",
    "block-size",
    "symmetric",
    "accuracy-level",
    "algorithm",
    "format",
    "exclude",
    "include-ops",
    "nodes-config",
    "fuse-bias",
];

/// Checks a bits/block size/format combination before any work.
pub fn validate(bits: u8, block_size: usize, format: Format, algorithm: Algorithm) -> Result<()> {
    let valid_bits: &[u8] = match format {
        Format::Matmulnbits => &[2, 4, 8],
        Format::Qdq => &[4, 8],
    };
    if !valid_bits.contains(&bits) {
        return Err(Error::invalid(format!(
            "bits={bits} is not supported for format {format:?} (valid: {valid_bits:?})"
        )));
    }
    if block_size < 16 || !block_size.is_power_of_two() {
        return Err(Error::invalid(format!(
            "block size {block_size} must be a power of two, at least 16"
        )));
    }
    let _ = algorithm;
    Ok(())
}

pub struct WeightOnly {
    pub config: WeightOnlyConfig,
    selection: Selection,
    /// The pass name created nodes carry (`onnxq.pass`).
    label: &'static str,
}

impl WeightOnly {
    pub fn new(config: WeightOnlyConfig) -> Result<Self> {
        validate(
            config.bits,
            config.block_size,
            config.format,
            config.algorithm,
        )?;
        let selection = Selection::new(
            &config.exclude,
            &config.include_ops,
            config.nodes_config.as_deref(),
        )?;
        selection.refuse_unless(
            &["bits", "block-size", "symmetric"],
            "weight-only quantization",
        )?;
        for o in selection.overrides() {
            if let NodeOverride::Quantize {
                bits, block_size, ..
            } = o
            {
                validate(
                    bits.unwrap_or(config.bits),
                    block_size.unwrap_or(config.block_size),
                    config.format,
                    config.algorithm,
                )?;
            }
        }
        Ok(WeightOnly {
            config,
            selection,
            label: "matmul-nbits",
        })
    }

    /// The same emission under another pass name (GPTQ, AWQ quantize elsewhere and
    /// call [`WeightOnly::emit_quantized`]).
    pub fn labelled(mut self, label: &'static str) -> Self {
        self.label = label;
        self
    }
}

/// A rewrite with its weight already quantized: (MatMul, fused bias Add, index of
/// the quantized weight).
pub type Planned = (WeightMatMul, Option<(NodeId, ValueId)>, usize);

/// One planned rewrite.
struct Job {
    m: WeightMatMul,
    add: Option<(NodeId, ValueId)>,
    params: kernels::Params,
}

impl Pass for WeightOnly {
    fn name(&self) -> &'static str {
        "matmul-nbits"
    }

    fn run(&self, model: &mut Model, cx: &mut PassCx) -> Result<PassOutcome> {
        let mut outcome = PassOutcome::new(self.name());
        localize_captured_weights(&mut model.graph)?;
        let mut total = 0usize;
        model.for_each_graph_mut(&mut |g| {
            total += candidates_in(
                g,
                &self.selection,
                &self.config,
                &mut PassOutcome::default(),
            )
            .len()
        });
        let progress = kernels::progress_bar(cx.progress, total as u64, "quantizing");
        let result =
            model.try_for_each_graph_mut(&mut |g| self.run_graph(g, &mut outcome, &progress));
        progress.finish_and_clear();
        result?;
        if outcome.changed {
            match self.config.format {
                Format::Matmulnbits => {
                    model.require_opset("com.microsoft", 1);
                }
                Format::Qdq => crate::transforms::common::opset::raise_for_blocked_dq(model)?,
            }
        }
        Ok(outcome)
    }
}

/// Whether `sg` has a MatMul/Gemm whose weight (directly or through a Transpose)
/// is the value named `name`.
fn weight_of_matmul_in(sg: &Graph, name: &str) -> bool {
    let Some(v) = sg.find(name) else {
        return false;
    };
    sg.nodes().any(|(_, n)| {
        (n.is("", "MatMul") || n.is("", "Gemm"))
            && n.input(1).is_some_and(|b| {
                b == v
                    || sg.producer(b).is_some_and(|p| {
                        sg.node(p).is("", "Transpose") && sg.node(p).input(0) == Some(v)
                    })
            })
    })
}

/// A subgraph MatMul/Gemm whose weight is an initializer of the enclosing graph
/// reads it by capture, which the per-graph rewrite cannot quantize. When only
/// that one node's subgraphs read the initializer, it moves into each of them
/// (same name, now local), so each subgraph's rewrite quantizes it like a weight
/// of its own; the enclosing graph no longer holds it. Recurses into subgraphs.
fn localize_captured_weights(g: &mut Graph) -> Result<()> {
    let holders: Vec<NodeId> = g
        .nodes()
        .filter(|(_, n)| n.attributes.iter().any(|a| a.subgraphs().next().is_some()))
        .map(|(id, _)| id)
        .collect();
    for id in holders {
        let movable: Vec<(ValueId, Tensor)> = g
            .initializers()
            .filter_map(|(v, t)| {
                let only_this_node = !g.value(v).uses().is_empty()
                    && g.value(v).uses().iter().all(|u| *u == Use::Capture(id))
                    && !g.is_graph_input(v)
                    && !g.is_graph_output(v);
                let read_as_weight = g
                    .node(id)
                    .attributes
                    .iter()
                    .any(|a| a.subgraphs().any(|sg| weight_of_matmul_in(sg, t.name())));
                (only_this_node && read_as_weight).then(|| (v, t.clone()))
            })
            .collect();
        if movable.is_empty() {
            continue;
        }
        for a in g.node_mut(id).attributes.iter_mut() {
            for sg in a.subgraphs_mut() {
                for (_, t) in &movable {
                    if sg
                        .find(t.name())
                        .is_some_and(|v| sg.value(v).def == ValueDef::Outer)
                    {
                        sg.add_initializer(t.clone())?;
                    }
                }
            }
        }
        g.refresh_captures(id);
        for (v, _) in movable {
            g.remove_initializer(v)?;
        }
    }
    for sg in g.subgraphs_mut() {
        localize_captured_weights(sg)?;
    }
    Ok(())
}

fn candidates_in(
    g: &Graph,
    sel: &Selection,
    cfg: &WeightOnlyConfig,
    outcome: &mut PassOutcome,
) -> Vec<Job> {
    let mut jobs = Vec::new();
    for (id, node) in g.nodes() {
        if !sel.op_included(&node.op_type) || !node.domain().is_empty() {
            continue;
        }
        let m = match weight_matmul(g, id) {
            Ok(m) => m,
            Err(reason) => {
                outcome.skip(node.name(), reason);
                continue;
            }
        };
        let params = match sel.resolve_node(node) {
            NodeOverride::Skip => {
                outcome.skip(node.name(), "excluded");
                continue;
            }
            NodeOverride::Quantize {
                bits,
                block_size,
                symmetric,
                ..
            } => kernels::Params {
                bits: bits.unwrap_or(cfg.bits),
                block_size: block_size.unwrap_or(cfg.block_size),
                symmetric: symmetric.unwrap_or(cfg.symmetric),
                algorithm: cfg.algorithm,
            },
        };
        let add = if cfg.fuse_bias && cfg.format == Format::Matmulnbits {
            following_bias_add(g, &m)
        } else {
            None
        };
        jobs.push(Job { m, add, params });
    }
    jobs
}

impl WeightOnly {
    fn run_graph(
        &self,
        g: &mut Graph,
        outcome: &mut PassOutcome,
        progress: &indicatif::ProgressBar,
    ) -> Result<()> {
        let jobs = candidates_in(g, &self.selection, &self.config, outcome);
        if jobs.is_empty() {
            return Ok(());
        }
        // A weight read by several MatMuls is quantized once (same params only).
        let mut unique: Vec<(ValueId, bool, kernels::Params)> = Vec::new();
        let mut index: HashMap<(ValueId, bool, kernels::Params), usize> = HashMap::new();
        for j in &jobs {
            let key = (j.m.weight, j.m.transposed, j.params);
            index.entry(key).or_insert_with(|| {
                unique.push(key);
                unique.len() - 1
            });
        }
        let graph: &Graph = g;
        let format = self.config.format;
        // Each weight becomes its stored tensors as soon as it is quantized (large
        // ones spilled), so quantized bytes do not pile up in memory before the save.
        let quantized: Vec<Result<ReadyWeight>> = unique
            .par_iter()
            .map(|&(w, transposed, params)| {
                let tensor = crate::rewrite::matchers::constant(graph, w)
                    .expect("matched as constant")
                    .1;
                let r = kernels::quantize_weight(tensor, transposed, &params)
                    .map(|q| q.into_ready(format));
                progress.inc(1);
                r
            })
            .collect();
        let quantized: Vec<ReadyWeight> = quantized.into_iter().collect::<Result<_>>()?;
        let planned = jobs
            .into_iter()
            .map(|j| {
                let ui = index[&(j.m.weight, j.m.transposed, j.params)];
                (j.m, j.add, ui)
            })
            .collect();
        self.emit_ready(g, planned, quantized, outcome)
    }

    /// Rewrites each `(matmul, fused bias Add, i)` of `jobs` with the already
    /// quantized weight `quantized[i]`; jobs sharing an `i` share its initializers.
    /// The weights must be [K, N] quantizations of the jobs' weights.
    pub fn emit_quantized(
        &self,
        g: &mut Graph,
        jobs: Vec<Planned>,
        quantized: Vec<NbitsWeight>,
        outcome: &mut PassOutcome,
    ) -> Result<()> {
        let format = self.config.format;
        let ready = quantized
            .into_iter()
            .map(|q| q.into_ready(format))
            .collect();
        self.emit_ready(g, jobs, ready, outcome)
    }

    /// [`WeightOnly::emit_quantized`] with the weights already in stored form
    /// ([`NbitsWeight::into_ready`] right after quantizing each one spills it, so a
    /// pass holding many quantized weights does not hold their bytes).
    pub fn emit_ready(
        &self,
        g: &mut Graph,
        jobs: Vec<Planned>,
        quantized: Vec<ReadyWeight>,
        outcome: &mut PassOutcome,
    ) -> Result<()> {
        // Each weight is consumed into its initializers when first used, so the
        // quantized bytes are never held twice.
        let params: Vec<(kernels::Params, usize)> = quantized
            .iter()
            .map(|q| (q.params, q.original_bytes))
            .collect();
        let mut pending: Vec<Option<ReadyWeight>> = quantized.into_iter().map(Some).collect();
        // Add the new initializers once per unique weight, in order (deterministic names).
        let mut names: Vec<Option<(ValueId, ValueId, Option<ValueId>)>> = vec![None; pending.len()];
        for (m, add, ui) in jobs {
            let vals = match names[ui] {
                Some(v) => v,
                None => {
                    let q = pending[ui].take().expect("each weight is consumed once");
                    outcome.count("weight bytes after", q.stored_bytes as u64);
                    let v = self.add_weight_tensors(g, &m, q)?;
                    names[ui] = Some(v);
                    v
                }
            };
            let (params, original_bytes) = params[ui];
            let j = Job { m, add, params };
            self.rewrite(g, &j, vals)?;
            outcome.count("matmuls quantized", 1);
            outcome.count("weight bytes before", original_bytes as u64);
            outcome.changed = true;
        }
        Ok(())
    }

    /// Adds B/scales/zero points (or QDQ data/scales/zero points) initializers.
    fn add_weight_tensors(
        &self,
        g: &mut Graph,
        m: &WeightMatMul,
        q: ReadyWeight,
    ) -> Result<(ValueId, ValueId, Option<ValueId>)> {
        let original = crate::rewrite::matchers::constant(g, m.weight)
            .expect("constant")
            .1
            .clone();
        let base = g.value_name(m.weight).to_string();
        let (data_name, scale_name, zp_name) = match self.config.format {
            Format::Matmulnbits => (
                format!("{base}_Q{}", q.params.bits),
                format!("{base}_scales"),
                format!("{base}_zero_points"),
            ),
            Format::Qdq => (
                format!("{base}_DQ_Q{}", q.params.bits),
                format!("{base}_DQ_scales"),
                format!("{base}_DQ_zero_points"),
            ),
        };
        let mut tensors = q.tensors;
        // B of a weight read transposed holds the rows of the float tensor, in the
        // layout a GatherBlockQuantized of that tensor reads (tied embeddings).
        if self.config.format == Format::Matmulnbits && m.transposed {
            tensors.data = tensors.data.holding_quantized_rows_of(&base);
        }
        let mut add = |name: String, t: Tensor| -> Result<ValueId> {
            let name = g.fresh_name(&name);
            let mut t = t.stored_like(&original);
            t.name = Some(name);
            g.add_initializer(t)
        };
        let d = add(data_name, tensors.data)?;
        let s = add(scale_name, tensors.scales)?;
        let z = match tensors.zero_points {
            Some(z) => Some(add(zp_name, z)?),
            None => None,
        };
        Ok((d, s, z))
    }

    fn rewrite(
        &self,
        g: &mut Graph,
        j: &Job,
        (d, s, z): (ValueId, ValueId, Option<ValueId>),
    ) -> Result<()> {
        let m = &j.m;
        let node = g.node(m.node);
        let name = node.name().to_string();
        let a = node.input(0).ok_or_else(|| Error::Node {
            node: name.clone(),
            op: node.op_type.clone(),
            reason: "no A input".into(),
        })?;
        match self.config.format {
            Format::Matmulnbits => {
                let bias = m.bias.or(j.add.map(|(_, b)| b));
                let mut inputs = vec![Some(a), Some(d), Some(s), z];
                if let Some(b) = bias {
                    inputs.resize(5, None);
                    inputs.push(Some(b));
                }
                while inputs.last() == Some(&None) {
                    inputs.pop();
                }
                let mut spec = NodeSpec::new("com.microsoft", "MatMulNBits")
                    .name(g.fresh_node_name(&format!("{name}_Q{}", j.params.bits)))
                    .inputs(inputs)
                    .attr(Attribute::int("K", m.k as i64))
                    .attr(Attribute::int("N", m.n as i64))
                    .attr(Attribute::int("bits", j.params.bits as i64))
                    .attr(Attribute::int("block_size", j.params.block_size as i64))
                    .meta(PASS_KEY, self.label);
                if self.config.accuracy_level != 0 {
                    spec = spec.attr(Attribute::int("accuracy_level", self.config.accuracy_level));
                }
                match j.add {
                    Some((add, _)) => {
                        g.swap_node(add, spec)?;
                        g.remove_node(m.node)?;
                    }
                    None => {
                        g.swap_node(m.node, spec)?;
                    }
                }
            }
            Format::Qdq => {
                let dq_out = g.fresh_name(&format!("{}_dequantized", g.value_name(m.weight)));
                let mut dq = NodeSpec::new("", "DequantizeLinear")
                    .name(g.fresh_node_name(&format!("{name}_DequantizeLinear")))
                    .inputs([Some(d), Some(s), z])
                    .output(dq_out.clone())
                    .attr(Attribute::int("axis", 0))
                    .attr(Attribute::int("block_size", j.params.block_size as i64))
                    .meta(PASS_KEY, self.label);
                if z.is_none() {
                    dq.inputs.truncate(2);
                }
                let dq_id = g.add_node(dq)?;
                g.place_before(dq_id, m.node);
                let w = g.node(dq_id).output(0).expect("one output");
                let mut inputs = vec![Some(a), Some(w)];
                let op = if m.bias.is_some() { "Gemm" } else { "MatMul" };
                if let Some(b) = m.bias {
                    inputs.push(Some(b));
                }
                let spec = NodeSpec::new("", op)
                    .name(name.clone())
                    .inputs(inputs)
                    .meta(PASS_KEY, self.label);
                g.swap_node(m.node, spec)?;
            }
        }
        remove_orphans(g, m);
        Ok(())
    }
}
