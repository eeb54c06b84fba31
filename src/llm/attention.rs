//! Self-attention from the input norm's output to o_proj: the q/k/v projections
//! (separate or one packed qkv), the rotary embedding, the attention core (fused
//! opset-23 Attention, com.microsoft GroupQueryAttention/MultiHeadAttention, or
//! decomposed MatMul/Softmax/MatMul) with its head counts, and the KV cache.
use serde::Serialize;

use super::walk::{describe_consumers, forward, label, source_inputs, Hit};
use super::weights::{is_matmul_like, linear_consumers, weight_ref, WeightRef};
use crate::ir::{Graph, NodeId, ValueId};
use crate::rewrite::matchers::{const_ints, consumers};

/// How far (in nodes) a projection may be from the attention core: a decomposed k
/// path is Reshape, Transpose, five rotary ops, the cache Concat, repeat_kv's three
/// and the Kᵀ Transpose.
const PATH_DEPTH: usize = 16;

#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AttentionKind {
    /// MatMul(Q, Kᵀ) → scale/mask → Softmax → MatMul(·, V).
    Decomposed,
    /// ONNX Attention (opset 23).
    Attention,
    /// com.microsoft GroupQueryAttention.
    GroupQueryAttention,
    /// com.microsoft MultiHeadAttention.
    MultiHeadAttention,
}

#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RotaryKind {
    /// ONNX RotaryEmbedding (opset 23).
    RotaryEmbedding,
    /// com.microsoft RotaryEmbedding.
    MicrosoftRotaryEmbedding,
    /// Applied inside GroupQueryAttention (do_rotary=1).
    InsideAttention,
    /// x·cos + rotate_half(x)·sin spelled out with Slice/Neg/Concat/Mul/Add.
    Decomposed,
}

#[derive(Serialize, Clone, Debug)]
pub struct RotaryMap {
    pub kind: RotaryKind,
    /// The rotary nodes for q and k (fused nodes, or the final Add of each).
    pub nodes: Vec<String>,
    /// The cos and sin values the rotation reads (caches, gathered rows or Cos/Sin).
    pub cos: Option<String>,
    pub sin: Option<String>,
    pub interleaved: bool,
    #[serde(skip)]
    pub position_input: Option<ValueId>,
}

/// Per-layer KV cache: the past inputs read and the present outputs written.
#[derive(Serialize, Clone, Debug, Default)]
pub struct LayerKv {
    pub past_key: Option<String>,
    pub past_value: Option<String>,
    pub present_key: Option<String>,
    pub present_value: Option<String>,
}

#[derive(Serialize, Clone, Debug)]
pub struct AttentionMap {
    pub kind: AttentionKind,
    /// The fused attention node, or the Softmax of a decomposed one.
    pub node: String,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_size: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub q_proj: Option<WeightRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub k_proj: Option<WeightRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub v_proj: Option<WeightRef>,
    /// One projection computing q|k|v.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qkv_proj: Option<WeightRef>,
    /// The widths of q, k and v within the packed qkv output.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qkv_split: Option<[usize; 3]>,
    pub o_proj: WeightRef,
    pub rotary: Option<RotaryMap>,
    pub scale: Option<f32>,
    pub is_causal: Option<bool>,
    /// The mask value the core reads (bool mask, additive bias or seqlens_k).
    pub mask: Option<String>,
    pub kv: LayerKv,
    #[serde(skip)]
    pub node_id: NodeId,
    #[serde(skip)]
    pub mask_id: Option<ValueId>,
}

type Step = (&'static str, String);

fn core_kind(g: &Graph, n: NodeId) -> Option<AttentionKind> {
    let node = g.node(n);
    match (node.domain(), node.op_type.as_str()) {
        ("", "Attention") => Some(AttentionKind::Attention),
        ("com.microsoft", "GroupQueryAttention") => Some(AttentionKind::GroupQueryAttention),
        ("com.microsoft", "MultiHeadAttention") => Some(AttentionKind::MultiHeadAttention),
        _ => None,
    }
}

fn is_rotary(g: &Graph, n: NodeId) -> bool {
    let node = g.node(n);
    node.op_type == "RotaryEmbedding" && matches!(node.domain(), "" | "com.microsoft")
}

/// Forward hits from a projection that reach an attention core or any matrix product.
fn core_hits(g: &Graph, from: ValueId) -> Vec<Hit> {
    forward(
        g,
        from,
        PATH_DEPTH,
        &|g, n| core_kind(g, n).is_some() || is_matmul_like(g, n),
        &|g, n| g.node(n).is("", "Softmax"),
    )
}

fn name(g: &Graph, v: Option<ValueId>) -> Option<String> {
    v.map(|v| g.value_name(v).to_string())
}

/// Matches the attention sublayer reading `normed`.
pub fn match_attention(g: &Graph, normed: ValueId) -> Result<AttentionMap, Step> {
    let projs = linear_consumers(g, normed);
    if projs.is_empty() {
        return Err((
            "attention",
            format!(
                "no projection MatMul reads the input norm's output '{}' ({})",
                g.value_name(normed),
                describe_consumers(g, normed)
            ),
        ));
    }
    let hits: Vec<Vec<Hit>> = projs.iter().map(|p| core_hits(g, p.output_id)).collect();
    let fused = hits
        .iter()
        .flatten()
        .find(|h| core_kind(g, h.node).is_some())
        .map(|h| h.node);
    match fused {
        Some(core) => fused_attention(g, core, &projs, &hits),
        None => decomposed_attention(g, &projs, &hits),
    }
}

/// Which projection arrives at `slot` of `node`.
fn arriving(projs: &[WeightRef], hits: &[Vec<Hit>], node: NodeId, slot: usize) -> Option<usize> {
    (0..projs.len()).find(|&i| hits[i].contains(&Hit { node, slot }))
}

struct Roles {
    q: Option<WeightRef>,
    k: Option<WeightRef>,
    v: Option<WeightRef>,
    qkv: Option<WeightRef>,
}

fn roles(
    projs: &[WeightRef],
    q: Option<usize>,
    k: Option<usize>,
    v: Option<usize>,
    packed_q_only: bool,
    what: &str,
) -> Result<Roles, Step> {
    let Some(qi) = q else {
        return Err((
            "attention",
            format!("no q projection MatMul feeds the {what}"),
        ));
    };
    if packed_q_only || (k == Some(qi) && v == Some(qi)) {
        return Ok(Roles {
            q: None,
            k: None,
            v: None,
            qkv: Some(projs[qi].clone()),
        });
    }
    let ki = k.ok_or((
        "attention",
        format!("no k projection MatMul feeds the {what}"),
    ))?;
    let vi = v.ok_or((
        "attention",
        format!("no v projection MatMul feeds the {what}"),
    ))?;
    if qi == ki || qi == vi || ki == vi {
        return Err((
            "attention",
            format!(
                "projection '{}' feeds more than one of q, k, v of the {what} but not all three",
                projs[if qi == ki || qi == vi { qi } else { ki }].node
            ),
        ));
    }
    for (i, p) in projs.iter().enumerate() {
        if ![qi, ki, vi].contains(&i) {
            return Err((
                "attention",
                format!(
                    "MatMul '{}' reads the input norm's output but is not a q, k or v \
                     projection of the {what}",
                    p.node
                ),
            ));
        }
    }
    Ok(Roles {
        q: Some(projs[qi].clone()),
        k: Some(projs[ki].clone()),
        v: Some(projs[vi].clone()),
        qkv: None,
    })
}

fn fused_attention(
    g: &Graph,
    core: NodeId,
    projs: &[WeightRef],
    hits: &[Vec<Hit>],
) -> Result<AttentionMap, Step> {
    let kind = core_kind(g, core).ok_or(("attention", "not an attention node".to_string()))?;
    let node = g.node(core);
    let what = format!("{} node '{}'", node.op_type, label(g, core));
    let q = arriving(projs, hits, core, 0);
    let packed_q_only = q.is_some() && node.input(1).is_none() && node.input(2).is_none();
    let r = roles(
        projs,
        q,
        arriving(projs, hits, core, 1),
        arriving(projs, hits, core, 2),
        packed_q_only,
        &what,
    )?;
    let attr = |n: &str| node.attr_int(n).filter(|v| *v > 0).map(|v| v as usize);
    let (heads, kv_heads) = match kind {
        AttentionKind::Attention => (attr("q_num_heads"), attr("kv_num_heads")),
        AttentionKind::GroupQueryAttention => (attr("num_heads"), attr("kv_num_heads")),
        _ => (attr("num_heads"), attr("num_heads")),
    };
    let (Some(heads), Some(kv_heads)) = (heads, kv_heads) else {
        return Err((
            "attention",
            format!("{what} has no head count attributes (4-D inputs are not mapped)"),
        ));
    };
    let q_width = match (&r.q, &r.qkv) {
        (Some(q), _) => q.n,
        (None, Some(qkv)) => qkv.n * heads / (heads + 2 * kv_heads),
        _ => 0,
    };
    if q_width == 0 || q_width % heads != 0 {
        return Err((
            "attention",
            format!("q width {q_width} is not a multiple of {heads} heads for the {what}"),
        ));
    }
    let head_size = q_width / heads;
    for (role, p) in [("k", &r.k), ("v", &r.v)] {
        if let Some(p) = p.as_ref().filter(|p| p.n != kv_heads * head_size) {
            return Err((
                "attention",
                format!(
                    "{role} projection '{}' has N = {}, not {kv_heads} kv heads x {head_size} \
                     for the {what}",
                    p.node, p.n
                ),
            ));
        }
    }
    let qkv_split = match &r.qkv {
        Some(p) if p.n != (heads + 2 * kv_heads) * head_size => {
            return Err((
                "attention",
                format!(
                    "packed qkv projection '{}' has N = {}, not ({heads} + 2 x {kv_heads}) \
                     heads x {head_size}",
                    p.node, p.n
                ),
            ))
        }
        Some(_) => Some([
            heads * head_size,
            kv_heads * head_size,
            kv_heads * head_size,
        ]),
        None => None,
    };
    let (past, present, mask) = match kind {
        AttentionKind::Attention => ((4, 5), (1, 2), node.input(3)),
        AttentionKind::GroupQueryAttention => ((3, 4), (1, 2), node.input(5)),
        _ => ((6, 7), (1, 2), node.input(5).or(node.input(4))),
    };
    let kv = LayerKv {
        past_key: name(g, node.input(past.0)),
        past_value: name(g, node.input(past.1)),
        present_key: name(g, node.output(present.0)),
        present_value: name(g, node.output(present.1)),
    };
    let rotary = if kind == AttentionKind::GroupQueryAttention
        && node.attr_int("do_rotary").unwrap_or(0) != 0
    {
        Some(RotaryMap {
            kind: RotaryKind::InsideAttention,
            nodes: vec![label(g, core)],
            cos: name(g, node.input(7)),
            sin: name(g, node.input(8)),
            interleaved: node.attr_int("rotary_interleaved").unwrap_or(0) != 0,
            position_input: node.input(9),
        })
    } else {
        // A rotation spelled out before a fused core (e.g. after `rope --rotary
        // decomposed`) counts too.
        fused_rotary(g, &r).or_else(|| match (&r.q, &r.k) {
            (Some(q), Some(k)) => decomposed_rotary(g, q, k),
            _ => None,
        })
    };
    let out = node
        .output(0)
        .ok_or(("attention", format!("{what} has no output")))?;
    let o_proj = o_proj_after(g, out, &what)?;
    Ok(AttentionMap {
        kind,
        node: label(g, core),
        num_heads: heads,
        num_kv_heads: kv_heads,
        head_size,
        q_proj: r.q,
        k_proj: r.k,
        v_proj: r.v,
        qkv_proj: r.qkv,
        qkv_split,
        o_proj,
        rotary,
        scale: node.attr_float("scale"),
        is_causal: match kind {
            AttentionKind::Attention => Some(node.attr_int("is_causal").unwrap_or(0) != 0),
            AttentionKind::GroupQueryAttention => Some(true),
            _ => node.attr_int("unidirectional").map(|v| v != 0),
        },
        mask: name(g, mask),
        kv,
        node_id: core,
        mask_id: mask,
    })
}

/// RotaryEmbedding nodes between the q and k projections and the core.
fn fused_rotary(g: &Graph, r: &Roles) -> Option<RotaryMap> {
    let find = |p: &WeightRef| {
        forward(g, p.output_id, 4, &is_rotary, &|g, n| {
            core_kind(g, n).is_some() || is_matmul_like(g, n)
        })
        .first()
        .copied()
    };
    let starts: Vec<&WeightRef> = [&r.q, &r.k, &r.qkv].into_iter().flatten().collect();
    let rot: Vec<NodeId> = starts
        .iter()
        .filter_map(|p| find(p))
        .map(|h| h.node)
        .collect();
    let first = *rot.first()?;
    let n = g.node(first);
    let microsoft = n.domain() == "com.microsoft";
    // ONNX: (X, cos, sin, position_ids?); com.microsoft: (X, position_ids, cos, sin).
    let (cos, sin, pos) = if microsoft {
        (n.input(2), n.input(3), n.input(1))
    } else {
        (n.input(1), n.input(2), n.input(3))
    };
    let pos = pos.or_else(|| {
        // Caches gathered by position before the node: Gather(cos_cache, position_ids).
        cos.and_then(|c| g.producer(c))
            .map(|p| g.node(p))
            .filter(|p| p.is("", "Gather"))
            .and_then(|p| p.input(1))
    });
    Some(RotaryMap {
        kind: if microsoft {
            RotaryKind::MicrosoftRotaryEmbedding
        } else {
            RotaryKind::RotaryEmbedding
        },
        nodes: rot.iter().map(|&n| label(g, n)).collect(),
        cos: name(g, cos),
        sin: name(g, sin),
        interleaved: n.attr_int("interleaved").unwrap_or(0) != 0,
        position_input: pos,
    })
}

/// The o_proj: the first linear layer the attention output reaches (through
/// Transpose/Reshape in decomposed graphs).
fn o_proj_after(g: &Graph, out: ValueId, what: &str) -> Result<WeightRef, Step> {
    let hits = forward(g, out, 6, &|g, n| is_matmul_like(g, n), &|_, _| false);
    let hit = hits.first().ok_or((
        "o_proj",
        format!(
            "no MatMul reads the output '{}' of the {what} ({})",
            g.value_name(out),
            describe_consumers(g, out)
        ),
    ))?;
    weight_ref(g, hit.node).map_err(|why| {
        (
            "o_proj",
            format!(
                "'{}' after the {what} is not a constant-weight MatMul: {why}",
                label(g, hit.node)
            ),
        )
    })
}

fn decomposed_attention(
    g: &Graph,
    projs: &[WeightRef],
    hits: &[Vec<Hit>],
) -> Result<AttentionMap, Step> {
    // Q·Kᵀ is the activation MatMul that one projection reaches at A and another at B.
    let qk = hits.iter().flatten().find_map(|h| {
        (h.slot == 0
            && weight_ref(g, h.node).is_err()
            && arriving(projs, hits, h.node, 1).is_some())
        .then_some(h.node)
    });
    let Some(qk) = qk else {
        return Err((
            "attention",
            format!(
                "the projections {} reach no attention node and no Q·Kᵀ MatMul",
                projs
                    .iter()
                    .map(|p| format!("'{}'", p.node))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    };
    let qk_label = label(g, qk);
    let scores = g.node(qk).output(0).ok_or((
        "attention",
        format!("Q·Kᵀ MatMul '{qk_label}' has no output"),
    ))?;
    let softmax = forward(
        g,
        scores,
        6,
        &|g, n| g.node(n).is("", "Softmax"),
        &|g, n| is_matmul_like(g, n),
    );
    let softmax = softmax.first().map(|h| h.node).ok_or((
        "attention",
        format!("no Softmax follows the Q·Kᵀ MatMul '{qk_label}'"),
    ))?;
    let probs = g.node(softmax).output(0).ok_or((
        "attention",
        format!("Softmax '{}' has no output", label(g, softmax)),
    ))?;
    let pv = forward(g, probs, 3, &|g, n| is_matmul_like(g, n), &|_, _| false);
    let pv = pv.iter().find(|h| h.slot == 0).map(|h| h.node).ok_or((
        "attention",
        format!("no MatMul applies Softmax '{}' to V", label(g, softmax)),
    ))?;
    let what = format!("decomposed attention at Softmax '{}'", label(g, softmax));
    let r = roles(
        projs,
        arriving(projs, hits, qk, 0),
        arriving(projs, hits, qk, 1),
        arriving(projs, hits, pv, 1),
        false,
        &what,
    )?;
    let (Some(q), Some(k)) = (&r.q, &r.k) else {
        return Err((
            "attention",
            format!("a packed qkv projection feeds the {what}: not mapped in decomposed form"),
        ));
    };
    let (heads, head_size) = heads_from_reshape(g, q).ok_or((
        "attention",
        format!(
            "no Reshape to [.., .., heads, head_size] follows q projection '{}'",
            q.node
        ),
    ))?;
    let (kv_heads, kv_head_size) = heads_from_reshape(g, k).ok_or((
        "attention",
        format!(
            "no Reshape to [.., .., heads, head_size] follows k projection '{}'",
            k.node
        ),
    ))?;
    if kv_head_size != head_size {
        return Err((
            "attention",
            format!("q head size {head_size} differs from k head size {kv_head_size}"),
        ));
    }
    let out = g.node(pv).output(0).ok_or((
        "attention",
        format!("MatMul '{}' has no output", label(g, pv)),
    ))?;
    let o_proj = o_proj_after(g, out, &what)?;
    let (scale, mask) = scale_and_mask(g, scores, softmax);
    let kv = cache_concat(g, k, LayerKv::default(), true);
    let kv = match &r.v {
        Some(v) => cache_concat(g, v, kv, false),
        None => kv,
    };
    Ok(AttentionMap {
        kind: AttentionKind::Decomposed,
        node: label(g, softmax),
        num_heads: heads,
        num_kv_heads: kv_heads,
        head_size,
        rotary: decomposed_rotary(g, q, k).or_else(|| fused_rotary(g, &r)),
        q_proj: r.q.clone(),
        k_proj: r.k.clone(),
        v_proj: r.v,
        qkv_proj: None,
        qkv_split: None,
        o_proj,
        scale,
        is_causal: None,
        mask: name(g, mask),
        kv,
        node_id: softmax,
        mask_id: mask,
    })
}

/// Heads and head size from the first Reshape after a projection whose constant
/// shape ends in [heads, head_size] (0 copies, -1 infers: resolved from N).
fn heads_from_reshape(g: &Graph, p: &WeightRef) -> Option<(usize, usize)> {
    let hits = forward(
        g,
        p.output_id,
        3,
        &|g, n| g.node(n).is("", "Reshape"),
        &|g, n| is_matmul_like(g, n),
    );
    let shape = hits
        .iter()
        .find(|h| h.slot == 0)
        .and_then(|h| g.node(h.node).input(1))
        .and_then(|s| const_ints(g, s))?;
    let [.., h, d] = shape.as_slice() else {
        return None;
    };
    if shape.len() != 4 {
        return None;
    }
    let n = p.n as i64;
    let (h, d) = match (*h, *d) {
        (h, d) if h > 0 && d > 0 => (h, d),
        (-1, d) if d > 0 => (n / d, d),
        (h, -1) if h > 0 => (h, n / h),
        _ => return None,
    };
    (h * d == n).then_some((h as usize, d as usize))
}

/// The constant scale applied to the scores and the mask added to them, between
/// Q·Kᵀ and the Softmax.
fn scale_and_mask(g: &Graph, scores: ValueId, softmax: NodeId) -> (Option<f32>, Option<ValueId>) {
    let mut scale = None;
    let mut mask = None;
    let mut v = scores;
    while let [(n, _)] = consumers(g, v).as_slice() {
        if *n == softmax {
            break;
        }
        let node = g.node(*n);
        let other = node.inputs().iter().flatten().copied().find(|&i| i != v);
        if let Some(o) = other {
            match node.op_type.as_str() {
                "Mul" => scale = crate::rewrite::matchers::const_scalar(g, o).or(scale),
                "Div" => {
                    scale = crate::rewrite::matchers::const_scalar(g, o)
                        .map(|d| 1.0 / d)
                        .or(scale)
                }
                "Add" | "Where" => mask = Some(o),
                _ => {}
            }
        }
        match node.output(0) {
            Some(o) => v = o,
            None => break,
        }
    }
    (scale, mask)
}

/// The Concat(past, new) on a k or v path that makes the present cache entry.
fn cache_concat(g: &Graph, p: &WeightRef, mut kv: LayerKv, key: bool) -> LayerKv {
    let hits = forward(
        g,
        p.output_id,
        PATH_DEPTH,
        &|g, n| {
            let node = g.node(n);
            node.is("", "Concat") && node.inputs().iter().flatten().any(|i| g.is_graph_input(*i))
        },
        &|g, n| is_matmul_like(g, n) || g.node(n).is("", "Softmax"),
    );
    if let Some(h) = hits.first() {
        let node = g.node(h.node);
        let past = node
            .inputs()
            .iter()
            .flatten()
            .copied()
            .find(|i| g.is_graph_input(*i));
        let present = node.output(0).filter(|o| g.is_graph_output(*o));
        if key {
            kv.past_key = name(g, past);
            kv.present_key = name(g, present);
        } else {
            kv.past_value = name(g, past);
            kv.present_value = name(g, present);
        }
    }
    kv
}

/// Decomposed rotary: on the q path an Add(Mul(x, cos), Mul(rotate_half(x), sin))
/// where rotate_half has a Neg.
fn decomposed_rotary(g: &Graph, q: &WeightRef, k: &WeightRef) -> Option<RotaryMap> {
    let wall = |g: &Graph, n: NodeId| is_matmul_like(g, n) || g.node(n).is("", "Softmax");
    let combine = |p: &WeightRef| -> Option<(NodeId, ValueId, ValueId)> {
        let neg = forward(g, p.output_id, 8, &|g, n| g.node(n).is("", "Neg"), &wall);
        neg.first()?;
        let adds = forward(
            g,
            p.output_id,
            10,
            &|g, n| {
                let node = g.node(n);
                node.is("", "Add")
                    && node.inputs().len() == 2
                    && node
                        .inputs()
                        .iter()
                        .flatten()
                        .all(|i| g.producer(*i).is_some_and(|m| g.node(m).is("", "Mul")))
            },
            &wall,
        );
        let add = adds.first()?.node;
        let node = g.node(add);
        let (m1, m2) = (g.producer(node.input(0)?)?, g.producer(node.input(1)?)?);
        // cos multiplies x itself; sin multiplies the Concat of rotate_half.
        let factor = |m: NodeId| -> Option<(ValueId, bool)> {
            let mn = g.node(m);
            let (a, b) = (mn.input(0)?, mn.input(1)?);
            let rotated = |v: ValueId| g.producer(v).is_some_and(|c| g.node(c).is("", "Concat"));
            if rotated(a) {
                Some((b, true))
            } else if rotated(b) {
                Some((a, true))
            } else {
                let x_side = |v: ValueId| super::walk::reaches_back(g, v, p.output_id, 6);
                if x_side(a) {
                    Some((b, false))
                } else {
                    Some((a, false))
                }
            }
        };
        let (f1, r1) = factor(m1)?;
        let (f2, r2) = factor(m2)?;
        match (r1, r2) {
            (false, true) => Some((add, f1, f2)),
            (true, false) => Some((add, f2, f1)),
            _ => None,
        }
    };
    let (qa, cos, sin) = combine(q)?;
    let mut nodes = vec![label(g, qa)];
    if let Some((ka, _, _)) = combine(k) {
        nodes.push(label(g, ka));
    }
    let pos = source_inputs(g, cos, 12).into_iter().find(|v| {
        g.info(*v)
            .and_then(|i| i.ty.as_ref())
            .and_then(|t| t.tensor_parts())
            .and_then(|(d, _)| d)
            .is_some_and(|d| matches!(d, crate::ir::DType::I64 | crate::ir::DType::I32))
    });
    Some(RotaryMap {
        kind: RotaryKind::Decomposed,
        nodes,
        cos: name(g, Some(cos)),
        sin: name(g, Some(sin)),
        interleaved: false,
        position_input: pos,
    })
}
