//! Numerical verification: run two models on the same inputs and measure how far
//! the candidate's outputs are from the reference's.
pub mod inputs;
pub mod metrics;
pub mod tract_runner;

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

pub use inputs::{random_inputs, HostTensor};
pub use metrics::OutputMetrics;

use crate::error::Result;

#[derive(Clone, Debug, Default)]
pub struct VerifyOptions {
    /// Values for symbolic dims (e.g. batch_size=1, sequence_length=16).
    pub dims: BTreeMap<String, i64>,
    pub seed: u64,
    pub samples: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub runtime: String,
    pub samples: usize,
    pub outputs: Vec<OutputMetrics>,
}

/// Feeds `reference` and `candidate` the same seeded random inputs (shapes from the
/// reference's declared inputs) and compares every output by name.
pub fn compare(reference: &Path, candidate: &Path, opts: &VerifyOptions) -> Result<Report> {
    let model = crate::io::load(reference)?;
    let specs = model.graph.input_specs();
    let hints = inputs::InputHints::from_model(&model);
    drop(model);
    let unrunnable = |e: crate::Error| {
        crate::Error::Reference(format!(
            "{e}; the reference model does not run on this runtime"
        ))
    };
    let ref_run = tract_runner::TractModel::load(reference).map_err(unrunnable)?;
    let cand_run = tract_runner::TractModel::load(candidate)?;
    let samples = opts.samples.max(1);
    let mut acc: BTreeMap<String, metrics::Accumulator> = BTreeMap::new();
    for s in 0..samples {
        let feeds = random_inputs(&specs, &opts.dims, &hints, opts.seed.wrapping_add(s as u64))?;
        let a = ref_run.run(&feeds).map_err(unrunnable)?;
        let b = cand_run.run(&feeds)?;
        for ((name, x), (_, y)) in a.iter().zip(b.iter()) {
            acc.entry(name.clone()).or_default().add(x, y);
        }
    }
    Ok(Report {
        runtime: "tract".into(),
        samples,
        outputs: acc.into_iter().map(|(n, a)| a.finish(&n)).collect(),
    })
}
