//! AWQ: activation-aware per-channel scaling of MatMul weights before N-bit
//! quantization. The pass only rescales (the float model computes the same function,
//! up to float rounding); the `matmul-nbits` pass that follows in the recipe rounds.
//!
//! Matches: on a model that maps as a decoder (`crate::llm`), the map's groups in
//! execution order (input norm → q,k,v; o_proj; post-attention norm → gate,up; down;
//! final norm → lm_head), folding into the norm the map found (fused, Skip or
//! decomposed) and saying why a site cannot take a scale; on any other model, groups
//! of float32 weight MatMul/Gemm (as `matmul-nbits` matches them, main graph) reading
//! the same activation x. Either way each weight must be read by its MatMul only.
//! Calibrates: mean|x| per channel over every row and a bounded row sample per x
//! (one session over the calibration samples, as in `gptq`).
//! Searches: `crate::quant::awq::search` (α grid, RTN of the configured bits/block/
//! symmetry). Rewrites, with the chosen s: `W ← diag(s)·W`, and `x ← x / s` folded into
//! x's producer:
//! - a normalization's per-channel scale (and bias): LayerNormalization,
//!   RMSNormalization, SimplifiedLayerNormalization, Skip(Simplified)LayerNormalization;
//! - `Mul(·, γ)` by a constant `[K]` γ (a decomposed RMSNorm): γ / s;
//! - `Mul(a, b)` with one side a private weight MatMul (gated MLP up projection): that
//!   weight's output channels / s;
//!
//! which needs every reader of x to be in the group; otherwise (or for any other
//! producer) a `Mul(x, 1/s)` is inserted in front of the group when `insert-mul`.
use std::collections::{BTreeMap, BTreeSet};

use rayon::prelude::*;
use serde::Deserialize;

use super::{calibrated_setup, CalibKeys};
use crate::calib::capture::{capture, Observer, Plan};
use crate::calib::CalibData;
use crate::error::{Error, Result};
use crate::ir::{DType, Graph, Model, NodeId, NodeSpec, Tensor, Use, ValueId};
use crate::quant::awq::{search, ActivationSample};
use crate::quant::{FloatType, QuantParams};
use crate::rewrite::matchers::WeightMatMul;
use crate::rewrite::{LayerError, Pass, PassCx, PassOutcome, PASS_KEY};
use crate::transforms::common::decoder::{fold_for, DecoderView, Site};
use crate::transforms::common::scale_fold::{apply_scales, fold_site, weight_private, Fold};
use crate::transforms::common::select::Selection;
use crate::transforms::common::targets::{targets, weight_kn, Target};

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct AwqConfig {
    /// Quantization the search assumes (the following matmul-nbits pass's).
    pub bits: u8,
    pub block_size: usize,
    pub symmetric: bool,
    /// α grid points in [0, 1).
    pub grid: usize,
    /// Activation rows kept per input for the search.
    pub max_rows: usize,
    /// Insert `Mul(x, 1/s)` where x's producer cannot absorb 1/s.
    pub insert_mul: bool,
    pub calib: Option<String>,
    pub calib_text: Option<String>,
    pub tokenizer: Option<String>,
    pub calib_samples: usize,
    pub calib_seqlen: usize,
    pub seed: Option<u64>,
    pub exclude: Vec<String>,
    pub include_ops: Vec<String>,
    pub runtime: String,
    /// Memory for one calibration piece (its weights + row samples), in MiB; larger
    /// models are calibrated piece by piece, cut between layers.
    pub calib_memory_mb: u64,
}

impl Default for AwqConfig {
    fn default() -> Self {
        AwqConfig {
            bits: 4,
            block_size: 32,
            symmetric: true,
            grid: 20,
            max_rows: 256,
            insert_mul: true,
            calib: None,
            calib_text: None,
            tokenizer: None,
            calib_samples: 16,
            calib_seqlen: 128,
            seed: None,
            exclude: Vec::new(),
            include_ops: vec!["MatMul".into(), "Gemm".into()],
            runtime: "tract".into(),
            calib_memory_mb: super::gptq::CALIB_MEMORY_MB,
        }
    }
}

pub const AWQ_KEYS: &[&str] = &[
    "bits",
    "block-size",
    "symmetric",
    "grid",
    "max-rows",
    "insert-mul",
    "calib",
    "calib-text",
    "tokenizer",
    "calib-samples",
    "calib-seqlen",
    "seed",
    "exclude",
    "include-ops",
    "runtime",
    "calib-memory-mb",
];

const NAME: &str = "awq";

/// Feeds observed tensors to the per-input activation samples.
struct SampleObserver<'a>(&'a mut BTreeMap<String, ActivationSample>);

impl Observer for SampleObserver<'_> {
    fn observe(&mut self, name: &str, values: &[f32], shape: &[usize]) {
        if let Some(st) = self.0.get_mut(name) {
            if shape.last() == Some(&st.k) {
                st.add(values);
            }
        }
    }

    fn piece_done(&mut self, _completed: &[String]) -> Result<()> {
        Ok(())
    }
}

pub struct Awq {
    pub config: AwqConfig,
    selection: Selection,
    data: CalibData,
}

impl Awq {
    pub fn new(config: AwqConfig) -> Result<Self> {
        QuantParams::new(config.bits, config.block_size, config.symmetric)
            .map_err(|e| Error::invalid(format!("awq: {e}")))?;
        if config.grid == 0 || config.max_rows == 0 {
            return Err(Error::invalid("awq grid and max-rows must be at least 1"));
        }
        let (selection, data) = calibrated_setup(
            "awq",
            CalibKeys {
                samples: config.calib_samples,
                seqlen: config.calib_seqlen,
                runtime: &config.runtime,
                exclude: &config.exclude,
                include_ops: &config.include_ops,
                calib: config.calib.as_deref(),
                text: config.calib_text.as_deref(),
                tokenizer: config.tokenizer.as_deref(),
            },
        )?;
        Ok(Awq {
            config,
            selection,
            data,
        })
    }
}

struct Group {
    x: ValueId,
    targets: Vec<WeightMatMul>,
    /// What absorbs `1/s`; None: a new `Mul(x, 1/s)` feeds the group.
    fold: Option<Fold>,
    /// The decoder map's name for the group ("layer 3 q,k,v"); None off the map.
    label: Option<String>,
    /// The counter a fold is reported under ("folded into norms", ...).
    site: &'static str,
}

fn site_counter(fold: &Fold, mapped_norm: bool) -> &'static str {
    match fold {
        Fold::Constants(_) if mapped_norm => "folded into norms",
        Fold::Constants(_) => "folded into constants",
        Fold::Columns(_) => "folded into up projections",
    }
}

impl Awq {
    fn groups(
        &self,
        g: &Graph,
        found: Vec<Target>,
        view: &DecoderView,
        outcome: &mut PassOutcome,
    ) -> Vec<Group> {
        let mut accepted: BTreeMap<NodeId, Target> = BTreeMap::new();
        for t in found {
            let name = g.node(t.m.node).name().to_string();
            if t.m.dtype != DType::F32 {
                outcome.skip(&name, "AWQ scales float32 weights only");
            } else if !weight_private(g, &t.m) {
                outcome.skip(&name, "its weight is shared with other nodes");
            } else {
                accepted.insert(t.m.node, t);
            }
        }
        let mut out = Vec::new();
        for mg in &view.groups {
            let mine: Vec<Target> = mg
                .members
                .iter()
                .filter_map(|(_, id)| accepted.remove(id))
                .collect();
            let Some(first) = mine.first() else { continue };
            let x = first.x;
            if mine.iter().any(|t| t.x != x) {
                // Projections reading different values are grouped by input below.
                for t in mine {
                    accepted.insert(t.m.node, t);
                }
                continue;
            }
            let k = first.m.k;
            let members: BTreeSet<NodeId> = mine.iter().map(|t| t.m.node).collect();
            let targets: Vec<WeightMatMul> = mine.into_iter().map(|t| t.m).collect();
            let fold = match fold_for(g, &mg.site, x, &members, k) {
                Ok(f) => Some(f),
                Err(why) if self.config.insert_mul => {
                    outcome.notes.push(format!(
                        "{}: {why}; a Mul(x, 1/s) is inserted instead",
                        mg.label
                    ));
                    None
                }
                Err(why) => {
                    outcome.skip(&mg.label, format!("{why} (insert-mul = false)"));
                    continue;
                }
            };
            if fold.is_some() && matches!(mg.site, Site::Norm(_)) {
                // Counted when planned: a group whose best α is 0 folds nothing.
                outcome.count("norm fold sites", 1);
            }
            let site = fold.as_ref().map_or("muls inserted", |f| {
                site_counter(f, matches!(mg.site, Site::Norm(_)))
            });
            out.push(Group {
                x,
                targets,
                fold,
                label: Some(mg.label.clone()),
                site,
            });
        }
        let mut by_x: BTreeMap<ValueId, Vec<WeightMatMul>> = BTreeMap::new();
        for t in accepted.into_values() {
            by_x.entry(t.x).or_default().push(t.m);
        }
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
            let members: BTreeSet<NodeId> = targets.iter().map(|m| m.node).collect();
            let exclusive = consumers == members && !g.is_graph_output(x);
            let k = targets[0].k;
            let fold = if exclusive { fold_site(g, x, k) } else { None };
            match fold {
                Some(fold) => out.push(Group {
                    x,
                    targets,
                    site: site_counter(&fold, false),
                    fold: Some(fold),
                    label: None,
                }),
                None if self.config.insert_mul => out.push(Group {
                    x,
                    targets,
                    fold: None,
                    label: None,
                    site: "muls inserted",
                }),
                None => outcome.skip(
                    &name,
                    "its input comes from no norm, constant Mul or gated MatMul that could absorb \
                     the scales (insert-mul = false)",
                ),
            }
        }
        out
    }
}

impl Pass for Awq {
    fn name(&self) -> &'static str {
        NAME
    }

    fn run(&self, model: &mut Model, cx: &mut PassCx) -> Result<PassOutcome> {
        let mut outcome = PassOutcome::new(NAME);
        let found = targets(&model.graph, &self.selection, false, &mut outcome);
        let view = DecoderView::of(&model.graph);
        outcome.notes.push(view.summary());
        let groups = self.groups(&model.graph, found, &view, &mut outcome);
        if groups.is_empty() {
            return Ok(outcome);
        }
        let g = &model.graph;
        let names: BTreeMap<String, usize> = groups
            .iter()
            .map(|gr| (g.value_name(gr.x).to_string(), gr.targets[0].k))
            .collect();
        let seed = self.config.seed.unwrap_or(cx.seed);
        let (count, mut feeds) = self.data.feeds(
            model,
            self.config.calib_samples,
            self.config.calib_seqlen,
            seed,
            &mut outcome,
        )?;
        let per_add = self.config.max_rows.div_ceil(count.max(1));
        let mut stats: BTreeMap<String, ActivationSample> = names
            .iter()
            .map(|(n, &k)| {
                (
                    n.clone(),
                    ActivationSample::new(k, self.config.max_rows, per_add),
                )
            })
            .collect();
        let plan = Plan {
            observed: names
                .iter()
                .map(|(n, &k)| (n.clone(), (k * (self.config.max_rows * 4 + 8)) as u64))
                .collect(),
            budget: self.config.calib_memory_mb.saturating_mul(1 << 20),
            stages: BTreeMap::new(),
        };
        let rt = crate::runtime::named(&self.config.runtime)?;
        let progress = crate::transforms::common::nbits::progress_bar(
            cx.progress,
            count as u64,
            "calibrating",
        );
        let pieces = capture(
            model,
            &plan,
            count,
            &mut feeds,
            rt.as_ref(),
            &progress,
            &mut SampleObserver(&mut stats),
        )?
        .pieces;
        if pieces > 1 {
            outcome
                .notes
                .push(format!("calibrated in {pieces} pieces (calib-memory-mb)"));
        }
        progress.finish_and_clear();
        drop(feeds);

        let p = QuantParams::new(
            self.config.bits,
            self.config.block_size,
            self.config.symmetric,
        )
        .map_err(|e| Error::invalid(e.to_string()))?;
        let g = &model.graph;
        let searched: Vec<Result<Option<crate::quant::awq::AwqSearch>>> = groups
            .par_iter()
            .map(|gr| {
                let st = &stats[g.value_name(gr.x)];
                if st.row_count() == 0 {
                    return Ok(None);
                }
                let k = gr.targets[0].k;
                let ws: Vec<Vec<f32>> = gr
                    .targets
                    .iter()
                    .map(|m| weight_kn(g, m))
                    .collect::<Result<_>>()?;
                let refs: Vec<(&[f32], usize)> = ws
                    .iter()
                    .zip(&gr.targets)
                    .map(|(w, m)| (w.as_slice(), m.n))
                    .collect();
                search(
                    &refs,
                    k,
                    &st.rows,
                    &st.channel_mean_abs(),
                    &p,
                    FloatType::F32,
                    self.config.grid,
                )
                .map(Some)
                .map_err(|e| Error::tensor(g.value_name(gr.x), e.to_string()))
            })
            .collect();
        let searched: Vec<_> = searched.into_iter().collect::<Result<_>>()?;

        for (gr, res) in groups.iter().zip(searched) {
            let g = &mut model.graph;
            let xname = g.value_name(gr.x).to_string();
            let label = gr.label.clone().unwrap_or_else(|| xname.clone());
            let Some(res) = res else {
                outcome.skip(&label, "not observed in calibration");
                continue;
            };
            if res.output_norm > 0.0 {
                outcome.layers.push(LayerError {
                    name: label.clone(),
                    rtn: res.rtn_loss / res.output_norm,
                    after: res.loss / res.output_norm,
                });
            }
            if res.alpha == 0.0 {
                outcome.notes.push(format!(
                    "'{label}': α = 0 is best (no scaling helps on the calibration rows)"
                ));
                continue;
            }
            let s = &res.scales;
            apply_scales(g, &gr.targets, gr.fold.as_ref(), s)?;
            if gr.fold.is_none() {
                let inv: Vec<f32> = s.iter().map(|v| 1.0 / v).collect();
                let cname = g.fresh_name(&format!("{xname}_awq_inv_scale"));
                let k = s.len() as i64;
                let c = g.add_initializer(Tensor::from_f32(cname, vec![k], &inv))?;
                let first = gr.targets[0].node;
                let out = g.fresh_name(&format!("{xname}_awq"));
                let mul = g.add_node(
                    NodeSpec::new("", "Mul")
                        .name(g.fresh_node_name(&format!("{xname}_awq_Mul")))
                        .inputs([Some(gr.x), Some(c)])
                        .output(out)
                        .meta(PASS_KEY, NAME),
                )?;
                g.place_before(mul, first);
                let xs = g.node(mul).output(0).expect("one output");
                for m in &gr.targets {
                    g.set_input(m.node, 0, Some(xs));
                }
                outcome.count("muls inserted", 1);
            }
            if gr.fold.is_some() {
                outcome.count(gr.site, 1);
            }
            outcome.notes.push(format!(
                "'{label}' ({} MatMul): α = {:.2}",
                gr.targets.len(),
                res.alpha,
            ));
            outcome.count("activations scaled", 1);
            outcome.count("weights scaled", gr.targets.len() as u64);
            outcome.changed = true;
        }
        Ok(outcome)
    }
}
