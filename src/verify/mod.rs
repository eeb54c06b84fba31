//! Numerical verification: run two models on the same inputs and measure how far
//! the candidate's outputs are from the reference's.
pub mod feeds;
pub mod metrics;
pub mod report;
pub mod selfcheck;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

pub use crate::runtime::inputs::{random_inputs, InputHints};
pub use feeds::{Chosen, FeedPlan};
pub use metrics::OutputMetrics;
pub use report::{Thresholds, Violation};

use crate::error::{Error, Result};
use crate::ir::IoSpec;
use crate::runtime::inputs::Rng;
use crate::runtime::{
    self, HostTensor, NamedTensors, Runtime, RuntimeKind, RuntimeOptions, Session,
};

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
    /// Calibration samples (as `--calib` takes them): when given and `inputs` is
    /// not, the first `samples` of them are the inputs.
    pub calib: Option<PathBuf>,
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
            calib: None,
        }
    }
}

/// What one comparison found.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// `tract` or `onnxruntime`.
    pub runtime: String,
    /// Why the runtime asked for did not run the check, when it did not.
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
    /// How the inputs were made: each dim chosen and why, decoder steps.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    pub outputs: Vec<OutputMetrics>,
    /// Candidate outputs the reference does not have (not compared).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub extra_outputs: Vec<String>,
}

/// A failed comparison, and whether the runtime (not the inputs) failed, so the
/// other runtime may succeed.
struct Failed {
    error: Error,
    runtime: bool,
}

fn user(error: Error) -> Failed {
    Failed {
        error,
        runtime: false,
    }
}

fn fault(error: Error) -> Failed {
    Failed {
        error,
        runtime: true,
    }
}

/// Feeds `reference` and `candidate` the same inputs and compares every reference
/// output with the candidate output of the same name. The inputs are chosen by
/// [`feeds::choose`]: given files, calibration samples, a decoder's prefill and one
/// decode step, or seeded random inputs at dims that run.
///
/// A runtime that fails (an error or a panic inside it) is reported and the other
/// runtime is tried. A reference that runs on neither gives `Error::Reference`:
/// nothing is then known about the candidate.
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
    let chosen = feeds::choose(
        &ref_model,
        opts.inputs.as_ref(),
        opts.calib.as_ref(),
        &opts.dims,
        opts.samples,
    )?;
    drop((ref_model, cand_model));
    let job = Job {
        reference,
        candidate,
        specs: &specs,
        hints: &hints,
        chosen: &chosen,
        opts,
    };

    let sel = runtime::select(&RuntimeOptions {
        kind: opts.runtime,
        threads: opts.threads,
        ort_config: opts.ort_config.clone(),
    })?;
    let first = match job.run_on(&*sel.runtime) {
        Ok(mut r) => {
            r.runtime_note = sel.fallback.map(|f| format!("ONNX Runtime not used: {f}"));
            return Ok(r);
        }
        Err(f) if f.runtime => f.error,
        Err(f) => return Err(f.error),
    };
    let Some(other) = other_runtime(sel.runtime.name(), opts) else {
        return Err(first);
    };
    match job.run_on(&*other) {
        Ok(mut r) => {
            r.runtime_note = Some(format!(
                "{} failed, so {} ran the check: {first}",
                sel.runtime.name(),
                other.name()
            ));
            Ok(r)
        }
        Err(f) => {
            let both = format!("{first}; on {} too: {}", other.name(), f.error);
            Err(match (&first, &f.error) {
                (Error::Reference(_), _) | (_, Error::Reference(_)) => Error::Reference(both),
                _ => Error::invalid(both),
            })
        }
    }
}

/// The runtime to try when `failed` failed: tract for ONNX Runtime, ONNX Runtime
/// (when its library loads) for tract.
fn other_runtime(failed: &str, opts: &VerifyOptions) -> Option<Box<dyn Runtime>> {
    if failed == "tract" {
        runtime::ort::OrtRuntime::new(opts.threads)
            .ok()
            .map(|r| Box::new(r.with_config(&opts.ort_config)) as Box<dyn Runtime>)
    } else {
        Some(Box::new(runtime::tract::TractRuntime))
    }
}

/// One comparison, runnable on either runtime.
struct Job<'a> {
    reference: &'a Path,
    candidate: &'a Path,
    specs: &'a [IoSpec],
    hints: &'a InputHints,
    chosen: &'a Chosen,
    opts: &'a VerifyOptions,
}

/// Per-output metrics in first-seen order.
#[derive(Default)]
struct Collected {
    acc: BTreeMap<String, metrics::Accumulator>,
    order: Vec<String>,
    extra: Vec<String>,
    samples: usize,
}

impl Collected {
    /// Adds one run of both models; `suffix` tells steps apart (" [decode step]").
    fn add(
        &mut self,
        a: &NamedTensors,
        b: &NamedTensors,
        suffix: &str,
        candidate: &Path,
        reference: &Path,
    ) -> Result<()> {
        for (name, x) in a {
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
            let key = format!("{name}{suffix}");
            if !self.acc.contains_key(&key) {
                self.order.push(key.clone());
            }
            self.acc.entry(key.clone()).or_default().add(&key, x, y)?;
        }
        for (name, _) in b {
            if !a.iter().any(|(n, _)| n == name) && !self.extra.contains(name) {
                self.extra.push(name.clone());
            }
        }
        Ok(())
    }
}

impl Job<'_> {
    fn run_on(&self, rt: &dyn Runtime) -> std::result::Result<Report, Failed> {
        let name = rt.name();
        let unrunnable = |e: Error| {
            fault(Error::Reference(format!(
                "{e}; the reference model does not run on {name}"
            )))
        };
        let ref_prep = runtime::prepare(self.reference, name, &[]).map_err(unrunnable)?;
        let cand_prep = runtime::prepare(self.candidate, name, &[]).map_err(fault)?;
        let mut lowered = Vec::new();
        for (role, p) in [("reference", &ref_prep), ("candidate", &cand_prep)] {
            if let Some(r) = &p.lowered {
                lowered.push(format!("{role}: {r}"));
            }
        }
        let mut ref_s = rt.open(ref_prep.path()).map_err(unrunnable)?;
        let mut cand_s = rt.open(cand_prep.path()).map_err(fault)?;
        let mut notes = self.chosen.notes.clone();
        let mut got = Collected::default();
        let seed = self.opts.seed;
        let mut both = |feeds: &NamedTensors,
                        got: &mut Collected,
                        suffix: &str,
                        ref_s: &mut dyn Session|
         -> std::result::Result<NamedTensors, Failed> {
            // Bad inputs are the caller's error, not the reference's.
            let label = self.reference.display().to_string();
            runtime::check::order_feeds(&label, self.specs, feeds).map_err(user)?;
            let a = ref_s.run(feeds).map_err(unrunnable)?;
            let b = run_for(&mut *cand_s, feeds).map_err(fault)?;
            got.add(&a, &b, suffix, self.candidate, self.reference)
                .map_err(user)?;
            Ok(a)
        };
        let source = match &self.chosen.plan {
            FeedPlan::Files(sets) => {
                for dir in sets {
                    let feeds = crate::tensorfile::read_set(dir)
                        .and_then(|l| crate::tensorfile::bind(l, self.specs))
                        .map_err(user)?;
                    both(&feeds, &mut got, "", &mut *ref_s)?;
                    got.samples += 1;
                }
                self.opts
                    .inputs
                    .as_ref()
                    .map_or_else(String::new, |p| p.display().to_string())
            }
            FeedPlan::Calib { source, count } => {
                for i in 0..*count {
                    let feeds = source.sample(i, self.specs, self.hints).map_err(user)?;
                    both(&feeds, &mut got, "", &mut *ref_s)?;
                    got.samples += 1;
                }
                source.describe()
            }
            FeedPlan::Decoder { names, seq, vocab } => {
                for i in 0..self.opts.samples.max(1) {
                    let mut rng = Rng::new(seed.wrapping_add(i as u64));
                    let ids: Vec<i64> =
                        (0..*seq).map(|_| rng.below(*vocab as u64) as i64).collect();
                    let prefill =
                        feeds::decoder_step(self.specs, names, &ids, 0, None).map_err(user)?;
                    let a = both(&prefill, &mut got, "", &mut *ref_s)?;
                    let next = [rng.below(*vocab as u64) as i64];
                    let step = feeds::decoder_step(self.specs, names, &next, *seq, Some(&a))
                        .map_err(user)?;
                    both(&step, &mut got, " [decode step]", &mut *ref_s)?;
                    got.samples += 1;
                }
                format!("decoder prefill + one decode step (seed {seed})")
            }
            FeedPlan::Random { candidates } => {
                let mut first = None;
                let mut tried = Vec::new();
                for (dims, note) in candidates {
                    let feeds = random_inputs(self.specs, dims, self.hints, seed).map_err(user)?;
                    if candidates.len() == 1 {
                        first = Some((dims, note, feeds));
                        break;
                    }
                    match ref_s.run(&feeds) {
                        Ok(_) => {
                            first = Some((dims, note, feeds));
                            break;
                        }
                        Err(e) => tried.push(e),
                    }
                }
                let Some((dims, note, feeds)) = first else {
                    let last = tried.pop().map_or_else(String::new, |e| e.to_string());
                    return Err(if candidates.len() > 1 {
                        fault(Error::Reference(format!(
                            "no runnable input shape found (tried {} sizes for the dims no \
                             default fixes; give them with --dim NAME=N); the last try: {last}",
                            candidates.len()
                        )))
                    } else {
                        unrunnable(Error::invalid(last))
                    });
                };
                if !note.is_empty() {
                    notes.push(note.clone());
                }
                both(&feeds, &mut got, "", &mut *ref_s)?;
                got.samples += 1;
                for i in 1..self.opts.samples.max(1) {
                    let feeds =
                        random_inputs(self.specs, dims, self.hints, seed.wrapping_add(i as u64))
                            .map_err(user)?;
                    both(&feeds, &mut got, "", &mut *ref_s)?;
                    got.samples += 1;
                }
                format!("random (seed {seed})")
            }
        };
        Ok(Report {
            runtime: name.to_string(),
            runtime_note: None,
            reference: self.reference.to_path_buf(),
            candidate: self.candidate.to_path_buf(),
            samples: got.samples,
            inputs: source,
            lowered,
            notes,
            outputs: got.order.iter().map(|n| got.acc[n].finish(n)).collect(),
            extra_outputs: got.extra,
        })
    }
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
