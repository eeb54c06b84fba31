//! Per-channel input scaling folded into the graph, shared by SmoothQuant and AWQ:
//! a group of MatMuls reading one input `x` gets its weights' K rows multiplied by
//! `s`, and `x / s` is produced by dividing whatever made `x` — a norm's scale (and
//! bias), a Mul by a constant, or the output channels of a gated MatMul.
use super::nbits::read_f32;
use crate::error::{Error, Result};
use crate::ir::{Attribute, DType, Graph, Tensor, ValueId};
use crate::rewrite::matchers::{constant, weight_matmul, ConstSource, WeightMatMul};

/// Norm ops whose per-channel scale (input index) and optional bias absorb 1/s.
const NORMS: &[(&str, &str, usize, Option<usize>)] = &[
    ("", "LayerNormalization", 1, Some(2)),
    ("", "RMSNormalization", 1, None),
    ("", "SimplifiedLayerNormalization", 1, None),
    ("com.microsoft", "SimplifiedLayerNormalization", 1, None),
    ("com.microsoft", "SkipSimplifiedLayerNormalization", 2, None),
    ("com.microsoft", "SkipLayerNormalization", 2, Some(3)),
];

/// Where `x / s` goes.
#[derive(Clone, Debug)]
pub enum Fold {
    /// Per-channel constants divided by s (norm scale and bias, or a Mul's γ).
    Constants(Vec<ValueId>),
    /// Output channels of a private weight MatMul divided by s.
    Columns(WeightMatMul),
}

fn single_use(g: &Graph, v: ValueId) -> bool {
    g.value(v).uses().len() == 1 && !g.is_graph_output(v) && !g.is_graph_input(v)
}

/// The weight's constant is read by this MatMul only.
pub fn weight_private(g: &Graph, m: &WeightMatMul) -> bool {
    match m.transpose {
        Some(t) => single_use(g, m.weight) && g.node(t).output(0).is_some_and(|o| single_use(g, o)),
        None => single_use(g, m.weight),
    }
}

fn per_channel_const(g: &Graph, v: ValueId, k: usize) -> bool {
    constant(g, v).is_some_and(|(_, t)| {
        t.dtype() == DType::F32
            && t.dims.iter().product::<i64>() == k as i64
            && t.dims.last() == Some(&(k as i64))
    }) && single_use(g, v)
}

/// What can absorb `1/s` for input `x` of width `k`, if anything.
pub fn fold_site(g: &Graph, x: ValueId, k: usize) -> Option<Fold> {
    let p = g.producer(x)?;
    let node = g.node(p);
    if node.output(0) != Some(x) {
        return None;
    }
    for (domain, op, scale, bias) in NORMS {
        if node.is(domain, op) {
            if node.attr_int("axis").is_some_and(|a| a != -1) {
                return None;
            }
            let mut vals = vec![node.input(*scale)?];
            if let Some(b) = bias.and_then(|b| node.input(b)) {
                vals.push(b);
            }
            return vals
                .iter()
                .all(|&v| per_channel_const(g, v, k))
                .then_some(Fold::Constants(vals));
        }
    }
    if node.is("", "Mul") {
        let (a, b) = (node.input(0)?, node.input(1)?);
        for c in [b, a] {
            if per_channel_const(g, c, k) {
                return Some(Fold::Constants(vec![c]));
            }
        }
        for side in [a, b] {
            let Some(mp) = g.producer(side) else { continue };
            let Ok(m) = weight_matmul(g, mp) else {
                continue;
            };
            // Scaled weights are written back as float32.
            if m.n == k
                && m.dtype == DType::F32
                && single_use(g, side)
                && weight_private(g, &m)
                && m.bias.is_none()
            {
                return Some(Fold::Columns(m));
            }
        }
    }
    None
}

fn replace_constant(g: &mut Graph, v: ValueId, source: ConstSource, t: Tensor) {
    match source {
        ConstSource::Initializer(_) => g.set_initializer(v, t),
        ConstSource::ConstantNode(n) => g.node_mut(n).set_attr(Attribute::tensor("value", t)),
    }
}

/// Multiplies the K rows of a weight the node reads as [K, N] by `s` (`along_k`),
/// or divides its N output columns by `s`.
fn scale_weight(g: &mut Graph, m: &WeightMatMul, s: &[f32], along_k: bool) -> Result<()> {
    let t = constant(g, m.weight)
        .ok_or_else(|| Error::tensor(g.value_name(m.weight), "weight is no longer a constant"))?
        .1
        .clone();
    let mut w = read_f32(&t)?;
    let c = t.dims[1] as usize;
    // Stored [K, N] unless transposed ([N, K]).
    let along_rows = along_k != m.transposed;
    for (i, v) in w.iter_mut().enumerate() {
        let j = if along_rows { i / c } else { i % c };
        *v = if along_k { *v * s[j] } else { *v / s[j] };
    }
    // A rescaled weight is as large as the original: spill it, so rescaling every
    // layer of a large model does not hold a second copy of it in memory.
    let raw = crate::io::spill::bytes(crate::quant::convert::f32_to_le_bytes(&w));
    drop(w);
    replace_constant(
        g,
        m.weight,
        m.source,
        Tensor::from_raw(t.name(), DType::F32, t.dims.clone(), raw).stored_like(&t),
    );
    Ok(())
}

/// Multiplies the targets' K rows by `s`; with a `fold`, divides its site by `s` so
/// the float function is unchanged. Without one the caller must divide `x` itself.
pub fn apply_scales(
    g: &mut Graph,
    targets: &[WeightMatMul],
    fold: Option<&Fold>,
    s: &[f32],
) -> Result<()> {
    for m in targets {
        scale_weight(g, m, s, true)?;
    }
    match fold {
        Some(Fold::Constants(vals)) => {
            for &v in vals {
                let (src, t) = constant(g, v)
                    .ok_or_else(|| Error::tensor(g.value_name(v), "is no longer a constant"))?;
                let t = t.clone();
                let vals = read_f32(&t)?;
                let scaled: Vec<f32> = vals.iter().zip(s).map(|(x, s)| x / s).collect();
                replace_constant(
                    g,
                    v,
                    src,
                    Tensor::from_f32(t.name(), t.dims.clone(), &scaled).stored_like(&t),
                );
            }
        }
        Some(Fold::Columns(m)) => scale_weight(g, m, s, false)?,
        None => {}
    }
    Ok(())
}
