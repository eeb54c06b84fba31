//! Raising the default-domain opset when an emitted op needs a newer one.
//!
//! Most schema bumps between opsets only add types, so moving a model to a newer
//! opset keeps its meaning. A few change inputs or semantics; a node using one of
//! those makes us refuse the bump rather than write a model that means something else.
use crate::error::{Error, Result};
use crate::ir::{Graph, Model};

/// (opset that changed it, ops whose inputs/attributes/semantics changed there).
const BREAKING: &[(i64, &[&str])] = &[
    (10, &["Slice", "TopK", "Upsample", "Dropout"]),
    (11, &["Pad", "Clip", "Resize", "Upsample"]),
    (
        13,
        &[
            "Split",
            "Squeeze",
            "Unsqueeze",
            "ReduceSum",
            "Softmax",
            "LogSoftmax",
            "Hardmax",
        ],
    ),
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
    ),
    (21, &["GroupNormalization"]),
];

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
/// meaning in between.
pub fn raise_default_opset(model: &mut Model, target: i64) -> Result<()> {
    let current = model.opset("").unwrap_or(1);
    if current >= target {
        return Ok(());
    }
    let mut blocker = None;
    model.for_each_graph_mut(&mut |g: &mut Graph| {
        if blocker.is_some() {
            return;
        }
        for (_, n) in g.nodes() {
            if !n.domain().is_empty() {
                continue;
            }
            for (v, ops) in BREAKING {
                if *v > current && *v <= target && ops.contains(&n.op_type.as_str()) {
                    blocker = Some((n.name().to_string(), n.op_type.clone(), *v));
                    return;
                }
            }
        }
    });
    if let Some((node, op, v)) = blocker {
        return Err(Error::Node {
            node,
            op: op.clone(),
            reason: format!(
                "this output format needs opset {target}, but the model is opset {current} and {op} \
                 changed its inputs or meaning in opset {v}; re-export the model at opset {target}, \
                 or use --format matmulnbits (no opset change)"
            ),
        });
    }
    model.require_opset("", target);
    Ok(())
}
