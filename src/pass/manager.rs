//! Runs a list of configured passes over a model: each pass, then a topological
//! re-sort, then the check, then (if asked) a dump of the model as text.
use std::path::{Path, PathBuf};

use super::check::{check, CheckLevel};
use crate::error::{Error, Result};
use crate::ir::Model;
use crate::rewrite::{Pass, PassCx, PassOutcome};

/// How the manager runs and watches the passes.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    pub check: CheckLevel,
    /// Stop after this pass: its name (the first pass of that name) or its 1-based
    /// position in the recipe.
    pub stop_after: Option<String>,
    /// Write the model as text (the snapshot printer, which diffs well) before the
    /// first pass and after each one: `00-input.txt`, `01-<pass>.txt`, ...
    pub dump_dir: Option<PathBuf>,
}

impl RunOptions {
    /// How many passes run: all, or up to and including `stop_after`. An unknown
    /// name or position is refused before any pass runs.
    fn pass_count(&self, passes: &[Box<dyn Pass>]) -> Result<usize> {
        let Some(stop) = &self.stop_after else {
            return Ok(passes.len());
        };
        if let Ok(n) = stop.parse::<usize>() {
            if (1..=passes.len()).contains(&n) {
                return Ok(n);
            }
        }
        passes
            .iter()
            .position(|p| p.name() == stop)
            .map(|i| i + 1)
            .ok_or_else(|| {
                let names: Vec<&str> = passes.iter().map(|p| p.name()).collect();
                Error::invalid(format!(
                    "--stop-after {stop}: no such pass in this recipe (its passes: {}, or a \
                     position 1..={})",
                    names.join(", "),
                    passes.len()
                ))
            })
    }
}

/// Runs `passes` in order with the structural check after each.
pub fn run_pipeline(
    model: &mut Model,
    passes: &[Box<dyn Pass>],
    cx: &mut PassCx,
) -> Result<Vec<PassOutcome>> {
    run_pipeline_with(model, passes, cx, &RunOptions::default())
}

/// Runs `passes` (up to `opts.stop_after`) in order, checking the model after each
/// at `opts.check` and dumping it to `opts.dump_dir`.
pub fn run_pipeline_with(
    model: &mut Model,
    passes: &[Box<dyn Pass>],
    cx: &mut PassCx,
    opts: &RunOptions,
) -> Result<Vec<PassOutcome>> {
    let count = opts.pass_count(passes)?;
    crate::transforms::common::opset::refuse_unknown_opset(model)?;
    if let Some(dir) = &opts.dump_dir {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        dump(model, dir, "00-input")?;
    }
    let mut outcomes = Vec::new();
    for (i, p) in passes[..count].iter().enumerate() {
        let in_pass = |e: Error, what: &str| match e {
            Error::Pass { .. } => e,
            e => Error::Pass {
                pass: p.name().to_string(),
                reason: format!("{what}{e}"),
            },
        };
        p.requires(model)?;
        let mut outcome = p.run(model, cx).map_err(|e| in_pass(e, ""))?;
        // Passes append nodes; restore a topological order before anyone reads it.
        model
            .try_for_each_graph_mut(&mut |g| if g.needs_sort() { g.toposort() } else { Ok(()) })
            .map_err(|e| in_pass(e, ""))?;
        if let Some(note) =
            check(model, opts.check).map_err(|e| in_pass(e, "left an invalid model: "))?
        {
            outcome.notes.push(note);
        }
        if let Some(dir) = &opts.dump_dir {
            dump(model, dir, &format!("{:02}-{}", i + 1, p.name()))?;
        }
        outcomes.push(outcome);
    }
    if let Some(first) = outcomes.first_mut() {
        let unknown = model.unknown_domain_nodes();
        if let Some((node, op)) = unknown.first() {
            first.notes.push(format!(
                "{} node(s) of domains onnxq does not know kept unchanged (first: '{node}', \
                 {op})",
                unknown.len()
            ));
        }
    }
    Ok(outcomes)
}

fn dump(model: &Model, dir: &Path, stem: &str) -> Result<()> {
    let path = dir.join(format!("{stem}.txt"));
    std::fs::write(&path, crate::ir::print::model_to_string(model)).map_err(|e| Error::io(&path, e))
}
