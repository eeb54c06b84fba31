//! Raising the default-domain opset when an emitted op needs a newer one.
//!
//! Most schema bumps between opsets only add types, so moving a model to a newer
//! opset keeps its meaning. A few change inputs or semantics; a node using one of
//! those makes us refuse the bump rather than write a model that means something else.
use crate::error::{Error, Result};
use crate::ir::{Graph, Model, Node, Tensor};

/// Ops whose list attribute became an int64 input (opset, ops, attribute): these
/// are upgraded in place when the opset is raised past that version.
const ATTR_TO_INPUT: &[(i64, &[&str], &str)] = &[
    (13, &["Squeeze", "Unsqueeze", "ReduceSum"], "axes"),
    (13, &["Split"], "split"),
    (
        18,
        &[
            "ReduceMax",
            "ReduceMin",
            "ReduceMean",
            "ReduceProd",
            "ReduceL1",
            "ReduceL2",
            "ReduceLogSum",
            "ReduceLogSumExp",
            "ReduceSumSquare",
        ],
        "axes",
    ),
];

/// (opset that changed it, ops whose inputs/attributes/semantics changed there).
const BREAKING: &[(i64, &[&str])] = &[
    (10, &["Slice", "TopK", "Upsample", "Dropout"]),
    (11, &["Pad", "Clip", "Resize", "Upsample"]),
    (13, &["Softmax", "LogSoftmax", "Hardmax"]),
    (21, &["GroupNormalization"]),
];

/// The newest default-domain opset onnxq knows the op changes of (ONNX 1.22's).
pub const NEWEST_KNOWN_OPSET: i64 = 27;

/// Refuses a model stamped with a default-domain opset newer than onnxq knows: an op
/// there may mean something else than the rewrites assume.
pub fn refuse_unknown_opset(model: &Model) -> Result<()> {
    let v = model
        .opset("")
        .unwrap_or(1)
        .max(model.opset("ai.onnx").unwrap_or(1));
    if v > NEWEST_KNOWN_OPSET {
        return Err(Error::invalid(format!(
            "the model imports opset {v} of the default (ai.onnx) domain; onnxq knows opsets \
             up to {NEWEST_KNOWN_OPSET}, and ops may change meaning in newer ones: re-export \
             the model at opset {NEWEST_KNOWN_OPSET} or lower"
        )));
    }
    Ok(())
}

/// Opset and IR version blocked DequantizeLinear (and int4) need.
pub const BLOCKED_DQ_OPSET: i64 = 21;
pub const BLOCKED_DQ_IR: i64 = 10;

/// Ensures the model may use blocked DequantizeLinear: default opset ≥ 21, IR ≥ 10.
pub fn raise_for_blocked_dq(model: &mut Model) -> Result<()> {
    raise_default_opset(model, BLOCKED_DQ_OPSET)?;
    if model.ir_version.unwrap_or(0) < BLOCKED_DQ_IR {
        model.ir_version = Some(BLOCKED_DQ_IR);
    }
    Ok(())
}

/// Raises the default-domain opset to `target`, refusing when a node's op changed
/// meaning in between. Every graph is checked before anything changes, so a
/// refusal leaves the model exactly as it was.
pub fn raise_default_opset(model: &mut Model, target: i64) -> Result<()> {
    let current = model.opset("").unwrap_or(1);
    if current >= target {
        return Ok(());
    }
    let mut blocker = None;
    model.for_each_graph(&mut |g| {
        if blocker.is_none() {
            blocker = blocking_node(g, current, target).err();
        }
    });
    if let Some(e) = blocker {
        return Err(e);
    }
    model.try_for_each_graph_mut(&mut |g| upgrade_attrs_to_inputs(g, current, target))?;
    model.require_opset("", target);
    Ok(())
}

fn refusal(node: &str, op: &str, current: i64, target: i64, changed: i64) -> Error {
    Error::Node {
        node: node.to_string(),
        op: op.to_string(),
        reason: format!(
            "this output format needs opset {target}, but the model is opset {current} and {op} \
             changed its meaning in opset {changed}; re-export the model at opset {target}, \
             or use --format matmulnbits (no opset change)"
        ),
    }
}

/// The list attribute of `node` that becomes an input between `current` and
/// `target`, if it has one.
fn moved_attr(node: &Node, current: i64, target: i64) -> Option<&'static str> {
    if !node.domain().is_empty() {
        return None;
    }
    ATTR_TO_INPUT
        .iter()
        .find(|(v, ops, _)| *v > current && *v <= target && ops.contains(&node.op_type.as_str()))
        .map(|(_, _, attr)| *attr)
        .filter(|attr| node.attr(attr).is_some())
}

/// Every one of the `ATTR_TO_INPUT` ops takes the list as its second input.
const MOVED_SLOT: usize = 1;

/// The first node that keeps the raise from meaning the same model: an op whose
/// meaning changed, or one whose list attribute cannot move into an input slot
/// that is already taken.
fn blocking_node(g: &Graph, current: i64, target: i64) -> Result<()> {
    for (_, n) in g.nodes() {
        if !n.domain().is_empty() {
            continue;
        }
        for (v, ops) in BREAKING {
            if *v > current && *v <= target && ops.contains(&n.op_type.as_str()) {
                return Err(refusal(n.name(), &n.op_type, current, target, *v));
            }
        }
        if moved_attr(n, current, target).is_some() && n.inputs().len() > MOVED_SLOT {
            return Err(refusal(n.name(), &n.op_type, current, target, current + 1));
        }
    }
    Ok(())
}

/// Moves list attributes that later opsets take as inputs (`axes`, `split`) into
/// int64 initializers, so the node means the same under the raised opset. Runs
/// after `blocking_node` found nothing in the way.
fn upgrade_attrs_to_inputs(g: &mut Graph, current: i64, target: i64) -> Result<()> {
    for id in g.node_ids() {
        let node = g.node(id);
        let Some(attr) = moved_attr(node, current, target) else {
            continue; // absent: the input form's default means the same
        };
        let values = node.attr(attr).map(|a| a.ints.clone()).unwrap_or_default();
        let base = format!(
            "{}_{attr}",
            if node.name().is_empty() {
                &node.op_type
            } else {
                node.name()
            }
        );
        let name = g.fresh_name(&base);
        let v = g.add_initializer(Tensor::from_i64(name, vec![values.len() as i64], &values))?;
        g.set_input(id, MOVED_SLOT, Some(v));
        g.node_mut(id).attributes.retain(|a| a.name != attr);
    }
    Ok(())
}
