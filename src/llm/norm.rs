//! Normalizations on the residual stream: fused (RMSNormalization,
//! SimplifiedLayerNormalization, LayerNormalization), fused with the residual add
//! (com.microsoft Skip(Simplified)LayerNormalization), or decomposed RMSNorm
//! (x · 1/sqrt(mean(x²) + eps) · weight, with Div, Reciprocal or Div(x, ·)).
use serde::Serialize;

use super::walk::{describe_consumers, label, sole_consumer};
use crate::ir::{Graph, NodeId, ValueId};
use crate::rewrite::matchers::{const_ints, const_scalar, constant, consumers};

#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum NormKind {
    /// ONNX RMSNormalization (opset 23).
    RmsNormalization,
    /// SimplifiedLayerNormalization (onnxruntime's RMSNorm, ONNX domain).
    SimplifiedLayerNormalization,
    /// com.microsoft SkipSimplifiedLayerNormalization: residual add + RMSNorm.
    SkipSimplifiedLayerNormalization,
    /// com.microsoft SkipLayerNormalization: residual add + LayerNorm.
    SkipLayerNormalization,
    /// ONNX LayerNormalization.
    LayerNormalization,
    /// RMSNorm spelled out: Pow/ReduceMean/Add/Sqrt/(Div|Reciprocal)/Mul/Mul.
    DecomposedRms,
}

/// One norm: which nodes, its weight, and the values in and out.
#[derive(Serialize, Clone, Debug)]
pub struct NormMap {
    pub kind: NormKind,
    /// The node producing the normalized output (the fused node, or the weight Mul).
    pub node: String,
    /// Every node of the norm, in graph order (one for fused norms).
    pub nodes: Vec<String>,
    /// The scale (gamma) constant, when there is one.
    pub weight: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bias: Option<String>,
    pub epsilon: Option<f32>,
    /// The normalized value.
    pub output: String,
    /// Skip norms: the residual sum (input + skip) they also output.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub residual_output: Option<String>,
    #[serde(skip)]
    pub node_id: NodeId,
    #[serde(skip)]
    pub output_id: ValueId,
    #[serde(skip)]
    pub residual_id: Option<ValueId>,
    /// The value a norm without a skip input normalizes (None for Skip norms).
    #[serde(skip)]
    pub input_id: Option<ValueId>,
}

fn fused_kind(g: &Graph, n: NodeId) -> Option<NormKind> {
    let node = g.node(n);
    match (node.domain(), node.op_type.as_str()) {
        ("", "RMSNormalization") => Some(NormKind::RmsNormalization),
        ("" | "com.microsoft", "SimplifiedLayerNormalization") => {
            Some(NormKind::SimplifiedLayerNormalization)
        }
        ("", "LayerNormalization") => Some(NormKind::LayerNormalization),
        ("com.microsoft", "SkipSimplifiedLayerNormalization") => {
            Some(NormKind::SkipSimplifiedLayerNormalization)
        }
        ("com.microsoft", "SkipLayerNormalization") => Some(NormKind::SkipLayerNormalization),
        _ => None,
    }
}

fn name_of(g: &Graph, v: Option<ValueId>) -> Option<String> {
    v.map(|v| g.value_name(v).to_string())
}

fn fused(g: &Graph, n: NodeId, kind: NormKind) -> Option<NormMap> {
    let node = g.node(n);
    let skip = matches!(
        kind,
        NormKind::SkipSimplifiedLayerNormalization | NormKind::SkipLayerNormalization
    );
    let (w, b) = if skip { (2, 3) } else { (1, 2) };
    let out = node.output(0)?;
    let residual = if skip { node.output(3) } else { None };
    Some(NormMap {
        kind,
        node: label(g, n),
        nodes: vec![label(g, n)],
        weight: name_of(g, node.input(w)),
        // Only the LayerNorm kinds take a bias (β); RMS norms have none.
        bias: matches!(
            kind,
            NormKind::LayerNormalization | NormKind::SkipLayerNormalization
        )
        .then(|| name_of(g, node.input(b)))
        .flatten(),
        epsilon: node.attr_float("epsilon"),
        output: g.value_name(out).to_string(),
        residual_output: name_of(g, residual),
        node_id: n,
        output_id: out,
        residual_id: residual,
        input_id: if skip { None } else { node.input(0) },
    })
}

/// The norm that normalizes `x` on its own (not a Skip norm), if any.
pub fn norm_of(g: &Graph, x: ValueId) -> Option<NormMap> {
    for (n, slot) in consumers(g, x) {
        match fused_kind(g, n) {
            Some(NormKind::SkipSimplifiedLayerNormalization | NormKind::SkipLayerNormalization) => {
            }
            Some(kind) if slot == 0 => return fused(g, n, kind),
            _ => {}
        }
    }
    decomposed_rms(g, x)
}

/// The Skip norm that adds `a` and `b` (in either order) and normalizes the sum.
pub fn skip_norm_of(g: &Graph, a: ValueId, b: ValueId) -> Option<NormMap> {
    consumers(g, b).into_iter().find_map(|(n, _)| {
        let kind = fused_kind(g, n)?;
        let node = g.node(n);
        let pair = (node.input(0)?, node.input(1)?);
        let skip = matches!(
            kind,
            NormKind::SkipSimplifiedLayerNormalization | NormKind::SkipLayerNormalization
        );
        (skip && (pair == (a, b) || pair == (b, a)))
            .then(|| fused(g, n, kind))
            .flatten()
    })
}

/// The other input of a two-input node, given one of them.
fn other(g: &Graph, n: NodeId, one: ValueId) -> Option<ValueId> {
    let node = g.node(n);
    match (node.input(0), node.input(1)) {
        (Some(a), Some(b)) if a == one => Some(b),
        (Some(a), Some(b)) if b == one => Some(a),
        _ => None,
    }
}

/// The one consumer of `v` that is `op`.
fn next(g: &Graph, v: ValueId, op: &str) -> Option<NodeId> {
    let (n, _) = sole_consumer(g, v)?;
    g.node(n).is("", op).then_some(n)
}

/// Decomposed RMSNorm of `x`: Pow(x, 2) (or Mul(x, x)) → ReduceMean(last axis) →
/// Add(eps) → Sqrt → Div(1, ·)/Reciprocal then Mul(x, ·), or Div(x, ·) → Mul(weight).
/// A Cast of x to float32 before it (fp16 exports) is allowed, and one back after.
fn decomposed_rms(g: &Graph, x: ValueId) -> Option<NormMap> {
    let mut xs = vec![x];
    for (n, _) in consumers(g, x) {
        if g.node(n).is("", "Cast") {
            xs.extend(g.node(n).output(0));
        }
    }
    for &xv in &xs {
        for (sq_node, _) in consumers(g, xv) {
            let node = g.node(sq_node);
            let squares = (node.is("", "Pow")
                && node
                    .input(1)
                    .and_then(|e| const_scalar(g, e))
                    .is_some_and(|e| e == 2.0))
                || (node.is("", "Mul") && node.input(0) == Some(xv) && node.input(1) == Some(xv));
            if !squares {
                continue;
            }
            if let Some(m) = rms_from_square(g, x, xv, sq_node) {
                return Some(m);
            }
        }
    }
    None
}

fn rms_from_square(g: &Graph, x: ValueId, xv: ValueId, sq_node: NodeId) -> Option<NormMap> {
    let mut nodes = Vec::new();
    if let Some(c) = g.producer(xv).filter(|_| xv != x) {
        nodes.push(c);
    }
    nodes.push(sq_node);
    let mean = next(g, g.node(sq_node).output(0)?, "ReduceMean")?;
    let m = g.node(mean);
    let axes = m
        .attr("axes")
        .map(|a| a.ints.clone())
        .or_else(|| m.input(1).and_then(|a| const_ints(g, a)))?;
    if axes != [-1] || m.attr_int("keepdims").unwrap_or(1) != 1 {
        return None;
    }
    nodes.push(mean);
    let add = next(g, m.output(0)?, "Add")?;
    let eps = other(g, add, m.output(0)?).and_then(|e| const_scalar(g, e))?;
    nodes.push(add);
    let sqrt = next(g, g.node(add).output(0)?, "Sqrt")?;
    nodes.push(sqrt);
    let s = g.node(sqrt).output(0)?;
    let (sn, _) = sole_consumer(g, s)?;
    let sn_node = g.node(sn);
    let normed = if sn_node.is("", "Div") && sn_node.input(1) == Some(s) {
        let num = sn_node.input(0)?;
        if num == xv {
            nodes.push(sn);
            sn_node.output(0)?
        } else if const_scalar(g, num) == Some(1.0) {
            nodes.push(sn);
            times_x(g, sn_node.output(0)?, xv, &mut nodes)?
        } else {
            return None;
        }
    } else if sn_node.is("", "Reciprocal") {
        nodes.push(sn);
        times_x(g, sn_node.output(0)?, xv, &mut nodes)?
    } else {
        return None;
    };
    let mut out = normed;
    if let Some((c, _)) = sole_consumer(g, out).filter(|(c, _)| g.node(*c).is("", "Cast")) {
        nodes.push(c);
        out = g.node(c).output(0)?;
    }
    let mut weight = None;
    if let Some((wm, _)) = sole_consumer(g, out).filter(|(c, _)| g.node(*c).is("", "Mul")) {
        let w = other(g, wm, out)?;
        if constant(g, w).is_some_and(|(_, t)| t.dims.len() == 1) {
            nodes.push(wm);
            weight = Some(w);
            out = g.node(wm).output(0)?;
        }
    }
    let last = *nodes.last()?;
    nodes.sort();
    Some(NormMap {
        kind: NormKind::DecomposedRms,
        node: label(g, last),
        nodes: nodes.iter().map(|&n| label(g, n)).collect(),
        weight: name_of(g, weight),
        bias: None,
        epsilon: Some(eps),
        output: g.value_name(out).to_string(),
        residual_output: None,
        node_id: last,
        output_id: out,
        residual_id: None,
        input_id: Some(x),
    })
}

/// The Mul(xv, r) that applies the reciprocal RMS `r` to x.
fn times_x(g: &Graph, r: ValueId, xv: ValueId, nodes: &mut Vec<NodeId>) -> Option<ValueId> {
    let (mul, _) = sole_consumer(g, r)?;
    if !g.node(mul).is("", "Mul") || other(g, mul, r)? != xv {
        return None;
    }
    nodes.push(mul);
    g.node(mul).output(0)
}

/// The norm that follows the residual `resid` once the sublayer output `delta` is
/// added: an Add then a norm of the sum, or a Skip norm doing both. Returns the norm
/// and the residual stream value after the add (None for a Skip norm without a sum
/// output, e.g. the final one).
pub fn norm_after(
    g: &Graph,
    resid: ValueId,
    delta: Option<ValueId>,
) -> Result<(NormMap, Option<ValueId>), String> {
    let Some(delta) = delta else {
        return norm_of(g, resid).map(|n| (n, Some(resid))).ok_or_else(|| {
            format!(
                "no norm reads '{}' ({})",
                g.value_name(resid),
                describe_consumers(g, resid)
            )
        });
    };
    if let Some(n) = skip_norm_of(g, resid, delta) {
        let r = n.residual_id;
        return Ok((n, r));
    }
    let add = consumers(g, delta)
        .into_iter()
        .find(|&(n, _)| g.node(n).is("", "Add") && other(g, n, delta) == Some(resid));
    let Some((add, _)) = add else {
        return Err(format!(
            "the sublayer output '{}' is not added to the residual '{}' ({})",
            g.value_name(delta),
            g.value_name(resid),
            describe_consumers(g, delta)
        ));
    };
    let sum = g
        .node(add)
        .output(0)
        .ok_or_else(|| format!("residual Add '{}' has no output", label(g, add)))?;
    norm_of(g, sum).map(|n| (n, Some(sum))).ok_or_else(|| {
        format!(
            "no norm reads the residual sum '{}' of Add '{}' ({})",
            g.value_name(sum),
            label(g, add),
            describe_consumers(g, sum)
        )
    })
}
