//! `add-kv-cache`: gives a decoder exported without a cache the past/present
//! tensors genai and Optimum feed, so each step computes only the new tokens.
//!
//! Per layer the cache holds K after rotary and before repeat_kv (the kv-head
//! layout, [batch, kv_heads, past, head_dim]), so past entries are never rotated
//! again: the caller's position ids (offset by the past length) rotate only the new
//! K. The mask must already be built from attention_mask's length, as HF/Optimum
//! exports build it; then a total-length attention_mask gives the extended causal
//! mask by itself.
use crate::error::{Error, Result};
use crate::ir::{Attribute, DType, Dim, Graph, NodeId, NodeSpec, ValueId, ValueInfo};
use crate::ir::{ShapeDim, TypeInfo, TypeKind};
use crate::llm::{AttentionKind, DecoderMap, LayerMap, RotaryKind};
use crate::rewrite::matchers::consumers;

/// Names of the new cache tensors; `{i}` is the layer index.
#[derive(Clone, Debug)]
pub struct KvCacheOptions {
    pub past_key: String,
    pub past_value: String,
    pub present_key: String,
    pub present_value: String,
}

impl Default for KvCacheOptions {
    /// ONNX Runtime GenAI's (and Optimum's) names.
    fn default() -> Self {
        KvCacheOptions {
            past_key: "past_key_values.{i}.key".into(),
            past_value: "past_key_values.{i}.value".into(),
            present_key: "present.{i}.key".into(),
            present_value: "present.{i}.value".into(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct KvCacheReport {
    pub layers: usize,
    pub attention: AttentionKind,
}

/// Where one layer's cache goes.
enum Site {
    /// Concat(past, k) and Concat(past, v) on these [batch, kv_heads, seq, head_dim] values.
    Decomposed { k: ValueId, v: ValueId },
    /// An opset-23 Attention node: its past inputs and present outputs.
    Fused(NodeId),
}

fn part_err(layer: usize, part: &str, reason: impl Into<String>) -> Error {
    Error::DecoderMap {
        at: format!("layer {layer}"),
        step: part.to_string(),
        reason: reason.into(),
    }
}

fn is_transpose_last_two(g: &Graph, n: NodeId) -> bool {
    let node = g.node(n);
    node.is("", "Transpose")
        && node
            .attr("perm")
            .is_some_and(|a| a.ints.len() == 4 && a.ints[2] == 3 && a.ints[3] == 2)
}

/// Back from an operand of the attention MatMuls to the kv-head tensor: through Kᵀ
/// and repeat_kv (Unsqueeze → Expand → Reshape), which must stay after the cache.
fn before_repeat(g: &Graph, mut v: ValueId) -> ValueId {
    for _ in 0..6 {
        let Some(p) = g.producer(v) else { break };
        let node = g.node(p);
        let through = is_transpose_last_two(g, p)
            || node.is("", "Expand")
            || node.is("", "Unsqueeze")
            || (node.is("", "Reshape")
                && node
                    .input(0)
                    .and_then(|i| g.producer(i))
                    .is_some_and(|e| g.node(e).is("", "Expand")));
        match (through, node.input(0)) {
            (true, Some(i)) => v = i,
            _ => break,
        }
    }
    v
}

/// The score MatMul (Q·Kᵀ) feeding a decomposed attention's Softmax.
fn score_matmul(g: &Graph, softmax: NodeId) -> Option<NodeId> {
    let mut v = g.node(softmax).input(0)?;
    for _ in 0..6 {
        let p = g.producer(v)?;
        let node = g.node(p);
        if node.is("", "MatMul") {
            return Some(p);
        }
        if !matches!(
            node.op_type.as_str(),
            "Add" | "Mul" | "Div" | "Where" | "Cast" | "Tanh"
        ) {
            return None;
        }
        v = node.input(0)?;
    }
    None
}

/// Where the layer's cache goes, and the Range node of positions the graph counts
/// itself (they must start at the past length).
fn site(
    g: &Graph,
    layer: &LayerMap,
    mask_input: ValueId,
    ids: ValueId,
) -> Result<(Site, Option<NodeId>)> {
    let i = layer.index;
    let a = &layer.attention;
    if let Some(rot) = &a.rotary {
        let from = match rot.kind {
            RotaryKind::Decomposed => rot.cos.as_deref().and_then(|c| g.find(c)),
            _ => rot.position_input,
        };
        if let Some(range) = from.and_then(|v| position_range(g, v)) {
            return site_at(g, layer, mask_input).map(|s| (s, Some(range)));
        }
        let given = rot
            .position_input
            .is_some_and(|p| g.is_graph_input(p) && p != ids);
        if !given {
            return Err(part_err(
                i,
                "rotary",
                "the rotary positions are neither read from a position input nor a Range \
                 in the graph: a cached step could not be told its offset",
            ));
        }
    }
    site_at(g, layer, mask_input).map(|s| (s, None))
}

/// The Range node that computes the rotary positions from `v` back (within 12
/// nodes), when the graph counts positions itself.
fn position_range(g: &Graph, v: ValueId) -> Option<NodeId> {
    let mut stack = vec![(v, 0usize)];
    let mut seen = std::collections::BTreeSet::new();
    while let Some((v, d)) = stack.pop() {
        if !seen.insert(v) {
            continue;
        }
        let Some(p) = g.producer(v) else { continue };
        if g.node(p).is("", "Range") {
            return Some(p);
        }
        if d < 12 {
            stack.extend(g.node(p).inputs().iter().flatten().map(|i| (*i, d + 1)));
        }
    }
    None
}

fn site_at(g: &Graph, layer: &LayerMap, mask_input: ValueId) -> Result<Site> {
    let i = layer.index;
    let a = &layer.attention;
    let reads_mask = |m: ValueId| m == mask_input || crate::llm::computed_from(g, m, mask_input);
    match a.kind {
        AttentionKind::Decomposed => {
            let mask_ok = a.mask_id.is_some_and(reads_mask);
            if !mask_ok {
                return Err(part_err(
                    i,
                    "mask",
                    format!(
                        "the attention mask is not computed from '{}'; its length would \
                         not follow the past",
                        g.value_name(mask_input)
                    ),
                ));
            }
            let softmax = a.node_id;
            let scores = score_matmul(g, softmax)
                .ok_or_else(|| part_err(i, "attention", "no Q·Kᵀ MatMul before the Softmax"))?;
            let probs = g
                .node(softmax)
                .output(0)
                .ok_or_else(|| part_err(i, "attention", "the Softmax has no output"))?;
            let pv = match consumers(g, probs).as_slice() {
                [(n, 0)] if g.node(*n).is("", "MatMul") => *n,
                _ => {
                    return Err(part_err(
                        i,
                        "attention",
                        "the Softmax output is not read by exactly one MatMul with V",
                    ))
                }
            };
            let k = g
                .node(scores)
                .input(1)
                .map(|k| before_repeat(g, k))
                .ok_or_else(|| part_err(i, "k path", "the score MatMul has no K operand"))?;
            let v = g
                .node(pv)
                .input(1)
                .map(|v| before_repeat(g, v))
                .ok_or_else(|| part_err(i, "v path", "the output MatMul has no V operand"))?;
            if g.producer(k).is_none() || g.producer(v).is_none() {
                return Err(part_err(i, "k path", "K or V is not computed in the graph"));
            }
            Ok(Site::Decomposed { k, v })
        }
        AttentionKind::Attention => {
            let node = g.node(a.node_id);
            let mask = node.input(3);
            if !mask.is_some_and(reads_mask) {
                return Err(part_err(
                    i,
                    "mask",
                    format!(
                        "the Attention node '{}' has no attn_mask computed from '{}' (with \
                         is_causal alone the causal alignment after a past is not handled)",
                        node.name(),
                        g.value_name(mask_input)
                    ),
                ));
            }
            Ok(Site::Fused(a.node_id))
        }
        other => Err(part_err(
            i,
            "attention",
            format!("{other:?} attention is not supported by add-kv-cache"),
        )),
    }
}

fn dims_info(dtype: DType, dims: &[Dim]) -> ValueInfo {
    ValueInfo {
        ty: Some(TypeInfo {
            kind: TypeKind::Tensor {
                elem_type: Some(dtype.code()),
                shape: Some(
                    dims.iter()
                        .map(|d| ShapeDim {
                            dim: d.clone(),
                            denotation: None,
                        })
                        .collect(),
                ),
            },
            denotation: None,
        }),
        ..Default::default()
    }
}

/// The float type the decoder computes in (its embedding table's), f32 when unknown.
pub(super) fn float_dtype(g: &Graph, map: &DecoderMap) -> DType {
    match g.initializer(map.embedding.table_id).map(|t| t.dtype()) {
        Some(d @ (DType::F16 | DType::BF16 | DType::F32)) => d,
        _ => DType::F32,
    }
}

/// Adds past inputs and present outputs to every layer of a decoder without a
/// cache. Refuses (changing nothing) a model that has one, and names the layer
/// and part when a pattern is not found.
pub fn add_kv_cache(g: &mut Graph, opts: &KvCacheOptions) -> Result<KvCacheReport> {
    let map = DecoderMap::build(g)?;
    let cached: Vec<&str> = map
        .io
        .past
        .iter()
        .map(|kv| kv.key.name.as_str())
        .chain(
            map.layers
                .iter()
                .filter_map(|l| l.attention.kv.past_key.as_deref()),
        )
        .collect();
    if let Some(first) = cached.first() {
        return Err(Error::Invalid(format!(
            "the model already has a KV cache (past input '{first}'): nothing to add"
        )));
    }
    let Some(mask_io) = &map.io.attention_mask else {
        return Err(part_err(
            0,
            "mask",
            "no attention_mask input: a cached step needs a mask over past + new tokens",
        ));
    };
    let mask_input = g
        .find(&mask_io.name)
        .ok_or_else(|| Error::Invalid(format!("no value '{}'", mask_io.name)))?;
    let sites = map
        .layers
        .iter()
        .map(|l| site(g, l, mask_input, map.embedding.ids_input))
        .collect::<Result<Vec<_>>>()?;
    let attention = map
        .layers
        .first()
        .map_or(AttentionKind::Decomposed, |l| l.attention.kind);
    let dtype = float_dtype(g, &map);
    let kv_dims = |len: &str| {
        vec![
            Dim::Param("batch_size".into()),
            Dim::Value(map.num_kv_heads as i64),
            Dim::Param(len.into()),
            Dim::Value(map.head_size as i64),
        ]
    };
    let past_info = dims_info(dtype, &kv_dims("past_sequence_length"));
    let present_info = dims_info(dtype, &kv_dims("total_sequence_length"));
    let name = |t: &str, i: usize| t.replace("{i}", &i.to_string());
    let mut ranges: Vec<NodeId> = sites.iter().filter_map(|(_, r)| *r).collect();
    ranges.sort();
    ranges.dedup();
    let mut first_past = None;
    for (i, (site, _)) in sites.into_iter().enumerate() {
        let names = [
            name(&opts.past_key, i),
            name(&opts.past_value, i),
            name(&opts.present_key, i),
            name(&opts.present_value, i),
        ];
        if let Some(taken) = names.iter().find(|n| g.find(n).is_some()) {
            return Err(Error::Invalid(format!(
                "the cache name '{taken}' is already used in the graph"
            )));
        }
        let past_k = g.add_input(&names[0], past_info.clone())?;
        let past_v = g.add_input(&names[1], past_info.clone())?;
        first_past.get_or_insert(past_k);
        let (present_k, present_v) = match site {
            Site::Decomposed { k, v } => {
                let pk = concat_past(g, past_k, k, &names[2])?;
                let pv = concat_past(g, past_v, v, &names[3])?;
                (pk, pv)
            }
            Site::Fused(node) => fused_with_past(g, node, past_k, past_v, &names[2..])?,
        };
        g.outputs.push(crate::ir::GraphIo {
            value: present_k,
            info: present_info.clone(),
        });
        g.outputs.push(crate::ir::GraphIo {
            value: present_v,
            info: present_info.clone(),
        });
    }
    if let Some(past) = first_past {
        for range in ranges {
            offset_positions(g, range, past)?;
        }
    }
    widen_mask_input(g, mask_input);
    g.toposort()?;
    Ok(KvCacheReport {
        layers: map.num_layers,
        attention,
    })
}

/// present = Concat(past, new) on the sequence axis; every reader of `new` reads
/// present instead.
fn concat_past(g: &mut Graph, past: ValueId, new: ValueId, present: &str) -> Result<ValueId> {
    let readers = consumers(g, new);
    let node_name = g.fresh_node_name(&format!("{present}/Concat"));
    let id = g.add_node(
        NodeSpec::new("", "Concat")
            .name(node_name)
            .input(past)
            .input(new)
            .output(present)
            .attr(Attribute::int("axis", 2)),
    )?;
    let out = g.node(id).output(0).expect("one output declared");
    for (n, slot) in readers {
        g.set_input(n, slot, Some(out));
    }
    Ok(out)
}

/// Rebuilds an opset-23 Attention node with past inputs (slots 4, 5) and present
/// outputs (slots 1, 2).
fn fused_with_past(
    g: &mut Graph,
    old: NodeId,
    past_k: ValueId,
    past_v: ValueId,
    present: &[String],
) -> Result<(ValueId, ValueId)> {
    let node = g.node(old).clone();
    let y = node
        .output(0)
        .ok_or_else(|| Error::invalid(format!("Attention node '{}' has no output", node.name())))?;
    let mut inputs: Vec<Option<ValueId>> = node.inputs().to_vec();
    inputs.resize(4, None);
    inputs.extend([Some(past_k), Some(past_v)]);
    let y_name = g.fresh_name(&format!("{}_cached", g.value_name(y)));
    let mut spec = NodeSpec::new(node.domain(), &node.op_type)
        .name(node.name().to_string())
        .inputs(inputs)
        .output(y_name)
        .output(present[0].clone())
        .output(present[1].clone());
    spec.attributes = node.attributes.clone();
    let id = g.add_node(spec)?;
    let new_y = g.node(id).output(0).expect("declared");
    g.replace_all_uses(y, new_y, true)?;
    g.remove_node(old)?;
    let pk = g.node(id).output(1).expect("declared");
    let pv = g.node(id).output(2).expect("declared");
    Ok((pk, pv))
}

/// attention_mask now spans past + new tokens.
fn widen_mask_input(g: &mut Graph, mask: ValueId) {
    for io in g.inputs.iter_mut().filter(|io| io.value == mask) {
        if let Some(TypeInfo {
            kind: TypeKind::Tensor {
                shape: Some(dims), ..
            },
            ..
        }) = io.info.ty.as_mut()
        {
            if let Some(d) = dims.get_mut(1) {
                d.dim = Dim::Param("total_sequence_length".into());
            }
        }
    }
}

/// Positions the graph counts itself start at the past length: Range(..) +
/// Shape(past_key)[2], cast like the Range.
fn offset_positions(g: &mut Graph, range: NodeId, past: ValueId) -> Result<()> {
    let out = g
        .node(range)
        .output(0)
        .ok_or_else(|| Error::invalid("the positions Range has no output"))?;
    let readers = consumers(g, out);
    let base = g.value_name(out).to_string();
    let two = g.add_initializer(crate::ir::Tensor::from_i64(
        g.fresh_name(&format!("{base}/past_axis")),
        vec![],
        &[2],
    ))?;
    let add = |g: &mut Graph, op: &str, inputs: Vec<ValueId>, attrs: Vec<Attribute>| {
        let name = g.fresh_name(&format!("{base}/past_{op}"));
        let mut spec = NodeSpec::new("", op)
            .name(g.fresh_node_name(&name))
            .inputs(inputs.into_iter().map(Some))
            .output(name);
        spec.attributes = attrs;
        g.add_node(spec)
            .map(|id| g.node(id).output(0).expect("one output declared"))
    };
    let shape = add(g, "Shape", vec![past], vec![])?;
    let len = add(
        g,
        "Gather",
        vec![shape, two],
        vec![Attribute::int("axis", 0)],
    )?;
    let len = add(g, "CastLike", vec![len, out], vec![])?;
    let shifted = add(g, "Add", vec![out, len], vec![])?;
    for (n, slot) in readers {
        g.set_input(n, slot, Some(shifted));
    }
    Ok(())
}
