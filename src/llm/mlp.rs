//! The feed-forward block after the post-attention norm: gated (gate/up/down, as
//! separate projections or one packed gate_up split in two) or a two-matrix MLP
//! (up → activation → down, e.g. GELU).
use serde::Serialize;

use super::walk::{describe_consumers, forward, label, nodes_between, reaches_back, Hit};
use super::weights::{is_matmul_like, linear_consumers, weight_ref, WeightRef};
use crate::ir::{Graph, NodeId, ValueId};
use crate::rewrite::matchers::constant;

#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MlpKind {
    /// down(act(gate(x)) · up(x)) with separate gate and up projections.
    Gated,
    /// The same with one gate_up projection split into halves.
    GatedPacked,
    /// down(act(up(x))).
    TwoMatrix,
}

#[derive(Serialize, Clone, Debug)]
pub struct MlpMap {
    pub kind: MlpKind,
    /// The activation, named after its ops: `silu` (Sigmoid·x), `gelu`, `relu`, ...
    pub activation: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gate_proj: Option<WeightRef>,
    /// The up projection (a two-matrix MLP's first matrix).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub up_proj: Option<WeightRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gate_up_proj: Option<WeightRef>,
    pub down_proj: WeightRef,
    /// The intermediate size (down_proj's K).
    pub intermediate_size: usize,
}

type Step = (&'static str, String);

fn err(reason: String) -> Step {
    ("mlp", reason)
}

/// A name for the activation made of `ops`.
fn activation_name(g: &Graph, ops: &[NodeId]) -> String {
    let has = |op: &str| ops.iter().any(|&n| g.node(n).op_type == op);
    if has("Sigmoid") || has("Swish") || has("Silu") {
        "silu".into()
    } else if has("Gelu") || has("FastGelu") || has("BiasGelu") || has("Erf") {
        "gelu".into()
    } else if has("Tanh") {
        "gelu_tanh".into()
    } else if has("Relu") {
        "relu".into()
    } else if ops.is_empty() {
        "none".into()
    } else {
        let mut names: Vec<&str> = ops.iter().map(|&n| g.node(n).op_type.as_str()).collect();
        names.dedup();
        names.join("+")
    }
}

/// The first linear layer `v` reaches (the down projection).
fn down_after(g: &Graph, v: ValueId, from: &str) -> Result<WeightRef, Step> {
    let hits = forward(g, v, 8, &|g, n| is_matmul_like(g, n), &|_, _| false);
    let hit = hits.first().ok_or_else(|| {
        err(format!(
            "no down projection MatMul follows {from} ({})",
            describe_consumers(g, v)
        ))
    })?;
    weight_ref(g, hit.node).map_err(|why| {
        err(format!(
            "'{}' after {from} is not a constant-weight MatMul: {why}",
            label(g, hit.node)
        ))
    })
}

fn is_mul(g: &Graph, n: NodeId) -> bool {
    g.node(n).is("", "Mul")
}

/// Matches the MLP reading `normed`.
pub fn match_mlp(g: &Graph, normed: ValueId) -> Result<MlpMap, Step> {
    let projs = linear_consumers(g, normed);
    match projs.as_slice() {
        [a, b] => gated(g, a, b),
        [one] => single(g, one),
        [] => Err(err(format!(
            "no projection MatMul reads the post-attention norm's output '{}' ({})",
            g.value_name(normed),
            describe_consumers(g, normed)
        ))),
        more => Err(err(format!(
            "{} projection MatMuls read the post-attention norm's output '{}' \
             (expected gate and up, gate_up, or one up projection)",
            more.len(),
            g.value_name(normed)
        ))),
    }
}

/// Multiplications reachable from `v` before any matrix product, nearest first.
fn muls(g: &Graph, v: ValueId) -> Vec<Hit> {
    let mut hits = Vec::new();
    let mut frontier = vec![v];
    // Walk Mul by Mul: SiLU's own Mul(x, sigmoid(x)) comes before the gate join.
    for _ in 0..4 {
        let mut next = Vec::new();
        for f in frontier {
            for h in forward(g, f, 6, &is_mul, &|g, n| is_matmul_like(g, n)) {
                if !hits.contains(&h) {
                    hits.push(h);
                    next.extend(g.node(h.node).output(0));
                }
            }
        }
        frontier = next;
    }
    hits
}

fn gated(g: &Graph, a: &WeightRef, b: &WeightRef) -> Result<MlpMap, Step> {
    let (ha, hb) = (muls(g, a.output_id), muls(g, b.output_id));
    let join = ha
        .iter()
        .find(|h| hb.iter().any(|x| x.node == h.node))
        .map(|h| h.node)
        .ok_or_else(|| {
            err(format!(
                "MatMuls '{}' and '{}' read the post-attention norm but no Mul joins them",
                a.node, b.node
            ))
        })?;
    let jn = g.node(join);
    let direct = |p: &WeightRef| jn.inputs().contains(&Some(p.output_id));
    let (gate, up) = match (direct(a), direct(b)) {
        (false, true) => (a, b),
        (true, false) => (b, a),
        _ => {
            return Err(err(format!(
                "cannot tell gate from up at Mul '{}': both or neither of '{}' and '{}' \
                 go through an activation",
                label(g, join),
                a.node,
                b.node
            )))
        }
    };
    let act = nodes_between(g, gate.output_id, join, 6);
    let join_out = jn
        .output(0)
        .ok_or_else(|| err(format!("Mul '{}' has no output", label(g, join))))?;
    let down = down_after(g, join_out, &format!("the gate Mul '{}'", label(g, join)))?;
    Ok(MlpMap {
        kind: MlpKind::Gated,
        activation: activation_name(g, &act),
        intermediate_size: down.k,
        gate_proj: Some(gate.clone()),
        up_proj: Some(up.clone()),
        gate_up_proj: None,
        down_proj: down,
    })
}

fn single(g: &Graph, p: &WeightRef) -> Result<MlpMap, Step> {
    let split = forward(
        g,
        p.output_id,
        3,
        &|g, n| g.node(n).is("", "Split") || g.node(n).is("", "Slice"),
        &|g, n| is_matmul_like(g, n),
    );
    let down = down_after(g, p.output_id, &format!("'{}'", p.node))?;
    let down_node = g.node(down.node_id);
    let down_in = down_node
        .input(0)
        .ok_or_else(|| err(format!("'{}' has no input", down.node)))?;
    let between = match g.producer(down_in) {
        Some(prod) => {
            let mut ops = nodes_between(g, p.output_id, prod, 8);
            ops.push(prod);
            ops
        }
        None => Vec::new(),
    };
    // A lone projection's path to down_proj may read only its own output and
    // constants: another tensor joining in means a projection is missing here.
    for &n in &between {
        for i in g.node(n).inputs().iter().flatten() {
            if constant(g, *i).is_none() && !reaches_back(g, *i, p.output_id, 8) {
                return Err(err(format!(
                    "'{}' is the only projection reading the post-attention norm, but \
                     {} '{}' on its way to down_proj '{}' also reads '{}'",
                    p.node,
                    g.node(n).op_type,
                    label(g, n),
                    down.node,
                    g.value_name(*i)
                )));
            }
        }
    }
    if !split.is_empty() {
        if !down.k.saturating_mul(2).eq(&p.n) {
            return Err(err(format!(
                "gate_up projection '{}' has N = {} but down_proj '{}' has K = {}",
                p.node, p.n, down.node, down.k
            )));
        }
        return Ok(MlpMap {
            kind: MlpKind::GatedPacked,
            activation: activation_name(g, &between),
            intermediate_size: down.k,
            gate_proj: None,
            up_proj: None,
            gate_up_proj: Some(p.clone()),
            down_proj: down,
        });
    }
    Ok(MlpMap {
        kind: MlpKind::TwoMatrix,
        activation: activation_name(g, &between),
        intermediate_size: down.k,
        gate_proj: None,
        up_proj: Some(p.clone()),
        gate_up_proj: None,
        down_proj: down,
    })
}
