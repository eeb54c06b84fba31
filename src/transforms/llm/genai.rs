//! `genai-decoder`: rewrites a decoder into the form onnxruntime-genai's model
//! builder emits, so genai's generator runs it:
//!
//! - attention (decomposed, or ONNX Attention) becomes one com.microsoft
//!   GroupQueryAttention per layer on the q/k/v projections' outputs, with the rotary
//!   embedding inside (do_rotary=1, `cos_cache`/`sin_cache`), `seqlens_k` =
//!   int32(ReduceSum(attention_mask) − 1) and `total_sequence_length` =
//!   int32(Shape(attention_mask)[1]), as the builder computes them;
//! - RMS norms (decomposed or RMSNormalization) become SimplifiedLayerNormalization,
//!   fused with the residual Add before them into com.microsoft
//!   SkipSimplifiedLayerNormalization;
//! - a decoder without a KV cache gets one first (`add-kv-cache`, genai's names);
//! - the now unused position_ids input goes (GroupQueryAttention derives positions
//!   from `seqlens_k`).
//!
//! Projections, the MLP, embedding and lm_head are kept as they are, so quantized
//! weights (MatMulNBits, GatherBlockQuantized) stay quantized. Layers already in
//! GroupQueryAttention form and norms already Simplified are left alone. The graph
//! is converted on a copy (tensors are shared, not duplicated) and swapped in only
//! when every layer converted.
use serde::Deserialize;

use super::kv_cache::{add_kv_cache, float_dtype, KvCacheOptions};
use super::rope::{cache_values, rotary_tables, RopeScaling, RotaryTables};
use crate::error::{Error, Result};
use crate::ir::{float_tensor, Attribute, DType, Graph, Model, NodeId, NodeSpec, Tensor, ValueId};
use crate::llm::{AttentionKind, DecoderMap, NormKind, NormMap, WeightRef};
use crate::rewrite::matchers::consumers;
use crate::rewrite::{Pass, PassCx, PassOutcome, PASS_KEY};

const NAME: &str = "genai-decoder";

/// Rotary positions when the decoder stores only inv_freq and no length is given.
pub const DEFAULT_CONTEXT_LENGTH: usize = 4096;

#[derive(Deserialize, Debug, Clone, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct GenaiConfig {
    /// Positions the rotary caches cover (genai_config's context_length). Default:
    /// the rows of the decoder's own caches, else [`DEFAULT_CONTEXT_LENGTH`].
    pub context_length: Option<usize>,
}

pub const GENAI_KEYS: &[&str] = &["context-length"];

/// What the conversion did, and the shape genai_config.json describes.
#[derive(Clone, Debug)]
pub struct GenaiReport {
    pub layers: usize,
    pub added_kv_cache: bool,
    pub attention_fused: usize,
    pub norms: usize,
    pub skip_norms: usize,
    pub context_length: usize,
    /// The decoder map of the converted graph.
    pub map: DecoderMap,
}

fn part_err(at: impl Into<String>, part: &str, reason: impl Into<String>) -> Error {
    Error::DecoderMap {
        at: at.into(),
        step: part.to_string(),
        reason: reason.into(),
    }
}

/// One layer's attention as GroupQueryAttention will read it.
struct AttnPlan {
    layer: usize,
    query: ValueId,
    key: Option<ValueId>,
    value: Option<ValueId>,
    past: [ValueId; 2],
    present: [ValueId; 2],
    o_proj: NodeId,
    o_slot: usize,
    num_heads: usize,
    kv_heads: usize,
    scale: Option<f32>,
    rotary: Option<bool>,
}

/// One RMS norm to fuse: where it reads, what it scales by.
struct NormPlan {
    /// Node name prefix, as genai's builder names the norm.
    base: String,
    x: ValueId,
    out: ValueId,
    weight: Option<ValueId>,
    eps: f32,
}

/// The input slot of a linear layer that carries the activation.
fn activation_slot(g: &Graph, w: &WeightRef) -> usize {
    let node = g.node(w.node_id);
    let is_weight = |v: Option<ValueId>| {
        v.is_some_and(|v| {
            v == w.weight_id
                || g.producer(v)
                    .is_some_and(|p| g.node(p).input(0) == Some(w.weight_id))
        })
    };
    if is_weight(node.input(0)) {
        1
    } else {
        0
    }
}

fn plan_attention(g: &Graph, map: &DecoderMap) -> Result<Vec<AttnPlan>> {
    let mut plans = Vec::new();
    for l in &map.layers {
        let at = format!("layer {}", l.index);
        let a = &l.attention;
        if a.kind == AttentionKind::GroupQueryAttention {
            continue;
        }
        if a.kind == AttentionKind::MultiHeadAttention {
            return Err(part_err(
                &at,
                "attention",
                "com.microsoft MultiHeadAttention is not converted to GroupQueryAttention",
            ));
        }
        let (query, key, value) = match (&a.q_proj, &a.k_proj, &a.v_proj, &a.qkv_proj) {
            (Some(q), Some(k), Some(v), _) => (q.output_id, Some(k.output_id), Some(v.output_id)),
            (_, _, _, Some(qkv)) => (qkv.output_id, None, None),
            _ => {
                return Err(part_err(
                    &at,
                    "q/k/v projections",
                    "the q, k and v projections were not all found",
                ))
            }
        };
        let find = |n: &Option<String>, what: &str| {
            n.as_deref().and_then(|n| g.find(n)).ok_or_else(|| {
                part_err(&at, "kv cache", format!("no {what} tensor for this layer"))
            })
        };
        let past = [
            find(&a.kv.past_key, "past key")?,
            find(&a.kv.past_value, "past value")?,
        ];
        let present = [
            find(&a.kv.present_key, "present key")?,
            find(&a.kv.present_value, "present value")?,
        ];
        if let Some(p) = present.iter().find(|p| !g.is_graph_output(**p)) {
            return Err(part_err(
                &at,
                "kv cache",
                format!(
                    "the present tensor '{}' is not a graph output",
                    g.value_name(*p)
                ),
            ));
        }
        let rotary = a.rotary.as_ref().map(|r| r.interleaved);
        plans.push(AttnPlan {
            layer: l.index,
            query,
            key,
            value,
            past,
            present,
            o_proj: a.o_proj.node_id,
            o_slot: activation_slot(g, &a.o_proj),
            num_heads: a.num_heads,
            kv_heads: a.num_kv_heads,
            scale: a.scale,
            rotary,
        });
    }
    Ok(plans)
}

fn plan_norm(
    g: &Graph,
    (at, part, base): (String, &str, String),
    n: &NormMap,
) -> Result<Option<NormPlan>> {
    if !matches!(n.kind, NormKind::RmsNormalization | NormKind::DecomposedRms) {
        return Ok(None);
    }
    let x = n.input_id.ok_or_else(|| {
        part_err(
            &at,
            part,
            format!("the input of norm '{}' was not found", n.node),
        )
    })?;
    let eps = n.epsilon.ok_or_else(|| {
        part_err(
            &at,
            part,
            format!("the epsilon of norm '{}' was not found", n.node),
        )
    })?;
    let weight = match n.weight.as_deref() {
        Some(w) => Some(g.find(w).ok_or_else(|| {
            part_err(
                &at,
                part,
                format!("the weight '{w}' of norm '{}' is gone", n.node),
            )
        })?),
        None => None,
    };
    Ok(Some(NormPlan {
        base,
        x,
        out: n.output_id,
        weight,
        eps,
    }))
}

fn plan_norms(g: &Graph, map: &DecoderMap) -> Result<Vec<NormPlan>> {
    let mut all = Vec::new();
    for l in &map.layers {
        let (at, base) = (
            format!("layer {}", l.index),
            format!("/model/layers.{}", l.index),
        );
        all.push((
            (at.clone(), "input norm", format!("{base}/input_layernorm")),
            &l.input_norm,
        ));
        all.push((
            (
                at,
                "post-attention norm",
                format!("{base}/post_attention_layernorm"),
            ),
            &l.post_attention_norm,
        ));
    }
    all.push((
        (
            "final norm".to_string(),
            "norm",
            format!("/model/layers.{}/final_norm_layernorm", map.num_layers),
        ),
        &map.final_norm,
    ));
    let mut plans = Vec::new();
    for (place, n) in all {
        plans.extend(plan_norm(g, place, n)?);
    }
    Ok(plans)
}

/// Adds a node with one output and the pass's mark; returns the output.
fn add(
    g: &mut Graph,
    domain: &str,
    op: &str,
    name: &str,
    inputs: Vec<Option<ValueId>>,
    attrs: Vec<Attribute>,
) -> Result<ValueId> {
    let out = g.fresh_name(&format!("{name}/output_0"));
    let mut spec = NodeSpec::new(domain, op)
        .name(g.fresh_node_name(name))
        .inputs(inputs)
        .output(out)
        .meta(PASS_KEY, NAME);
    spec.attributes = attrs;
    let id = g.add_node(spec)?;
    Ok(g.node(id).output(0).expect("one output declared"))
}

fn constant_i64(g: &mut Graph, name: &str, dims: Vec<i64>, vals: &[i64]) -> Result<ValueId> {
    let name = g.fresh_name(name);
    g.add_initializer(Tensor::from_i64(name, dims, vals))
}

/// seqlens_k and total_sequence_length from attention_mask, as genai's builder
/// computes them.
fn mask_lengths(g: &mut Graph, mask: ValueId, opset: i64) -> Result<(ValueId, ValueId)> {
    let base = "/model/attn_mask_reformat/attn_mask_subgraph";
    let one = constant_i64(g, "/model/constants/INT64/[1]", vec![1], &[1])?;
    let sum = if opset >= 13 {
        add(
            g,
            "",
            "ReduceSum",
            &format!("{base}/ReduceSum"),
            vec![Some(mask), Some(one)],
            vec![Attribute::int("keepdims", 0)],
        )?
    } else {
        add(
            g,
            "",
            "ReduceSum",
            &format!("{base}/ReduceSum"),
            vec![Some(mask)],
            vec![
                Attribute::ints("axes", vec![1]),
                Attribute::int("keepdims", 0),
            ],
        )?
    };
    let last = add(
        g,
        "",
        "Sub",
        &format!("{base}/Sub"),
        vec![Some(sum), Some(one)],
        vec![],
    )?;
    let i32 = Attribute::int("to", DType::I32.code() as i64);
    let seqlens = add(
        g,
        "",
        "Cast",
        &format!("{base}/Sub/Cast"),
        vec![Some(last)],
        vec![i32.clone()],
    )?;
    let shape = add(
        g,
        "",
        "Shape",
        &format!("{base}/Shape"),
        vec![Some(mask)],
        vec![],
    )?;
    let axis1 = constant_i64(g, "/model/constants/INT64/1", vec![], &[1])?;
    let total = add(
        g,
        "",
        "Gather",
        &format!("{base}/Gather"),
        vec![Some(shape), Some(axis1)],
        vec![Attribute::int("axis", 0)],
    )?;
    let total = add(
        g,
        "",
        "Cast",
        &format!("{base}/Gather/Cast"),
        vec![Some(total)],
        vec![i32],
    )?;
    Ok((seqlens, total))
}

/// Replaces every planned norm by SimplifiedLayerNormalization, or by
/// SkipSimplifiedLayerNormalization when it reads a residual Add of two computed
/// values. Returns (norms, of which skip).
fn fuse_norms(
    g: &mut Graph,
    plans: &[NormPlan],
    hidden: usize,
    dtype: DType,
) -> Result<(usize, usize)> {
    let mut skips = 0;
    for p in plans {
        let weight = match p.weight {
            Some(w) => w,
            None => {
                let ones = vec![1f32; hidden];
                let name = g.fresh_name(&format!("{}.unit_weight", p.base));
                g.add_initializer(float_tensor(&name, dtype, vec![hidden as i64], &ones))?
            }
        };
        let eps = Attribute::float("epsilon", p.eps);
        let base = &p.base;
        let residual_add = g.producer(p.x).filter(|&a| {
            let n = g.node(a);
            n.is("", "Add")
                && n.inputs().len() == 2
                && n.inputs()
                    .iter()
                    .all(|i| i.is_some_and(|i| g.producer(i).is_some() || g.is_graph_input(i)))
        });
        let new_out = if let Some(a) = residual_add {
            let (l, r) = (g.node(a).input(0), g.node(a).input(1));
            let out = g.fresh_name(&format!("{base}/output_0"));
            // The next residual Add reads the sum; the norm's own nodes do not count.
            let x_used_elsewhere = g.is_graph_output(p.x)
                || consumers(g, p.x)
                    .iter()
                    .any(|(n, _)| g.node(*n).is("", "Add"));
            let sum = if x_used_elsewhere {
                g.fresh_name(&format!("{base}/output_3"))
            } else {
                String::new()
            };
            let mut spec = NodeSpec::new("com.microsoft", "SkipSimplifiedLayerNormalization")
                .name(g.fresh_node_name(&format!("{base}/SkipSimplifiedLayerNormalization")))
                .inputs([l, r, Some(weight)])
                .output(out)
                .meta(PASS_KEY, NAME);
            if x_used_elsewhere {
                spec = spec.output("").output("").output(sum);
            }
            spec.attributes = vec![eps];
            let id = g.add_node(spec)?;
            if let Some(s) = g.node(id).output(3) {
                g.replace_all_uses(p.x, s, true)?;
            }
            skips += 1;
            g.node(id).output(0).expect("declared")
        } else {
            add(
                g,
                "",
                "SimplifiedLayerNormalization",
                &format!("{base}/SimplifiedLayerNormalization"),
                vec![Some(p.x), Some(weight)],
                vec![
                    Attribute::int("axis", -1),
                    eps,
                    Attribute::int("stash_type", 1),
                ],
            )?
        };
        g.replace_all_uses(p.out, new_out, true)?;
    }
    Ok((plans.len(), skips))
}

/// Converts `model` in place, or returns the error of the first layer and part that
/// does not fit and leaves `model` unchanged.
pub fn to_genai(model: &mut Model, cfg: &GenaiConfig) -> Result<GenaiReport> {
    let mut g = model.graph.clone();
    let first = DecoderMap::build(&g)?;
    let has_cache = !first.io.past.is_empty()
        || first
            .layers
            .iter()
            .all(|l| l.attention.kind == AttentionKind::GroupQueryAttention);
    if !has_cache {
        add_kv_cache(&mut g, &KvCacheOptions::default())?;
    }
    let map = DecoderMap::build(&g)?;
    let attn = plan_attention(&g, &map)?;
    let norms = plan_norms(&g, &map)?;
    let mask = match &map.io.attention_mask {
        Some(m) => g.find(&m.name),
        None => None,
    };
    let dtype = float_dtype(&g, &map);
    let mut context_length = cfg.context_length.unwrap_or(DEFAULT_CONTEXT_LENGTH);
    let mut gqa_nodes: Vec<(NodeId, [String; 2])> = Vec::new();
    if !attn.is_empty() {
        let mask = mask.ok_or_else(|| {
            part_err(
                "layer 0",
                "mask",
                "no attention_mask input: GroupQueryAttention's seqlens_k is computed from it",
            )
        })?;
        let caches = if attn.iter().any(|a| a.rotary.is_some()) {
            let tables = rotary_tables(&g, &map)
                .map_err(|e| part_err("layer 0", "rotary", e.to_string()))?;
            let stored_rows = match tables {
                RotaryTables::Caches { cos, .. } => g.initializer(cos).map(|t| t.dims[0] as usize),
                RotaryTables::InvFreq(_) => None,
            };
            context_length = cfg
                .context_length
                .or(stored_rows)
                .unwrap_or(DEFAULT_CONTEXT_LENGTH);
            let v = cache_values(&g, tables, context_length, RopeScaling::None)?;
            let dims = vec![context_length as i64, v.half as i64];
            let (cn, sn) = (g.fresh_name("cos_cache"), g.fresh_name("sin_cache"));
            let c = g.add_initializer(float_tensor(&cn, dtype, dims.clone(), &v.cos))?;
            let s = g.add_initializer(float_tensor(&sn, dtype, dims, &v.sin))?;
            Some((c, s))
        } else {
            None
        };
        let opset = model.opset("").unwrap_or(1);
        let (seqlens, total) = mask_lengths(&mut g, mask, opset)?;
        for p in attn.iter() {
            let base = format!("/model/layers.{}/attn/GroupQueryAttention", p.layer);
            let (cos, sin) = match (p.rotary, caches) {
                (Some(_), Some((c, s))) => (Some(c), Some(s)),
                _ => (None, None),
            };
            let out = g.fresh_name(&format!("{base}/output_0"));
            let pk = g.fresh_name(&format!("{}/gqa", g.value_name(p.present[0])));
            let pv = g.fresh_name(&format!("{}/gqa", g.value_name(p.present[1])));
            let mut attrs = vec![
                Attribute::int("num_heads", p.num_heads as i64),
                Attribute::int("kv_num_heads", p.kv_heads as i64),
                Attribute::int("do_rotary", p.rotary.is_some() as i64),
                Attribute::int("rotary_interleaved", p.rotary.unwrap_or(false) as i64),
                Attribute::int("local_window_size", -1),
                Attribute::float("softcap", 0.0),
            ];
            if let Some(s) = p.scale {
                attrs.push(Attribute::float("scale", s));
            }
            attrs.sort_by(|a, b| a.name.cmp(&b.name));
            let mut spec = NodeSpec::new("com.microsoft", "GroupQueryAttention")
                .name(g.fresh_node_name(&base))
                .inputs([
                    Some(p.query),
                    p.key,
                    p.value,
                    Some(p.past[0]),
                    Some(p.past[1]),
                    Some(seqlens),
                    Some(total),
                    cos,
                    sin,
                ])
                .output(out)
                .output(pk)
                .output(pv)
                .meta(PASS_KEY, NAME);
            spec.attributes = attrs;
            let id = g.add_node(spec)?;
            gqa_nodes.push((id, p.present.map(|v| g.value_name(v).to_string())));
            let y = g.node(id).output(0).expect("declared");
            g.set_input(p.o_proj, p.o_slot, Some(y));
            for slot in 0..2 {
                let new = g.node(id).output(slot + 1).expect("declared");
                g.replace_all_uses(p.present[slot], new, true)?;
            }
        }
    }
    let hidden = map.hidden_size;
    let (norm_count, skip_norms) = fuse_norms(&mut g, &norms, hidden, dtype)?;
    g.remove_dead();
    // Rotary positions now come from seqlens_k: an input nobody reads goes.
    let unread: Vec<ValueId> = g
        .inputs
        .iter()
        .map(|io| io.value)
        .filter(|&v| g.value(v).uses().is_empty() && !g.is_graph_output(v))
        .collect();
    for v in unread {
        if Some(v) != map.io.position_ids.as_ref().and_then(|p| g.find(&p.name)) {
            continue;
        }
        g.remove_input(v)?;
    }
    // The present outputs take their names back from the nodes they replaced.
    for (id, names) in &gqa_nodes {
        for (slot, name) in names.iter().enumerate() {
            let v = g.node(*id).output(slot + 1).expect("declared");
            g.rename_value(v, name)?;
        }
    }
    g.toposort()?;
    let done = DecoderMap::build(&g).map_err(|e| {
        Error::invalid(format!(
            "genai-decoder: the converted graph is not a decoder the map reads ({e})"
        ))
    })?;
    model.graph = g;
    if !attn.is_empty() || skip_norms > 0 {
        model.require_opset("com.microsoft", 1);
    }
    Ok(GenaiReport {
        layers: done.num_layers,
        added_kv_cache: !has_cache,
        attention_fused: attn.len(),
        norms: norm_count,
        skip_norms,
        context_length,
        map: done,
    })
}

/// The recipe form of [`to_genai`].
pub struct GenaiDecoder {
    pub config: GenaiConfig,
}

impl GenaiDecoder {
    pub fn new(config: GenaiConfig) -> Result<Self> {
        if config.context_length == Some(0) {
            return Err(Error::invalid("genai-decoder: context-length must be > 0"));
        }
        Ok(GenaiDecoder { config })
    }
}

impl Pass for GenaiDecoder {
    fn name(&self) -> &'static str {
        NAME
    }

    fn run(&self, model: &mut Model, _cx: &mut PassCx) -> Result<PassOutcome> {
        let r = to_genai(model, &self.config)?;
        let mut outcome = PassOutcome::new(NAME);
        outcome.changed = r.added_kv_cache || r.attention_fused > 0 || r.norms > 0;
        outcome.count("layers", r.layers as u64);
        outcome.count("group-query-attention", r.attention_fused as u64);
        outcome.count("simplified-norms", (r.norms - r.skip_norms) as u64);
        outcome.count("skip-simplified-norms", r.skip_norms as u64);
        outcome.count("kv-cache-added", r.added_kv_cache as u64);
        outcome.count("context-length", r.context_length as u64);
        Ok(outcome)
    }
}
