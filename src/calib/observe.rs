//! Activation ranges from running the float model on calibration samples.
//!
//! The tensors to observe become extra outputs of a copy of the model, which is
//! saved to a temporary file and run by a [`Runtime`] one sample at a time.
//! Statistics stream: a running min/max per tensor, and for the histogram methods
//! a second pass over the samples filling one fixed-size histogram per tensor over
//! the range the first pass found (the same histogram onnxruntime builds when it
//! holds every sample in memory). Memory does not grow with the number of samples.
use std::collections::{BTreeMap, BTreeSet};

use super::data::Source;
use crate::error::{Error, Result};
use crate::ir::Model;
use crate::quant::int8::{entropy_range, percentile_range, Histogram};
use crate::runtime::{HostTensor, Runtime};
use crate::verify::inputs::InputHints;

/// How a tensor's range is chosen from what calibration saw.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Method {
    /// Smallest and largest value seen.
    MinMax,
    /// Threshold minimizing the KL divergence of a histogram of x over ±max|x|
    /// (`bins` bins) and its quantization to `quantized_bins` levels.
    Entropy { bins: usize, quantized_bins: usize },
    /// Range holding `percentile` % of the values; symmetric uses a histogram of |x|.
    Percentile {
        bins: usize,
        percentile: f64,
        symmetric: bool,
    },
    /// ±max|x| (onnxruntime's Distribution method as it applies to integer types).
    Distribution,
}

impl Method {
    fn needs_histogram(self) -> bool {
        matches!(self, Method::Entropy { .. } | Method::Percentile { .. })
    }
}

/// What calibration found.
#[derive(Clone, Debug, Default)]
pub struct Calibration {
    /// Range of every observed float tensor.
    pub ranges: BTreeMap<String, (f32, f32)>,
    /// Observed tensors that turned out not to be float (indices, shapes, masks).
    pub non_float: BTreeSet<String>,
    pub samples: usize,
    /// Warnings worth reporting (non-finite values seen, ...).
    pub notes: Vec<String>,
}

#[derive(Clone, Debug)]
struct Stat {
    min: f32,
    max: f32,
    abs_min: f32,
    count: u64,
    nonfinite: u64,
    float: bool,
    hist: Option<Histogram>,
}

impl Default for Stat {
    fn default() -> Self {
        Stat {
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
            abs_min: f32::INFINITY,
            count: 0,
            nonfinite: 0,
            float: true,
            hist: None,
        }
    }
}

impl Stat {
    fn observe(&mut self, values: &[f32]) {
        for &v in values {
            if v.is_finite() {
                self.min = self.min.min(v);
                self.max = self.max.max(v);
                self.abs_min = self.abs_min.min(v.abs());
                self.count += 1;
            } else {
                self.nonfinite += 1;
            }
        }
    }

    fn absmax(&self) -> f32 {
        self.min.abs().max(self.max.abs())
    }

    fn start_histogram(&mut self, method: Method) {
        if self.count == 0 {
            return;
        }
        let t = self.absmax();
        self.hist = Some(match method {
            Method::Percentile {
                bins,
                symmetric: true,
                ..
            } => Histogram::new(bins, self.abs_min, t),
            Method::Percentile { bins, .. } | Method::Entropy { bins, .. } => {
                Histogram::new(bins, -t, t)
            }
            _ => return,
        });
    }

    fn fill(&mut self, values: &[f32], method: Method) {
        let Some(h) = &mut self.hist else { return };
        if let Method::Percentile {
            symmetric: true, ..
        } = method
        {
            let abs: Vec<f32> = values.iter().map(|v| v.abs()).collect();
            h.add(&abs);
        } else {
            h.add(values);
        }
    }

    fn range(&self, name: &str, method: Method) -> Result<(f32, f32)> {
        if self.count == 0 {
            if self.nonfinite > 0 {
                return Err(Error::tensor(
                    name,
                    format!(
                        "all {} values seen in calibration are NaN or infinite",
                        self.nonfinite
                    ),
                ));
            }
            return Ok((0.0, 0.0));
        }
        let kernel = |e: crate::quant::QuantError| Error::tensor(name, e.to_string());
        Ok(match (method, &self.hist) {
            (Method::MinMax, _) => (self.min, self.max),
            (Method::Distribution, _) => (-self.absmax(), self.absmax()),
            (Method::Entropy { quantized_bins, .. }, Some(h)) => {
                entropy_range(h, quantized_bins, self.min, self.max).map_err(kernel)?
            }
            (
                Method::Percentile {
                    percentile,
                    symmetric,
                    ..
                },
                Some(h),
            ) => percentile_range(h, percentile, symmetric, self.min, self.max).map_err(kernel)?,
            _ => (self.min, self.max),
        })
    }
}

/// Values of a float tensor as f32; None for other types.
fn float_values(t: &HostTensor) -> Option<Vec<f32>> {
    if t.is_float() {
        t.to_f32_vec().ok()
    } else {
        None
    }
}

/// Receives each observed tensor: (pass, name, values, shape, is_float).
type Visit<'a> = dyn FnMut(usize, &str, &[f32], &[usize], bool) + 'a;

/// Runs a copy of `model` that outputs `tensors` over every sample of `source`,
/// `passes` times, handing each observed tensor to `visit(pass, name, values,
/// shape, is_float)`. Graph inputs are observed from the feeds.
fn run_observed(
    model: &Model,
    tensors: &BTreeSet<String>,
    source: &Source,
    runtime: &dyn Runtime,
    passes: usize,
    progress: &indicatif::ProgressBar,
    visit: &mut Visit,
) -> Result<()> {
    let g = &model.graph;
    let specs = g.input_specs();
    let hints = InputHints::from_model(model);
    let mut from_feeds = BTreeSet::new();
    let mut extra = Vec::new();
    for name in tensors {
        let v = g.find(name).ok_or_else(|| {
            Error::tensor(
                name,
                "is not a value of the main graph; it cannot be observed",
            )
        })?;
        if specs.iter().any(|s| &s.name == name) {
            from_feeds.insert(name.clone());
        } else if !g.is_graph_output(v) {
            extra.push(name.clone());
        }
    }
    if source.is_empty() {
        return Err(Error::invalid("the calibration set is empty"));
    }
    // Refuse mismatched data before the (slow) model load.
    source.sample(0, &specs, &hints)?;
    let mut session = crate::runtime::open_model(runtime, model, &extra)?;
    progress.set_length((source.len() * passes) as u64);
    for pass in 0..passes {
        for i in 0..source.len() {
            let feeds = source.sample(i, &specs, &hints)?;
            let outputs = session.run(&feeds).map_err(|e| {
                Error::invalid(format!(
                    "calibration sample #{} does not run on {}: {e}",
                    i + 1,
                    runtime.name()
                ))
            })?;
            let observed = feeds.iter().filter(|(n, _)| from_feeds.contains(n)).chain(
                outputs
                    .iter()
                    .filter(|(n, _)| tensors.contains(n) && !from_feeds.contains(n)),
            );
            for (name, t) in observed {
                match float_values(t) {
                    Some(v) => visit(pass, name, &v, &t.shape, true),
                    None => visit(pass, name, &[], &t.shape, false),
                }
            }
            progress.inc(1);
        }
    }
    Ok(())
}

/// Runs `model` on every sample of `source` and returns the range of each tensor
/// in `tensors` (main-graph value names) by `method`.
pub fn calibrate(
    model: &Model,
    tensors: &BTreeSet<String>,
    source: &Source,
    method: Method,
    runtime: &dyn Runtime,
    progress: &indicatif::ProgressBar,
) -> Result<Calibration> {
    let passes = if method.needs_histogram() { 2 } else { 1 };
    let mut stats: BTreeMap<String, Stat> = tensors
        .iter()
        .map(|t| (t.clone(), Stat::default()))
        .collect();
    let mut current = 0;
    run_observed(
        model,
        tensors,
        source,
        runtime,
        passes,
        progress,
        &mut |pass, name, values, _, float| {
            if pass != current {
                current = pass;
                for s in stats.values_mut() {
                    s.start_histogram(method);
                }
            }
            let Some(stat) = stats.get_mut(name) else {
                return;
            };
            if !float {
                stat.float = false;
            } else if pass == 0 {
                stat.observe(values);
            } else {
                stat.fill(values, method);
            }
        },
    )?;
    let mut out = Calibration {
        samples: source.len(),
        ..Default::default()
    };
    for (name, s) in &stats {
        if !s.float {
            out.non_float.insert(name.clone());
            continue;
        }
        if s.nonfinite > 0 {
            out.notes.push(format!(
                "tensor '{name}': {} NaN/infinite values in calibration were ignored",
                s.nonfinite
            ));
        }
        out.ranges.insert(name.clone(), s.range(name, method)?);
    }
    Ok(out)
}

/// Largest |x| per channel (last axis) of each float tensor in `tensors`, over
/// every sample: the statistic outlier detection and SmoothQuant work from.
pub fn channel_absmax(
    model: &Model,
    tensors: &BTreeSet<String>,
    source: &Source,
    runtime: &dyn Runtime,
) -> Result<BTreeMap<String, Vec<f32>>> {
    let mut out: BTreeMap<String, Vec<f32>> = BTreeMap::new();
    let hidden = indicatif::ProgressBar::hidden();
    run_observed(
        model,
        tensors,
        source,
        runtime,
        1,
        &hidden,
        &mut |_, name, values, shape, float| {
            let c = shape.last().copied().unwrap_or(1).max(1);
            if !float || values.is_empty() {
                return;
            }
            let acc = out.entry(name.to_string()).or_insert_with(|| vec![0.0; c]);
            if acc.len() != c {
                return;
            }
            for row in values.chunks(c) {
                for (a, &v) in acc.iter_mut().zip(row) {
                    if v.is_finite() {
                        *a = a.max(v.abs());
                    }
                }
            }
        },
    )?;
    Ok(out)
}
