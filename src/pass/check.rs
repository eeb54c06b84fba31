//! The checks the pass manager runs on the model after every pass.
//!
//! The structural check is cheap (one walk over each graph) and always runs, in
//! release builds too: a broken rewrite is caught at the pass that made it, not
//! later as a runtime error far from the cause. The full check adds type and shape
//! inference by a runtime loading the model (ONNX Runtime when its library is
//! found, else tract); it costs a serialization of the model, so it is opt-in
//! (`--check-passes full`).
use std::collections::BTreeSet;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::ir::{DType, Graph, Model, ValueId};
use crate::runtime::Validation;

/// How much the pass manager checks after each pass.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum CheckLevel {
    /// Topological order, every input defined, use lists, unique value names,
    /// known element types of initializers.
    #[default]
    Structural,
    /// Structural, then the model loaded by a runtime (graph checks, type and
    /// shape inference).
    Full,
}

/// Checks `model` at `level`; returns a note when the full check could not run
/// (no runtime here reads the model).
pub fn check(model: &Model, level: CheckLevel) -> Result<Option<String>> {
    let mut first = None;
    model.for_each_graph(&mut |g| {
        if first.is_none() {
            first = structural(g).err();
        }
    });
    if let Some(e) = first {
        return Err(e);
    }
    if level == CheckLevel::Full {
        if let Validation::Skipped(why) = crate::runtime::validate(model)? {
            return Ok(Some(format!("full check skipped: {why}")));
        }
    }
    Ok(None)
}

/// One graph's structure: `Graph::verify` (order, definitions, use lists, outputs)
/// plus what a loader would refuse: two values under one name, and initializers of
/// an unknown element type.
fn structural(g: &Graph) -> Result<()> {
    g.verify()?;
    // An input with a default is also an initializer: collect ids first, so it
    // counts once.
    let defined: BTreeSet<ValueId> = g
        .inputs
        .iter()
        .map(|io| io.value)
        .chain(g.initializers().map(|(v, _)| v))
        .chain(
            g.nodes()
                .flat_map(|(_, n)| n.outputs().iter().flatten().copied()),
        )
        .collect();
    let mut names = BTreeSet::new();
    for v in defined {
        let name = g.value_name(v);
        if !names.insert(name) {
            return Err(Error::graph(
                g.name(),
                format!("two values are named '{name}'"),
            ));
        }
    }
    for (v, t) in g.initializers() {
        if t.dtype() == DType::Undefined {
            return Err(Error::graph(
                g.name(),
                format!("initializer '{}' has no element type", g.value_name(v)),
            ));
        }
    }
    Ok(())
}
