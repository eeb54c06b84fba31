//! QDQ → QOperator: folds each `DequantizeLinear → op → QuantizeLinear` unit that
//! `int8-static-qdq` (or another tool) wrote into one integer operator, so
//! quantized tensors flow between integer ops (onnxruntime's QOperator format).
//!
//! Matches (main graph), when every float input comes from a DequantizeLinear with
//! constant scale/zero point and the single consumer of the output is a
//! QuantizeLinear:
//! - Conv → QLinearConv, MatMul → QLinearMatMul (standard ONNX);
//! - with `contrib-ops` (default): Gemm → QGemm, Add/Mul → QLinearAdd/QLinearMul,
//!   GlobalAveragePool/AveragePool/Sigmoid/LeakyRelu → QLinear… (com.microsoft);
//! - MaxPool, Reshape, Flatten, Transpose, Squeeze, Unsqueeze whose input and
//!   output share scale and zero point: the op runs on the integer tensor.
//!
//! Then a QuantizeLinear that re-quantizes a DequantizeLinear output with the same
//! parameters is dropped, and DequantizeLinear nodes nobody reads are removed.
//! Keeps: every graph input and output (a float graph input is quantized by its
//! QuantizeLinear, a graph output dequantized by its DequantizeLinear).
use std::collections::BTreeSet;

use serde::Deserialize;

use crate::error::Result;
use crate::ir::{Attribute, DType, Graph, Model, NodeId, NodeSpec, Tensor, ValueId};
use crate::rewrite::matchers::constant;
use crate::rewrite::{Pass, PassCx, PassOutcome, PASS_KEY};

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct QOperatorConfig {
    /// Also emit com.microsoft QLinear ops (QGemm, QLinearAdd, ...), which only
    /// ONNX Runtime runs; without them those units stay in QDQ form.
    pub contrib_ops: bool,
}

impl Default for QOperatorConfig {
    fn default() -> Self {
        QOperatorConfig { contrib_ops: true }
    }
}

pub const QOPERATOR_KEYS: &[&str] = &["contrib-ops"];

const NAME: &str = "int8-qoperator";

const PASS_THROUGH: &[&str] = &[
    "MaxPool",
    "Reshape",
    "Flatten",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
];

pub struct QOperator {
    pub config: QOperatorConfig,
}

/// A DequantizeLinear feeding a unit.
#[derive(Clone, Copy, Debug)]
struct Dq {
    node: NodeId,
    q: ValueId,
    scale: ValueId,
    zp: Option<ValueId>,
}

/// The QuantizeLinear a unit's output goes through.
#[derive(Clone, Copy, Debug)]
struct Q {
    node: NodeId,
    scale: ValueId,
    zp: Option<ValueId>,
}

fn dq_of(g: &Graph, v: ValueId) -> Option<Dq> {
    let n = g.producer(v)?;
    let node = g.node(n);
    if !node.is("", "DequantizeLinear") || node.attr_int("block_size").unwrap_or(0) != 0 {
        return None;
    }
    let scale = node.input(1)?;
    let zp = node.input(2);
    constant(g, scale)?;
    // int32: a bias.
    if !zero_point_in(g, zp, &[DType::U8, DType::I8, DType::I32]) {
        return None;
    }
    Some(Dq {
        node: n,
        q: node.input(0)?,
        scale,
        zp,
    })
}

fn q_after(g: &Graph, v: ValueId) -> Option<Q> {
    if g.is_graph_output(v) {
        return None;
    }
    let [crate::ir::Use::Input(n, 0)] = g.value(v).uses() else {
        return None;
    };
    let node = g.node(*n);
    if !node.is("", "QuantizeLinear") {
        return None;
    }
    let scale = node.input(1)?;
    let (_, st) = constant(g, scale)?;
    if st.dims.iter().product::<i64>() != 1 {
        return None;
    }
    let zp = node.input(2);
    if !zero_point_in(g, zp, &[DType::U8, DType::I8]) {
        return None;
    }
    Some(Q {
        node: *n,
        scale,
        zp,
    })
}

/// Whether a Q/DQ zero point is a constant of one of `types` (absent: uint8):
/// QLinear ops take 8-bit activations (int32 biases), so int16 and float8 units
/// stay in QDQ form.
fn zero_point_in(g: &Graph, zp: Option<ValueId>, types: &[DType]) -> bool {
    zp.is_none_or(|z| constant(g, z).is_some_and(|(_, t)| types.contains(&t.dtype())))
}

/// Whether two (scale, zero point) pairs hold the same values.
fn same_params(g: &Graph, a: (ValueId, Option<ValueId>), b: (ValueId, Option<ValueId>)) -> bool {
    let val = |v: ValueId| constant(g, v).and_then(|(_, t)| raw(t));
    let zval = |v: Option<ValueId>| v.map(val).unwrap_or(Some(Vec::new()));
    (a.0 == b.0 || val(a.0).is_some_and(|x| Some(x) == val(b.0)))
        && (a.1 == b.1 || zval(a.1).is_some_and(|x| Some(x) == zval(b.1)))
}

fn raw(t: &Tensor) -> Option<Vec<u8>> {
    t.raw_bytes().ok().map(|b| b.into_owned())
}

fn is_scalar(g: &Graph, v: ValueId) -> bool {
    constant(g, v).is_some_and(|(_, t)| t.dims.iter().product::<i64>() == 1)
}

impl Pass for QOperator {
    fn name(&self) -> &'static str {
        NAME
    }

    fn run(&self, model: &mut Model, _cx: &mut PassCx) -> Result<PassOutcome> {
        let mut outcome = PassOutcome::new(NAME);
        let g = &mut model.graph;
        let mut contrib = false;
        for id in g.node_ids() {
            if !g.contains_node(id) {
                continue;
            }
            let node = g.node(id);
            if !node.domain().is_empty() {
                continue;
            }
            let op = node.op_type.clone();
            let done = match op.as_str() {
                "Conv" => self.conv_or_matmul(g, id, "QLinearConv", "")?,
                "MatMul" => self.conv_or_matmul(g, id, "QLinearMatMul", "")?,
                "Gemm" if self.config.contrib_ops => self.gemm(g, id)?,
                "Add" | "Mul" if self.config.contrib_ops => {
                    self.binary(g, id, &format!("QLinear{op}"))?
                }
                "GlobalAveragePool" | "AveragePool" | "Sigmoid" | "LeakyRelu"
                    if self.config.contrib_ops =>
                {
                    self.unary(g, id, &format!("QLinear{op}"))?
                }
                _ if PASS_THROUGH.contains(&op.as_str()) => self.pass_through(g, id)?,
                _ => false,
            };
            if done {
                outcome.count(&format!("{op} converted"), 1);
                outcome.changed = true;
                contrib |= !matches!(op.as_str(), "Conv" | "MatMul")
                    && !PASS_THROUGH.contains(&op.as_str());
            }
        }
        let wide = g
            .nodes()
            .filter(|(_, n)| n.is("", "QuantizeLinear") || n.is("com.microsoft", "QuantizeLinear"))
            .filter(|(_, n)| !zero_point_in(g, n.input(2), &[DType::U8, DType::I8]))
            .count();
        if wide > 0 {
            outcome.notes.push(format!(
                "{wide} activations quantized to 16 bits or float8 stay in QDQ form (QLinear \
                 ops take 8-bit inputs)"
            ));
        }
        let requant = drop_requantize(g)?;
        outcome.count("Q(DQ(x)) pairs removed", requant as u64);
        outcome.changed |= requant > 0;
        remove_unused_dq(g);
        if contrib {
            model.require_opset("com.microsoft", 1);
        }
        Ok(outcome)
    }
}

impl QOperator {
    /// Conv(x, w[, b]) / MatMul(a, b) between DQs and a Q.
    fn conv_or_matmul(&self, g: &mut Graph, id: NodeId, op: &str, domain: &str) -> Result<bool> {
        let node = g.node(id).clone();
        let (Some(x), Some(w), Some(y)) = (node.input(0), node.input(1), node.output(0)) else {
            return Ok(false);
        };
        let (Some(dx), Some(dw), Some(q)) = (dq_of(g, x), dq_of(g, w), q_after(g, y)) else {
            return Ok(false);
        };
        if !is_scalar(g, dx.scale) {
            return Ok(false);
        }
        let mut inputs = vec![
            Some(dx.q),
            Some(dx.scale),
            dx.zp,
            Some(dw.q),
            Some(dw.scale),
            dw.zp,
            Some(q.scale),
            q.zp,
        ];
        let mut bias_dq = None;
        if op == "QLinearConv" {
            if let Some(b) = node.input(2) {
                let Some(db) = dq_of(g, b) else {
                    return Ok(false);
                };
                if constant(g, db.q).is_none_or(|(_, t)| t.dtype() != DType::I32) {
                    return Ok(false);
                }
                inputs.push(Some(db.q));
                bias_dq = Some(db.node);
            }
        }
        if inputs[2].is_none() || inputs[5].is_none() || inputs[7].is_none() {
            return Ok(false);
        }
        let mut spec = NodeSpec::new(domain, op)
            .name(g.fresh_node_name(&format!("{}_quant", node.name())))
            .inputs(inputs)
            .meta(PASS_KEY, NAME);
        if op == "QLinearConv" {
            spec.attributes = node.attributes.clone();
        }
        self.replace(
            g,
            id,
            q.node,
            spec,
            &[Some(dx.node), Some(dw.node), bias_dq],
        )
    }

    fn gemm(&self, g: &mut Graph, id: NodeId) -> Result<bool> {
        let node = g.node(id).clone();
        let (Some(a), Some(b), Some(y)) = (node.input(0), node.input(1), node.output(0)) else {
            return Ok(false);
        };
        let (Some(da), Some(db), Some(q)) = (dq_of(g, a), dq_of(g, b), q_after(g, y)) else {
            return Ok(false);
        };
        let mut c = None;
        let mut c_dq = None;
        if let Some(cv) = node.input(2) {
            let Some(dc) = dq_of(g, cv) else {
                return Ok(false);
            };
            c = Some(dc.q);
            c_dq = Some(dc.node);
        }
        let inputs = vec![
            Some(da.q),
            Some(da.scale),
            da.zp,
            Some(db.q),
            Some(db.scale),
            db.zp,
            c,
            Some(q.scale),
            q.zp,
        ];
        let mut spec = NodeSpec::new("com.microsoft", "QGemm")
            .name(g.fresh_node_name(&format!("{}_quant", node.name())))
            .inputs(inputs)
            .meta(PASS_KEY, NAME);
        spec.attributes = node
            .attributes
            .iter()
            .filter(|a| a.name != "beta")
            .cloned()
            .collect();
        self.replace(g, id, q.node, spec, &[Some(da.node), Some(db.node), c_dq])
    }

    fn binary(&self, g: &mut Graph, id: NodeId, op: &str) -> Result<bool> {
        let node = g.node(id).clone();
        let (Some(a), Some(b), Some(y)) = (node.input(0), node.input(1), node.output(0)) else {
            return Ok(false);
        };
        let (Some(da), Some(db), Some(q)) = (dq_of(g, a), dq_of(g, b), q_after(g, y)) else {
            return Ok(false);
        };
        if !is_scalar(g, da.scale) || !is_scalar(g, db.scale) {
            return Ok(false);
        }
        let spec = NodeSpec::new("com.microsoft", op)
            .name(g.fresh_node_name(&format!("{}_quant", node.name())))
            .inputs([
                Some(da.q),
                Some(da.scale),
                da.zp,
                Some(db.q),
                Some(db.scale),
                db.zp,
                Some(q.scale),
                q.zp,
            ])
            .meta(PASS_KEY, NAME);
        self.replace(g, id, q.node, spec, &[Some(da.node), Some(db.node)])
    }

    fn unary(&self, g: &mut Graph, id: NodeId, op: &str) -> Result<bool> {
        let node = g.node(id).clone();
        let (Some(x), Some(y)) = (node.input(0), node.output(0)) else {
            return Ok(false);
        };
        let (Some(dx), Some(q)) = (dq_of(g, x), q_after(g, y)) else {
            return Ok(false);
        };
        if !is_scalar(g, dx.scale) {
            return Ok(false);
        }
        let mut spec = NodeSpec::new("com.microsoft", op)
            .name(g.fresh_node_name(&format!("{}_quant", node.name())))
            .inputs([Some(dx.q), Some(dx.scale), dx.zp, Some(q.scale), q.zp])
            .meta(PASS_KEY, NAME);
        spec.attributes = node.attributes.clone();
        if op.ends_with("Pool") {
            spec.attributes.push(Attribute::int("channels_last", 0));
        }
        self.replace(g, id, q.node, spec, &[Some(dx.node)])
    }

    /// An op that moves values without changing them runs on the integer tensor
    /// when its input and output share parameters.
    fn pass_through(&self, g: &mut Graph, id: NodeId) -> Result<bool> {
        let node = g.node(id).clone();
        let (Some(x), Some(y)) = (node.input(0), node.output(0)) else {
            return Ok(false);
        };
        let (Some(dx), Some(q)) = (dq_of(g, x), q_after(g, y)) else {
            return Ok(false);
        };
        if !same_params(g, (dx.scale, dx.zp), (q.scale, q.zp)) {
            return Ok(false);
        }
        let mut inputs = node.inputs().to_vec();
        inputs[0] = Some(dx.q);
        let mut spec = NodeSpec::new("", &node.op_type)
            .name(node.name().to_string())
            .inputs(inputs)
            .meta(PASS_KEY, NAME);
        spec.attributes = node.attributes.clone();
        self.replace(g, id, q.node, spec, &[Some(dx.node)])
    }

    /// The integer op takes over the Q's output; the float op and the DQs that fed
    /// only it go.
    fn replace(
        &self,
        g: &mut Graph,
        float_node: NodeId,
        q_node: NodeId,
        spec: NodeSpec,
        dqs: &[Option<NodeId>],
    ) -> Result<bool> {
        let new = g.swap_node(q_node, spec)?;
        g.place_before(new, float_node);
        g.remove_node(float_node)?;
        let dqs: BTreeSet<NodeId> = dqs.iter().flatten().copied().collect();
        for dq in dqs {
            remove_if_unused(g, dq);
        }
        Ok(true)
    }
}

fn remove_if_unused(g: &mut Graph, n: NodeId) {
    if g.contains_node(n)
        && g.node(n)
            .outputs()
            .iter()
            .flatten()
            .all(|&o| g.value(o).uses().is_empty() && !g.is_graph_output(o))
    {
        let _ = g.remove_node(n);
    }
}

/// `Q(DQ(x, s, z), s, z)` is `x`: consumers of the Q read `x`.
fn drop_requantize(g: &mut Graph) -> Result<usize> {
    let mut n = 0;
    for id in g.node_ids() {
        if !g.contains_node(id) || !g.node(id).is("", "QuantizeLinear") {
            continue;
        }
        let node = g.node(id);
        let (Some(x), Some(y)) = (node.input(0), node.output(0)) else {
            continue;
        };
        let (qs, qz) = (node.input(1), node.input(2));
        let Some(dq) = dq_of(g, x) else { continue };
        let Some(qs) = qs else { continue };
        if g.is_graph_output(y) || !same_params(g, (dq.scale, dq.zp), (qs, qz)) {
            continue;
        }
        g.replace_all_uses(y, dq.q, false)?;
        g.remove_node(id)?;
        remove_if_unused(g, dq.node);
        n += 1;
    }
    Ok(n)
}

fn remove_unused_dq(g: &mut Graph) {
    for id in g.node_ids() {
        if g.contains_node(id) && g.node(id).is("", "DequantizeLinear") {
            remove_if_unused(g, id);
        }
    }
}
