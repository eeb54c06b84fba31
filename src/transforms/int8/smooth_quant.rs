//! SmoothQuant: moves activation outliers into the weights before static int8.
//!
//! For a group of MatMul/Gemm nodes reading the same activation X with constant
//! weights W ([K, N] as the node sees them), per input channel j:
//! `s_j = max|X_j|^α / max|W_j,:|^(1−α)`, then `X' = X / s` and `W' = diag(s) · W`.
//! The product is unchanged; X' has its outlier channels flattened, so per-tensor
//! activation scales stop wasting codes on them. max|X_j| comes from calibration.
//!
//! `alpha = "auto"` (the default) chooses α per group, as Intel Neural Compressor's
//! and ModelOpt's auto-α: for each candidate (no smoothing, then α on the grid
//! `alpha-min..=alpha-max` by `alpha-step`) X/s is quantized per tensor with the
//! range static MinMax calibration will give it (the exact per-channel min/max over
//! every calibration row, divided by s) and W·s as `int8-static-qdq` will quantize
//! it (`weight-type`, `per-channel`, `reduce-range`; set these as in that pass); the
//! candidate with the smallest squared error of the group's int8 outputs against
//! the float outputs, on a seeded uniform sample of `auto-rows` calibration rows,
//! wins. When no α beats leaving the group alone, it is left alone. Memory: groups
//! × auto-rows × K floats, whatever the number of samples.
//!
//! `X / s` must fold into what produces X, so a group is smoothed only when X is
//! - the output of a normalization with a per-channel scale (LayerNormalization,
//!   RMSNormalization, SimplifiedLayerNormalization, Skip(Simplified)LayerNormalization):
//!   scale (and bias) divided by s;
//! - the output of `Mul(·, γ)` with a constant `[K]` γ (a decomposed norm): γ / s;
//! - the output of `Mul(a, b)` where one side is a MatMul/Gemm with a constant
//!   weight read by nothing else (the up projection of a gated MLP): that weight's
//!   output channels divided by s.
//!
//! and every consumer of X is a MatMul/Gemm of the group, every constant changed
//! is read only there. Other groups are reported and left alone. Main graph only.
use std::collections::{BTreeMap, BTreeSet};

use rayon::prelude::*;
use serde::Deserialize;

use crate::calib::observe::{channel_stats, ChannelStats};
use crate::calib::CalibData;
use crate::error::{Error, Result};
use crate::ir::{Graph, Model, NodeId, Use, ValueId};
use crate::quant::int8::{self, QType, ScaleZp, WeightSpec};
use crate::rewrite::matchers::{weight_matmul, WeightMatMul};
use crate::rewrite::{Pass, PassCx, PassOutcome};
use crate::transforms::common::qtypes::{ActivationType, WeightType};
use crate::transforms::common::scale_fold::{apply_scales, fold_site, weight_private, Fold};
use crate::transforms::common::select::glob_match;
use crate::transforms::common::targets::weight_kn;

/// Migration strength: a number in [0, 1], or searched per group.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq)]
#[serde(try_from = "AlphaRepr")]
pub enum Alpha {
    Fixed(f64),
    Auto,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum AlphaRepr {
    Number(f64),
    Word(String),
}

impl TryFrom<AlphaRepr> for Alpha {
    type Error = String;

    fn try_from(r: AlphaRepr) -> std::result::Result<Alpha, String> {
        match r {
            AlphaRepr::Number(a) => Ok(Alpha::Fixed(a)),
            AlphaRepr::Word(w) if w == "auto" => Ok(Alpha::Auto),
            AlphaRepr::Word(w) => Err(format!(
                "alpha '{w}' is neither a number in [0, 1] nor \"auto\""
            )),
        }
    }
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct SmoothQuantConfig {
    /// Migration strength: 0 moves the weights' range into the activations, 1 all of
    /// the activations' range into the weights; "auto" searches it per group.
    pub alpha: Alpha,
    /// Grid of the auto search (no smoothing is always a candidate too).
    pub alpha_min: f64,
    pub alpha_max: f64,
    pub alpha_step: f64,
    /// Calibration rows per group the auto search measures errors on.
    pub auto_rows: usize,
    /// How int8-static-qdq will quantize (the auto search models it).
    pub activation_type: ActivationType,
    pub activation_symmetric: bool,
    pub weight_type: WeightType,
    pub per_channel: bool,
    pub reduce_range: bool,
    /// Calibration samples (see int8-static-qdq); random inputs without them.
    pub calib: Option<String>,
    /// Calibration text (needs `tokenizer`), as int8-static-qdq.
    pub calib_text: Option<String>,
    pub tokenizer: Option<String>,
    pub calib_samples: usize,
    pub calib_seqlen: usize,
    /// Seed of text windows, random inputs and row sampling (default: the pipeline's).
    pub seed: Option<u64>,
    /// Node name patterns (`*` wildcards) whose input is left alone.
    pub exclude: Vec<String>,
    /// Runtime the statistics are gathered on (tract, ort, auto).
    pub runtime: String,
}

impl Default for SmoothQuantConfig {
    fn default() -> Self {
        SmoothQuantConfig {
            alpha: Alpha::Auto,
            alpha_min: 0.0,
            alpha_max: 1.0,
            alpha_step: 0.05,
            auto_rows: 512,
            activation_type: ActivationType::Int8,
            activation_symmetric: false,
            weight_type: WeightType::Int8,
            per_channel: false,
            reduce_range: false,
            calib: None,
            calib_text: None,
            tokenizer: None,
            calib_samples: 8,
            calib_seqlen: 128,
            seed: None,
            exclude: Vec::new(),
            runtime: "tract".into(),
        }
    }
}

pub const SMOOTH_QUANT_KEYS: &[&str] = &[
    "alpha",
    "alpha-min",
    "alpha-max",
    "alpha-step",
    "auto-rows",
    "activation-type",
    "activation-symmetric",
    "weight-type",
    "per-channel",
    "reduce-range",
    "calib",
    "calib-text",
    "tokenizer",
    "calib-samples",
    "calib-seqlen",
    "seed",
    "exclude",
    "runtime",
];

const NAME: &str = "smooth-quant";

pub struct SmoothQuant {
    pub config: SmoothQuantConfig,
    data: CalibData,
}

impl SmoothQuant {
    pub fn new(config: SmoothQuantConfig) -> Result<Self> {
        let c = &config;
        if let Alpha::Fixed(a) = c.alpha {
            if !(0.0..=1.0).contains(&a) {
                return Err(Error::invalid(format!(
                    "smooth-quant alpha {a} is not within [0, 1] (or \"auto\")"
                )));
            }
        }
        let grid_ok = (0.0..=1.0).contains(&c.alpha_min)
            && (0.0..=1.0).contains(&c.alpha_max)
            && c.alpha_min <= c.alpha_max
            && c.alpha_step > 0.0
            && c.alpha_step.is_finite();
        if !grid_ok {
            return Err(Error::invalid(format!(
                "smooth-quant alpha grid {}..={} step {} must lie within [0, 1] with a \
                 positive step",
                c.alpha_min, c.alpha_max, c.alpha_step
            )));
        }
        if c.alpha == Alpha::Auto && c.auto_rows == 0 {
            return Err(Error::invalid(
                "smooth-quant auto-rows must be at least 1 for alpha = \"auto\"",
            ));
        }
        if c.calib.is_none() && c.calib_samples == 0 {
            return Err(Error::invalid(
                "smooth-quant calib-samples = 0 and no calibration files: nothing to \
                 calibrate on",
            ));
        }
        if c.calib_text.is_some() && c.calib_seqlen == 0 {
            return Err(Error::invalid(
                "smooth-quant calib-seqlen must be at least 1",
            ));
        }
        if c.activation_type == ActivationType::Int8 && c.weight_type == WeightType::Uint8 {
            return Err(Error::invalid(
                "int8 activations with uint8 weights have no kernels in ONNX Runtime",
            ));
        }
        if c.activation_type.is_float8() {
            return Err(Error::invalid(
                "smooth-quant searches α against an integer grid; float8 activations keep \
                 outliers on their relative grid without it",
            ));
        }
        c.runtime
            .parse::<crate::runtime::RuntimeKind>()
            .map_err(Error::invalid)?;
        let data = CalibData::open(
            c.calib.as_deref(),
            c.calib_text.as_deref(),
            c.tokenizer.as_deref(),
        )?;
        Ok(SmoothQuant { config, data })
    }

    /// The α candidates of the auto search, in increasing order.
    fn grid(&self) -> Vec<f64> {
        let c = &self.config;
        let steps = ((c.alpha_max - c.alpha_min) / c.alpha_step + 1e-9).floor() as usize;
        (0..=steps)
            .map(|i| {
                let a = c.alpha_min + i as f64 * c.alpha_step;
                (a * 1e9).round() / 1e9
            })
            .collect()
    }

    /// How int8-static-qdq will quantize activations and weights.
    fn int8_model(&self) -> Int8Model {
        let c = &self.config;
        let aq = c.activation_type.qtype();
        let (qmin, qmax) = aq.range(false, c.activation_symmetric);
        Int8Model {
            act: aq,
            act_range: (qmin, qmax),
            act_symmetric: c.activation_symmetric,
            weight: WeightSpec {
                qtype: c.weight_type.qtype(),
                symmetric: c.per_channel || c.weight_type == WeightType::Int8,
                reduce_range: c.reduce_range,
                axis: c.per_channel.then_some(1),
            },
        }
    }
}

#[derive(Clone, Debug)]
struct Group {
    x: ValueId,
    targets: Vec<WeightMatMul>,
    fold: Fold,
}

impl SmoothQuant {
    fn groups(&self, g: &Graph, outcome: &mut PassOutcome) -> Vec<Group> {
        let mut by_x: BTreeMap<ValueId, Vec<WeightMatMul>> = BTreeMap::new();
        for (id, node) in g.nodes() {
            if !(node.is("", "MatMul") || node.is("", "Gemm")) {
                continue;
            }
            if self
                .config
                .exclude
                .iter()
                .any(|p| glob_match(p, node.name()))
            {
                outcome.skip(node.name(), "excluded");
                continue;
            }
            let Ok(m) = weight_matmul(g, id) else {
                continue;
            };
            if m.dtype != crate::ir::DType::F32 {
                continue;
            }
            if let Some(x) = node.input(0) {
                by_x.entry(x).or_default().push(m);
            }
        }
        let mut out = Vec::new();
        for (x, targets) in by_x {
            let name = g.node(targets[0].node).name().to_string();
            let consumers: BTreeSet<NodeId> = g
                .value(x)
                .uses()
                .iter()
                .map(|u| match u {
                    Use::Input(n, _) | Use::Capture(n) => *n,
                })
                .collect();
            let target_nodes: BTreeSet<NodeId> = targets.iter().map(|m| m.node).collect();
            if consumers != target_nodes || g.is_graph_output(x) {
                outcome.skip(&name, "its input is also read by other nodes");
                continue;
            }
            let k = targets[0].k;
            if targets.iter().any(|m| m.k != k || !weight_private(g, m)) {
                outcome.skip(&name, "a weight is shared with other nodes");
                continue;
            }
            match fold_site(g, x, k) {
                Some(fold) => out.push(Group { x, targets, fold }),
                None => outcome.skip(
                    &name,
                    "its input does not come from a norm, a Mul by a constant or a gated MatMul",
                ),
            }
        }
        out
    }
}

impl Pass for SmoothQuant {
    fn name(&self) -> &'static str {
        NAME
    }

    fn run(&self, model: &mut Model, cx: &mut PassCx) -> Result<PassOutcome> {
        let mut outcome = PassOutcome::new(NAME);
        let groups = self.groups(&model.graph, &mut outcome);
        if groups.is_empty() {
            return Ok(outcome);
        }
        let g = &model.graph;
        let names: BTreeSet<String> = groups
            .iter()
            .map(|gr| g.value_name(gr.x).to_string())
            .collect();
        let seed = self.config.seed.unwrap_or(cx.seed);
        let (count, mut feeds) = self.data.feeds_for(
            model,
            self.config.calib_samples,
            self.config.calib_seqlen,
            seed,
            "activation statistics",
            &mut outcome,
        )?;
        let rt = crate::runtime::named(&self.config.runtime)?;
        let rows = match self.config.alpha {
            Alpha::Auto => self.config.auto_rows,
            Alpha::Fixed(_) => 0,
        };
        let progress =
            crate::transforms::common::nbits::progress_bar(cx.progress, 0, "calibrating");
        let stats = channel_stats(
            model,
            &names,
            count,
            &mut feeds,
            rt.as_ref(),
            rows,
            seed,
            &progress,
        )?;
        progress.finish_and_clear();
        drop(feeds);
        let grid = self.grid();
        let int8 = self.int8_model();
        for gr in groups {
            let g = &mut model.graph;
            let xname = g.value_name(gr.x).to_string();
            let Some(st) = stats.get(&xname) else {
                continue;
            };
            let k = gr.targets[0].k;
            if st.channels != k {
                outcome.skip(
                    &xname,
                    format!("activation has {} channels, weights {k}", st.channels),
                );
                continue;
            }
            let a = st.absmax();
            let weights: Vec<Vec<f32>> = gr
                .targets
                .iter()
                .map(|m| weight_kn(g, m))
                .collect::<Result<_>>()?;
            let mut wmax = vec![0f32; k];
            for (m, w) in gr.targets.iter().zip(&weights) {
                for (j, row) in w.chunks(m.n).enumerate() {
                    wmax[j] = row.iter().fold(wmax[j], |acc, v| acc.max(v.abs()));
                }
            }
            let ratio = a.iter().copied().fold(0f32, f32::max)
                / (a.iter().sum::<f32>() / k as f32).max(f32::MIN_POSITIVE);
            let targets = gr.targets.len();
            let (alpha, note) = match self.config.alpha {
                Alpha::Fixed(alpha) => (alpha, String::new()),
                Alpha::Auto => {
                    let ns: Vec<usize> = gr.targets.iter().map(|m| m.n).collect();
                    let search = search_alpha(st, &weights, &ns, &a, &wmax, &grid, &int8)
                        .map_err(|e| Error::tensor(&xname, e))?;
                    let Some((alpha, err)) = search.best else {
                        outcome.skip(
                            &xname,
                            format!(
                                "auto alpha: no α in {}..={} lowers the int8 output error of \
                                 its {targets} MatMul ({:.3e} unsmoothed, {} rows)",
                                self.config.alpha_min,
                                self.config.alpha_max,
                                search.unsmoothed,
                                search.rows
                            ),
                        );
                        outcome.notes.push(format!(
                            "left '{xname}' alone ({targets} MatMul): α=none (int8 group output \
                             error {:.3e}; best α would give more)",
                            search.unsmoothed
                        ));
                        continue;
                    };
                    (
                        alpha,
                        format!(
                            ", int8 group output error {:.3e} → {err:.3e} on {} rows",
                            search.unsmoothed, search.rows
                        ),
                    )
                }
            };
            let s = smoothing_scales(&a, &wmax, alpha);
            apply_scales(g, &gr.targets, Some(&gr.fold), &s)?;
            outcome.notes.push(format!(
                "smoothed '{xname}' ({targets} MatMul): α={alpha:.2}{note}; channel max/mean \
                 was {ratio:.1}"
            ));
            outcome.count("activations smoothed", 1);
            outcome.count("weights scaled", targets as u64);
            outcome.changed = true;
        }
        Ok(outcome)
    }
}

/// `s_j = a_j^α / w_j^(1−α)` (1 where either statistic is 0).
fn smoothing_scales(a: &[f32], wmax: &[f32], alpha: f64) -> Vec<f32> {
    a.iter()
        .zip(wmax)
        .map(|(&a, &w)| {
            if a <= 0.0 || w <= 0.0 {
                1.0
            } else {
                ((a as f64).powf(alpha) / (w as f64).powf(1.0 - alpha)).max(1e-5) as f32
            }
        })
        .collect()
}

/// How int8-static-qdq quantizes a smoothed group.
#[derive(Clone, Copy, Debug)]
struct Int8Model {
    act: QType,
    act_range: (i32, i32),
    act_symmetric: bool,
    /// Weights as [K, N] (per-channel axis 1 = output channels).
    weight: WeightSpec,
}

struct Search {
    /// Chosen α and its error, unless leaving the group alone is best.
    best: Option<(f64, f64)>,
    /// Relative squared error with no smoothing.
    unsmoothed: f64,
    rows: usize,
}

/// Relative squared error `Σ‖XW − Q(X/s)·Q(sW)‖² / Σ‖XW‖²` of each candidate
/// (None = no smoothing) on the sampled rows of `st`; weights are [K, N_i].
fn search_alpha(
    st: &ChannelStats,
    weights: &[Vec<f32>],
    ns: &[usize],
    a: &[f32],
    wmax: &[f32],
    grid: &[f64],
    q: &Int8Model,
) -> std::result::Result<Search, String> {
    let k = st.channels;
    let r = st.row_count();
    let x = &st.rows;
    let reference: Vec<Vec<f32>> = weights
        .iter()
        .zip(ns)
        .map(|(w, &n)| matmul(x, w, r, k, n))
        .collect();
    let den: f64 = reference
        .iter()
        .flatten()
        .map(|&v| (v as f64) * (v as f64))
        .sum::<f64>()
        .max(f64::MIN_POSITIVE);
    let candidates: Vec<Option<f64>> = std::iter::once(None)
        .chain(grid.iter().map(|&g| Some(g)))
        .collect();
    let errors: Vec<std::result::Result<f64, String>> = candidates
        .par_iter()
        .map(|alpha| {
            let s = match alpha {
                Some(alpha) => smoothing_scales(a, wmax, *alpha),
                None => vec![1.0; k],
            };
            let xq = quantize_activation(st, &s, q)?;
            let mut num = 0f64;
            for ((w, &n), want) in weights.iter().zip(ns).zip(&reference) {
                let wq = quantize_weight(w, k, n, &s, q)?;
                let got = matmul(&xq, &wq, r, k, n);
                num += want
                    .iter()
                    .zip(&got)
                    .map(|(&y, &z)| ((y - z) as f64).powi(2))
                    .sum::<f64>();
            }
            Ok(num / den)
        })
        .collect();
    let errors: Vec<f64> = errors.into_iter().collect::<std::result::Result<_, _>>()?;
    let unsmoothed = errors[0];
    // First minimum: no smoothing wins ties, then the smallest α.
    let mut best = (None, unsmoothed);
    for (c, &e) in candidates.iter().zip(&errors).skip(1) {
        if e < best.1 {
            best = (*c, e);
        }
    }
    Ok(Search {
        best: best.0.map(|alpha| (alpha, best.1)),
        unsmoothed,
        rows: r,
    })
}

/// The sampled rows divided by `s`, quantized and dequantized per tensor with the
/// range MinMax calibration gives X/s (per-channel extremes over every row / s).
fn quantize_activation(
    st: &ChannelStats,
    s: &[f32],
    q: &Int8Model,
) -> std::result::Result<Vec<f32>, String> {
    let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
    for ((&mn, &mx), &sj) in st.min.iter().zip(&st.max).zip(s) {
        if mn <= mx {
            lo = lo.min(mn / sj);
            hi = hi.max(mx / sj);
        }
    }
    if lo > hi {
        (lo, hi) = (0.0, 0.0);
    }
    let p = int8::scale_zp(lo, hi, q.act_range.0, q.act_range.1, q.act_symmetric)
        .map_err(|e| e.to_string())?;
    let k = st.channels;
    Ok(st
        .rows
        .chunks(k)
        .flat_map(|row| {
            row.iter()
                .zip(s)
                .map(move |(&v, &sj)| dequant(int8::quantize_value(v / sj, p, q.act), p))
        })
        .collect())
}

/// `diag(s)·W` ([K, N]) quantized and dequantized as the static pass will.
fn quantize_weight(
    w: &[f32],
    k: usize,
    n: usize,
    s: &[f32],
    q: &Int8Model,
) -> std::result::Result<Vec<f32>, String> {
    let scaled: Vec<f32> = w
        .chunks(n)
        .zip(s)
        .flat_map(|(row, &sj)| row.iter().map(move |&v| v * sj))
        .collect();
    let dims = [k, n];
    let params = int8::weight_params(&scaled, &dims, &q.weight).map_err(|e| e.to_string())?;
    let codes = int8::quantize_with(&scaled, &dims, &params, q.weight.axis, q.weight.qtype)
        .map_err(|e| e.to_string())?;
    Ok(codes
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            let p = if q.weight.axis.is_some() {
                params[i % n]
            } else {
                params[0]
            };
            dequant(c, p)
        })
        .collect())
}

#[inline]
fn dequant(code: i32, p: ScaleZp) -> f32 {
    (code - p.zero_point) as f32 * p.scale
}

/// `A·B` for row-major A [m, k] and B [k, n].
fn matmul(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    if n == 0 || k == 0 {
        return out;
    }
    out.par_chunks_mut(n)
        .zip(a.par_chunks(k))
        .take(m)
        .for_each(|(o, arow)| {
            for (&av, brow) in arow.iter().zip(b.chunks(n)) {
                if av != 0.0 {
                    for (y, &bv) in o.iter_mut().zip(brow) {
                        *y += av * bv;
                    }
                }
            }
        });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml_text: &str) -> std::result::Result<SmoothQuantConfig, String> {
        toml::from_str(toml_text).map_err(|e| e.to_string())
    }

    #[test]
    fn alpha_is_a_number_or_auto() {
        assert_eq!(config("alpha = 1").unwrap().alpha, Alpha::Fixed(1.0));
        assert_eq!(config("alpha = 0.25").unwrap().alpha, Alpha::Fixed(0.25));
        assert_eq!(config("alpha = 'auto'").unwrap().alpha, Alpha::Auto);
        assert_eq!(config("").unwrap().alpha, Alpha::Auto);
        assert!(config("alpha = 'strong'").unwrap_err().contains("auto"));
        let c = config("alpha-min = 0.2\nalpha-max = 0.6\nalpha-step = 0.2").unwrap();
        let sq = SmoothQuant {
            config: c,
            data: CalibData::Random,
        };
        assert_eq!(sq.grid(), [0.2, 0.4, 0.6]);
    }

    /// Seeded values in [-1, 1).
    fn uniform(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                let v = crate::calib::text::splitmix(&mut s);
                ((v >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32
            })
            .collect()
    }

    fn stats_of(x: &[f32], k: usize) -> ChannelStats {
        let mut st = ChannelStats::default();
        st.channels = k;
        st.min = vec![f32::INFINITY; k];
        st.max = vec![f32::NEG_INFINITY; k];
        for row in x.chunks(k) {
            for (j, &v) in row.iter().enumerate() {
                st.min[j] = st.min[j].min(v);
                st.max[j] = st.max[j].max(v);
            }
        }
        st.rows = x.to_vec();
        st
    }

    fn int8() -> Int8Model {
        Int8Model {
            act: QType::I8,
            act_range: QType::I8.range(false, false),
            act_symmetric: false,
            weight: WeightSpec {
                qtype: QType::I8,
                symmetric: true,
                reduce_range: false,
                axis: None,
            },
        }
    }

    #[test]
    fn auto_alpha_flattens_outlier_channels_and_lowers_the_int8_error() {
        let (r, k, n) = (128, 32, 16);
        let mut x = uniform(r * k, 1);
        // Channels 3 and 17 carry 60x larger activations (an LLM's outlier channels).
        for row in x.chunks_mut(k) {
            row[3] *= 60.0;
            row[17] *= 60.0;
        }
        let w = uniform(k * n, 2);
        let st = stats_of(&x, k);
        let a = st.absmax();
        let wmax: Vec<f32> = w
            .chunks(n)
            .map(|row| row.iter().fold(0f32, |m, v| m.max(v.abs())))
            .collect();
        let grid: Vec<f64> = (0..=20).map(|i| i as f64 * 0.05).collect();
        let s = search_alpha(&st, &[w], &[n], &a, &wmax, &grid, &int8()).unwrap();
        let (alpha, err) = s.best.expect("smoothing helps");
        assert!(alpha > 0.2, "{alpha}");
        assert!(err < s.unsmoothed * 0.5, "{err} vs {}", s.unsmoothed);
        assert_eq!(s.rows, r);
    }

    #[test]
    fn a_group_every_alpha_hurts_is_left_alone() {
        // The outlier activation channel meets the largest weight row: α near 1 moves
        // a 60x range onto a row that is already 50x, so leaving the group alone wins.
        let (r, k, n) = (64, 16, 8);
        let mut x = uniform(r * k, 3);
        for row in x.chunks_mut(k) {
            row[5] *= 60.0;
        }
        let mut w = uniform(k * n, 4);
        for v in &mut w[5 * n..6 * n] {
            *v *= 50.0;
        }
        let st = stats_of(&x, k);
        let a = st.absmax();
        let wmax: Vec<f32> = w
            .chunks(n)
            .map(|row| row.iter().fold(0f32, |m, v| m.max(v.abs())))
            .collect();
        let s = search_alpha(&st, &[w], &[n], &a, &wmax, &[0.9, 1.0], &int8()).unwrap();
        assert!(s.best.is_none(), "{:?} vs {}", s.best, s.unsmoothed);
    }
}
