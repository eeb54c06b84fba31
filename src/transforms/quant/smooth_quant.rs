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

use super::scale_fold::{apply_scales, fold_site, weight_private, Fold};
use super::select::glob_match;
use crate::calib::{self, Source};
use crate::error::{Error, Result};
use crate::ir::{Graph, Model, NodeId, Use, ValueId};
use crate::pass::{Pass, PassCx, PassOutcome};
use crate::rewrite::matchers::{constant, weight_matmul, WeightMatMul};

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
            apply_scales(g, &gr.targets, Some(&gr.fold), &s)?;
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
