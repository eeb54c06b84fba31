//! The weight MatMuls a calibrated pass works on, and their weights as [K, N].
use super::nbits::read_f32;
use super::select::{NodeOverride, Selection};
use crate::error::{Error, Result};
use crate::ir::{Graph, NodeId, ValueId};
use crate::rewrite::matchers::{constant, following_bias_add, weight_matmul, WeightMatMul};
use crate::rewrite::PassOutcome;

/// A matched MatMul and the value its activations come from.
pub(crate) struct Target {
    pub m: WeightMatMul,
    pub add: Option<(NodeId, ValueId)>,
    pub x: ValueId,
}

/// Weight MatMuls of the main graph the selection allows.
pub(crate) fn targets(
    g: &Graph,
    sel: &Selection,
    fuse_bias: bool,
    outcome: &mut PassOutcome,
) -> Vec<Target> {
    let mut out = Vec::new();
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
        if sel.resolve_node(node) == NodeOverride::Skip {
            outcome.skip(node.name(), "excluded");
            continue;
        }
        let Some(x) = node.input(0) else {
            outcome.skip(node.name(), "no A input");
            continue;
        };
        if constant(g, x).is_some() {
            outcome.skip(node.name(), "A is a constant (nothing to calibrate)");
            continue;
        }
        let add = if fuse_bias {
            following_bias_add(g, &m)
        } else {
            None
        };
        out.push(Target { m, add, x });
    }
    out
}

/// The [K, N] values of a matched weight as f32.
pub(crate) fn weight_kn(g: &Graph, m: &WeightMatMul) -> Result<Vec<f32>> {
    let t = constant(g, m.weight)
        .ok_or_else(|| Error::tensor(g.value_name(m.weight), "weight is no longer a constant"))?
        .1;
    let w = read_f32(t)?;
    Ok(if m.transposed {
        crate::quant::transpose(&w, m.n, m.k)
    } else {
        w
    })
}
