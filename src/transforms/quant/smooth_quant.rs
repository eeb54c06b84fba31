//! SmoothQuant: moves activation outliers into the weights before static int8.
//!
//! For a group of MatMul/Gemm nodes reading the same activation X with constant
//! weights W ([K, N] as the node sees them), per input channel j:
//! `s_j = max|X_j|^α / max|W_j,:|^(1−α)`, then `X' = X / s` and `W' = diag(s) · W`.
//! The product is unchanged; X' has its outlier channels flattened, so per-tensor
//! activation scales stop wasting codes on them. max|X_j| comes from calibration.
//!
//! `X / s` must fold into what produces X, so a group is smoothed only when X is
//! - the output of a normalization with a per-channel scale (LayerNormalization,
//!   RMSNormalization, SimplifiedLayerNormalization, Skip(Simplified)LayerNormalization):
//!   scale (and bias) divided by s;
//! - the output of `Mul(·, γ)` with a constant [K] γ (a decomposed norm): γ / s;
//! - the output of `Mul(a, b)` where one side is a MatMul/Gemm with a constant
//!   weight read by nothing else (the up projection of a gated MLP): that weight's
//!   output channels divided by s.
//!
//! and every consumer of X is a MatMul/Gemm of the group, every constant changed
//! is read only there. Other groups are reported and left alone. Main graph only.
use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use super::select::glob_match;
use crate::calib::{self, Source};
use crate::error::{Error, Result};
use crate::ir::{Attribute, Graph, Model, NodeId, Tensor, Use, ValueId};
use crate::pass::{Pass, PassCx, PassOutcome};
use crate::rewrite::matchers::{constant, weight_matmul, ConstSource, WeightMatMul};

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct SmoothQuantConfig {
    /// Migration strength: 0 leaves activations alone, 1 moves all of their range
    /// into the weights.
    pub alpha: f64,
    /// Calibration samples (see int8-static-qdq); random inputs without it.
    pub calib: Option<String>,
    pub calib_samples: usize,
    /// Node name patterns (`*` wildcards) whose input is left alone.
    pub exclude: Vec<String>,
    /// Runtime the statistics are gathered on (tract, ort, auto).
    pub runtime: String,
}

impl Default for SmoothQuantConfig {
    fn default() -> Self {
        SmoothQuantConfig {
            alpha: 0.5,
            calib: None,
            calib_samples: 8,
            exclude: Vec::new(),
            runtime: "tract".into(),
        }
    }
}

pub const SMOOTH_QUANT_KEYS: &[&str] = &["alpha", "calib", "calib-samples", "exclude", "runtime"];

const NAME: &str = "smooth-quant";

const NORMS: &[(&str, &str, usize, Option<usize>)] = &[
    ("", "LayerNormalization", 1, Some(2)),
    ("", "RMSNormalization", 1, None),
    ("", "SimplifiedLayerNormalization", 1, None),
    ("com.microsoft", "SimplifiedLayerNormalization", 1, None),
    ("com.microsoft", "SkipSimplifiedLayerNormalization", 2, None),
    ("com.microsoft", "SkipLayerNormalization", 2, Some(3)),
];

pub struct SmoothQuant {
    pub config: SmoothQuantConfig,
    source: Option<Source>,
}

impl SmoothQuant {
    pub fn new(config: SmoothQuantConfig) -> Result<Self> {
        if !(0.0..=1.0).contains(&config.alpha) {
            return Err(Error::invalid(format!(
                "smooth-quant alpha {} is not within [0, 1]",
                config.alpha
            )));
        }
        config
            .runtime
            .parse::<crate::runtime::RuntimeKind>()
            .map_err(Error::invalid)?;
        let source = match &config.calib {
            Some(p) => Some(Source::open(std::path::Path::new(p))?),
            None => None,
        };
        Ok(SmoothQuant { config, source })
    }
}

/// Where `X / s` goes.
#[derive(Clone, Debug)]
enum Fold {
    /// Per-channel constants divided by s (norm scale and bias, or a Mul's γ).
    Constants(Vec<ValueId>),
    /// Output channels of a weight MatMul divided by s.
    Columns(WeightMatMul),
}

#[derive(Clone, Debug)]
struct Group {
    x: ValueId,
    targets: Vec<WeightMatMul>,
    fold: Fold,
}

fn single_use(g: &Graph, v: ValueId) -> bool {
    g.value(v).uses().len() == 1 && !g.is_graph_output(v) && !g.is_graph_input(v)
}

/// The weight's constant is read by this MatMul only.
fn weight_private(g: &Graph, m: &WeightMatMul) -> bool {
    match m.transpose {
        Some(t) => single_use(g, m.weight) && g.node(t).output(0).is_some_and(|o| single_use(g, o)),
        None => single_use(g, m.weight),
    }
}

fn per_channel_const(g: &Graph, v: ValueId, k: usize) -> bool {
    constant(g, v).is_some_and(|(_, t)| {
        t.dtype() == crate::ir::DType::F32
            && t.dims.iter().product::<i64>() == k as i64
            && t.dims.last() == Some(&(k as i64))
    }) && single_use(g, v)
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

fn fold_site(g: &Graph, x: ValueId, k: usize) -> Option<Fold> {
    let p = g.producer(x)?;
    let node = g.node(p);
    if node.output(0) != Some(x) {
        return None;
    }
    for (domain, op, scale, bias) in NORMS {
        if node.is(domain, op) {
            if node.attr_int("axis").is_some_and(|a| a != -1) {
                return None;
            }
            let mut vals = vec![node.input(*scale)?];
            if let Some(b) = bias.and_then(|b| node.input(b)) {
                vals.push(b);
            }
            return vals
                .iter()
                .all(|&v| per_channel_const(g, v, k))
                .then_some(Fold::Constants(vals));
        }
    }
    if node.is("", "Mul") {
        let (a, b) = (node.input(0)?, node.input(1)?);
        for (c, _) in [(b, a), (a, b)] {
            if per_channel_const(g, c, k) {
                return Some(Fold::Constants(vec![c]));
            }
        }
        for side in [a, b] {
            let Some(mp) = g.producer(side) else { continue };
            let Ok(m) = weight_matmul(g, mp) else {
                continue;
            };
            if m.n == k && single_use(g, side) && weight_private(g, &m) && m.bias.is_none() {
                return Some(Fold::Columns(m));
            }
        }
    }
    None
}

/// Multiplies row `j` (or column, for a transposed [N, K] tensor) of a weight the
/// node reads as [K, N] by `s[j]` (K axis) — or divides output channels.
fn scale_weight(g: &mut Graph, m: &WeightMatMul, s: &[f32], along_k: bool) -> Result<()> {
    let t = constant(g, m.weight).expect("matched").1.clone();
    let mut w = super::kernels::read_f32(&t)?;
    let (r, c) = (t.dims[0] as usize, t.dims[1] as usize);
    // Stored [K, N] unless transposed ([N, K]); s runs along K or along N.
    let along_rows = along_k != m.transposed;
    for (i, v) in w.iter_mut().enumerate() {
        let j = if along_rows { i / c } else { i % c };
        *v = if along_k { *v * s[j] } else { *v / s[j] };
    }
    let _ = r;
    replace_constant(
        g,
        m.weight,
        m.source,
        Tensor::from_f32(t.name(), t.dims.clone(), &w).stored_like(&t),
    );
    Ok(())
}

fn replace_constant(g: &mut Graph, v: ValueId, source: ConstSource, t: Tensor) {
    match source {
        ConstSource::Initializer(_) => g.set_initializer(v, t),
        ConstSource::ConstantNode(n) => g.node_mut(n).set_attr(Attribute::tensor("value", t)),
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
        let source = match &self.source {
            Some(s) => s.clone(),
            None => {
                outcome.notes.push(format!(
                    "no calibration data: activation statistics from {} seeded random inputs",
                    self.config.calib_samples
                ));
                Source::Random {
                    samples: self.config.calib_samples,
                    seed: cx.seed,
                    dims: BTreeMap::new(),
                }
            }
        };
        let rt = super::static_qdq::runtime_named(&self.config.runtime)?;
        let stats = calib::channel_absmax(model, &names, &source, rt.as_ref())?;
        let alpha = self.config.alpha;
        for gr in groups {
            let g = &mut model.graph;
            let xname = g.value_name(gr.x).to_string();
            let Some(a) = stats.get(&xname) else { continue };
            let k = gr.targets[0].k;
            if a.len() != k {
                outcome.skip(
                    &xname,
                    format!("activation has {} channels, weights {k}", a.len()),
                );
                continue;
            }
            let mut wmax = vec![0f32; k];
            for m in &gr.targets {
                let t = constant(g, m.weight).expect("matched").1;
                let w = super::kernels::read_f32(t)?;
                let c = t.dims[1] as usize;
                for (i, v) in w.iter().enumerate() {
                    let j = if m.transposed { i % c } else { i / c };
                    wmax[j] = wmax[j].max(v.abs());
                }
            }
            let s: Vec<f32> = a
                .iter()
                .zip(&wmax)
                .map(|(&a, &w)| {
                    if a <= 0.0 || w <= 0.0 {
                        1.0
                    } else {
                        ((a as f64).powf(alpha) / (w as f64).powf(1.0 - alpha)).max(1e-5) as f32
                    }
                })
                .collect();
            for m in &gr.targets {
                scale_weight(g, m, &s, true)?;
            }
            match &gr.fold {
                Fold::Constants(vals) => {
                    for &v in vals {
                        let (src, t) = constant(g, v).expect("checked");
                        let t = t.clone();
                        let vals = super::kernels::read_f32(&t)?;
                        let scaled: Vec<f32> = vals.iter().zip(&s).map(|(x, s)| x / s).collect();
                        replace_constant(
                            g,
                            v,
                            src,
                            Tensor::from_f32(t.name(), t.dims.clone(), &scaled).stored_like(&t),
                        );
                    }
                }
                Fold::Columns(m) => scale_weight(g, m, &s, false)?,
            }
            let ratio = a.iter().copied().fold(0f32, f32::max)
                / (a.iter().sum::<f32>() / k as f32).max(f32::MIN_POSITIVE);
            outcome.notes.push(format!(
                "smoothed '{xname}' ({} MatMul): channel max/mean was {ratio:.1}",
                gr.targets.len()
            ));
            outcome.count("activations smoothed", 1);
            outcome.count("weights scaled", gr.targets.len() as u64);
            outcome.changed = true;
        }
        Ok(outcome)
    }
}
