//! Quantization passes. Graph code only: numerics live in `crate::quant`.
pub mod awq;
pub mod bnb4;
pub mod dynamic;
pub mod gather;
pub mod gptq;
pub mod kernels;
pub mod opset;
pub mod qoperator;
pub mod scale_fold;
pub mod select;
pub mod smooth_quant;
pub mod static_qdq;
pub mod weight_only;

use crate::error::Result;
use crate::ir::{Graph, Model};
use crate::pass::PassOutcome;

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
