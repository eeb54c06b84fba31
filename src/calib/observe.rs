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
use crate::runtime::inputs::InputHints;
use crate::runtime::{HostTensor, NamedTensors, Runtime};

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
    /// Root mean square of every observed float tensor (finite values). Range
    /// against RMS says how much of a per-tensor grid outliers waste: rare outliers
    /// (a few tokens' massive activations) stretch the range but not the RMS.
    pub rms: BTreeMap<String, f32>,
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
    sum_sq: f64,
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
            sum_sq: 0.0,
            count: 0,
            nonfinite: 0,
            float: true,
            hist: None,
        }
    }
}

impl Stat {
    fn observe(&mut self, values: &[f32]) {
        // Squares summed in f32 per chunk (vectorizes; exact enough), chunks in f64.
        for chunk in values.chunks(4096) {
            let mut sq = 0f32;
            for &v in chunk {
                if v.is_finite() {
                    self.min = self.min.min(v);
                    self.max = self.max.max(v);
                    self.abs_min = self.abs_min.min(v.abs());
                    sq += v * v;
                    self.count += 1;
                } else {
                    self.nonfinite += 1;
                }
            }
            self.sum_sq += sq as f64;
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

/// Builds the inputs of sample `i`; called once per sample and pass.
pub type Feeds<'a> = dyn FnMut(usize) -> Result<NamedTensors> + 'a;

/// The feeds of every sample of `source` for `model`.
pub fn source_feeds<'a>(model: &Model, source: &'a Source) -> Box<Feeds<'a>> {
    let specs = model.graph.input_specs();
    let hints = InputHints::from_model(model);
    Box::new(move |i| source.sample(i, &specs, &hints))
}

/// Runs a copy of `model` that outputs `tensors` over `count` samples (`feeds(i)`
/// builds sample `i`), `passes` times, handing each observed tensor to
/// `visit(pass, name, values, shape, is_float)`. Graph inputs are observed from
/// the feeds. Nothing is kept between samples.
#[allow(clippy::too_many_arguments)]
fn run_observed(
    model: &Model,
    tensors: &BTreeSet<String>,
    count: usize,
    feeds: &mut Feeds,
    runtime: &dyn Runtime,
    passes: usize,
    progress: &indicatif::ProgressBar,
    visit: &mut Visit,
) -> Result<()> {
    let g = &model.graph;
    let specs = g.input_specs();
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
    if count == 0 {
        return Err(Error::invalid("the calibration set is empty"));
    }
    // Refuse mismatched data before the (slow) model load.
    let mut first = Some(feeds(0)?);
    let mut session = crate::runtime::open_model(runtime, model, &extra)?;
    progress.set_length((count * passes) as u64);
    for pass in 0..passes {
        for i in 0..count {
            let feeds = match first.take() {
                Some(f) => f,
                None => feeds(i)?,
            };
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
    let mut feeds = source_feeds(model, source);
    calibrate_with(
        model,
        tensors,
        source.len(),
        &mut feeds,
        method,
        runtime,
        progress,
    )
}

/// [`calibrate`] over `count` samples built by `feeds` (files, text windows, random
/// inputs). The histogram methods call `feeds` twice per sample.
pub fn calibrate_with(
    model: &Model,
    tensors: &BTreeSet<String>,
    count: usize,
    feeds: &mut Feeds,
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
        count,
        feeds,
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
        samples: count,
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
        if s.count > 0 {
            out.rms
                .insert(name.clone(), (s.sum_sq / s.count as f64).sqrt() as f32);
        }
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
    let mut feeds = source_feeds(model, source);
    let stats = channel_stats(
        model,
        tensors,
        source.len(),
        &mut feeds,
        runtime,
        0,
        0,
        &indicatif::ProgressBar::hidden(),
    )?;
    Ok(stats
        .into_iter()
        .map(|(name, s)| (name, s.absmax()))
        .collect())
}

/// Per-channel statistics of one activation (channels = last axis), and a
/// bounded uniform sample of its rows.
#[derive(Clone, Debug, Default)]
pub struct ChannelStats {
    pub channels: usize,
    /// Smallest and largest finite value per channel (+inf/-inf when none seen).
    pub min: Vec<f32>,
    pub max: Vec<f32>,
    /// Up to `cap` rows (row-major, `channels` each), drawn uniformly from every
    /// row seen (reservoir sampling, seeded); rows with a non-finite value are
    /// left out.
    pub rows: Vec<f32>,
    /// Rows seen.
    pub seen: u64,
    state: u64,
    cap: usize,
    sampled: u64,
}

impl ChannelStats {
    fn new(channels: usize, cap: usize, seed: u64) -> Self {
        ChannelStats {
            channels,
            min: vec![f32::INFINITY; channels],
            max: vec![f32::NEG_INFINITY; channels],
            rows: Vec::new(),
            seen: 0,
            state: seed,
            cap,
            sampled: 0,
        }
    }

    fn add(&mut self, values: &[f32]) {
        let c = self.channels;
        for row in values.chunks_exact(c) {
            self.seen += 1;
            let mut finite = true;
            for ((lo, hi), &v) in self.min.iter_mut().zip(&mut self.max).zip(row) {
                if v.is_finite() {
                    *lo = lo.min(v);
                    *hi = hi.max(v);
                } else {
                    finite = false;
                }
            }
            if !finite || self.cap == 0 {
                continue;
            }
            self.sampled += 1;
            let held = self.rows.len() / c;
            if held < self.cap {
                self.rows.extend_from_slice(row);
            } else {
                let j = (super::text::splitmix(&mut self.state) % self.sampled) as usize;
                if j < self.cap {
                    self.rows[j * c..(j + 1) * c].copy_from_slice(row);
                }
            }
        }
    }

    /// Largest |x| per channel (0 where nothing finite was seen).
    pub fn absmax(&self) -> Vec<f32> {
        self.min
            .iter()
            .zip(&self.max)
            .map(
                |(&lo, &hi)| {
                    if lo > hi {
                        0.0
                    } else {
                        lo.abs().max(hi.abs())
                    }
                },
            )
            .collect()
    }

    /// Rows held in `rows`.
    pub fn row_count(&self) -> usize {
        self.rows.len() / self.channels.max(1)
    }
}

/// FNV-1a of a name: a per-tensor seed that does not depend on observation order.
fn fnv1a(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Per-channel min/max of each float tensor in `tensors` over `count` samples
/// built by `feeds`, with up to `rows` rows of each kept (seeded uniform sample).
/// Memory is `tensors × rows × channels`, whatever the number of samples.
#[allow(clippy::too_many_arguments)]
pub fn channel_stats(
    model: &Model,
    tensors: &BTreeSet<String>,
    count: usize,
    feeds: &mut Feeds,
    runtime: &dyn Runtime,
    rows: usize,
    seed: u64,
    progress: &indicatif::ProgressBar,
) -> Result<BTreeMap<String, ChannelStats>> {
    let mut out: BTreeMap<String, ChannelStats> = BTreeMap::new();
    run_observed(
        model,
        tensors,
        count,
        feeds,
        runtime,
        1,
        progress,
        &mut |_, name, values, shape, float| {
            let c = shape.last().copied().unwrap_or(1).max(1);
            if !float || values.is_empty() {
                return;
            }
            let acc = out
                .entry(name.to_string())
                .or_insert_with(|| ChannelStats::new(c, rows, seed ^ fnv1a(name)));
            if acc.channels != c {
                return;
            }
            acc.add(values);
        },
    )?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_stats_keep_exact_extremes_and_a_bounded_seeded_row_sample() {
        let sample = |seed| {
            let mut st = ChannelStats::new(3, 10, seed);
            for i in 0..1000 {
                let v = i as f32;
                st.add(&[v, -v, if i == 500 { f32::NAN } else { 1.0 }]);
            }
            st
        };
        let st = sample(7);
        assert_eq!(st.seen, 1000);
        assert_eq!(st.row_count(), 10);
        assert_eq!(st.min, [0.0, -999.0, 1.0]);
        assert_eq!(st.max, [999.0, 0.0, 1.0]);
        assert_eq!(st.absmax(), [999.0, 999.0, 1.0]);
        // Rows come from the whole stream, not only its start; the NaN row is never kept.
        assert!(st.rows.chunks(3).any(|r| r[0] >= 100.0), "{:?}", st.rows);
        assert!(st.rows.iter().all(|v| v.is_finite()));
        assert_eq!(sample(7).rows, st.rows, "same seed, same rows");
    }
}
