//! What the quantization passes share: node selection, the N-bit weight bridge to
//! `crate::quant`, stored types and constant tensors, opset raising, scale folding
//! and target discovery. Graph code only: numerics live in `crate::quant`.
pub(crate) mod decoder;
pub mod nbits;
pub mod opset;
pub mod qtypes;
pub mod scale_fold;
pub mod select;
pub mod targets;

use crate::error::Result;
use crate::ir::{Graph, Model};
use crate::rewrite::PassOutcome;

/// Runs a per-graph rewrite on every graph of the model and imports the
/// com.microsoft domain if it changed anything (the ops it emits live there).
pub(crate) fn run_contrib_rewrite(
    model: &mut Model,
    pass: &str,
    rewrite: &mut dyn FnMut(&mut Graph, &mut PassOutcome) -> Result<()>,
) -> Result<PassOutcome> {
    let mut outcome = PassOutcome::new(pass);
    model.try_for_each_graph_mut(&mut |g| rewrite(g, &mut outcome))?;
    if outcome.changed {
        model.require_opset("com.microsoft", 1);
    }
    Ok(outcome)
}
