//! Numerical verification: run two models on the same inputs and measure how far
//! the candidate's outputs are from the reference's.
pub mod metrics;
pub mod report;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

pub use crate::runtime::inputs::{random_inputs, InputHints};
pub use metrics::OutputMetrics;
pub use report::{Thresholds, Violation};

use crate::error::{Error, Result};
use crate::runtime::{self, HostTensor, NamedTensors, RuntimeKind, RuntimeOptions, Session};

#[derive(Clone, Debug)]
pub struct VerifyOptions {
    /// Values for symbolic dims (e.g. batch_size=1, sequence_length=16).
    pub dims: BTreeMap<String, i64>,
    pub seed: u64,
    /// Random input sets to compare (ignored when `inputs` is given).
    pub samples: usize,
    /// Input values: a `.npy`/`.npz`/`.pb` file or a directory of them, or a
    /// directory of `test_data_set_*` directories (one sample each).
    pub inputs: Option<PathBuf>,
    /// The runtime; the library default is tract (embedded, same results on every
    /// machine), the CLI's is auto.
    pub runtime: RuntimeKind,
    /// ONNX Runtime intra-op threads (default: available cores).
    pub threads: Option<usize>,
    /// ONNX Runtime session config entries (see `RuntimeOptions::ort_config`).
    pub ort_config: Vec<(String, String)>,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            dims: BTreeMap::new(),
            seed: 0,
            samples: 1,
            inputs: None,
            runtime: RuntimeKind::Tract,
            threads: None,
            ort_config: Vec::new(),
        }
    }
}

/// What one comparison found.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// `tract` or `onnxruntime`.
    pub runtime: String,
    /// Why `auto` did not pick ONNX Runtime, when it did not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime_note: Option<String>,
    pub reference: PathBuf,
    pub candidate: PathBuf,
    pub samples: usize,
    /// Where the inputs came from: `random (seed N)` or the input path.
    pub inputs: String,
    /// Ops rewritten so tract could run them, per model ("candidate: MatMulBnb4 x2").
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub lowered: Vec<String>,
    pub outputs: Vec<OutputMetrics>,
    /// Candidate outputs the reference does not have (not compared).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub extra_outputs: Vec<String>,
}

/// Feeds `reference` and `candidate` the same inputs (given, or seeded random ones
/// shaped like the reference's declared inputs) and compares every reference
/// output with the candidate output of the same name.
///
/// A reference that does not run on the runtime gives `Error::Reference`: nothing
/// is then known about the candidate.
pub fn compare(reference: &Path, candidate: &Path, opts: &VerifyOptions) -> Result<Report> {
    let ref_model = crate::io::load(reference)?;
    let specs = ref_model.graph.input_specs();
    let hints = InputHints::from_model(&ref_model);
    let cand_model = crate::io::load(candidate)?;
    for s in cand_model.graph.input_specs() {
        if !specs.iter().any(|r| r.name == s.name) {
            return Err(Error::invalid(format!(
                "{}: input '{}' is not an input of the reference {}",
                candidate.display(),
                s.name,
                reference.display()
            )));
        }
    }

    let sel = runtime::select(&RuntimeOptions {
        kind: opts.runtime,
        threads: opts.threads,
        ort_config: opts.ort_config.clone(),
    })?;
    let rt = sel.runtime.name();
    let unrunnable =
        |e: Error| Error::Reference(format!("{e}; the reference model does not run on {rt}"));
    drop((ref_model, cand_model));
    let ref_prep = runtime::prepare(reference, rt, &[]).map_err(unrunnable)?;
    let cand_prep = runtime::prepare(candidate, rt, &[])?;
    let mut lowered = Vec::new();
    for (role, p) in [("reference", &ref_prep), ("candidate", &cand_prep)] {
        if let Some(r) = &p.lowered {
            lowered.push(format!("{role}: {r}"));
        }
    }
    let mut ref_s = sel.runtime.open(ref_prep.path()).map_err(unrunnable)?;
    let mut cand_s = sel.runtime.open(cand_prep.path())?;

    let (sets, source): (Vec<Option<PathBuf>>, String) = match &opts.inputs {
        Some(p) => (
            crate::tensorfile::sample_sets(p)?
                .into_iter()
                .map(Some)
                .collect(),
            p.display().to_string(),
        ),
        None => (
            vec![None; opts.samples.max(1)],
            format!("random (seed {})", opts.seed),
        ),
    };
    let mut acc: BTreeMap<String, metrics::Accumulator> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut extra: Vec<String> = Vec::new();
    for (i, set) in sets.iter().enumerate() {
        let feeds = match set {
            Some(dir) => crate::tensorfile::bind(crate::tensorfile::read_set(dir)?, &specs)?,
            None => random_inputs(&specs, &opts.dims, &hints, opts.seed.wrapping_add(i as u64))?,
        };
        // Bad inputs are the caller's error, not the reference's.
        runtime::check::order_feeds(&reference.display().to_string(), &specs, &feeds)?;
        let a = ref_s.run(&feeds).map_err(unrunnable)?;
        let b = run_for(&mut *cand_s, &feeds)?;
        for (name, x) in &a {
            let y = b
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t)
                .ok_or_else(|| {
                    Error::invalid(format!(
                        "{}: no output '{name}' (the reference {} has one)",
                        candidate.display(),
                        reference.display()
                    ))
                })?;
            if !acc.contains_key(name) {
                order.push(name.clone());
            }
            acc.entry(name.clone()).or_default().add(name, x, y)?;
        }
        for (name, _) in &b {
            if !a.iter().any(|(n, _)| n == name) && !extra.contains(name) {
                extra.push(name.clone());
            }
        }
    }
    Ok(Report {
        runtime: rt.to_string(),
        runtime_note: sel.fallback,
        reference: reference.to_path_buf(),
        candidate: candidate.to_path_buf(),
        samples: sets.len(),
        inputs: source,
        lowered,
        outputs: order.iter().map(|n| acc[n].finish(n)).collect(),
        extra_outputs: extra,
    })
}

/// Runs the candidate on the inputs it declares (a candidate may drop an input the
/// reference has, e.g. one a rewrite made constant).
fn run_for(s: &mut dyn Session, feeds: &[(String, HostTensor)]) -> Result<NamedTensors> {
    let wanted: Vec<(String, HostTensor)> = feeds
        .iter()
        .filter(|(n, _)| s.inputs().iter().any(|i| &i.name == n))
        .cloned()
        .collect();
    s.run(&wanted)
}
