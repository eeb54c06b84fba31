//! Mixed precision under a size budget: measures each weight's sensitivity on
//! calibration data and chooses a setting per weight so the whole model fits a budget
//! (bits per parameter, or MiB) with the least total predicted error.
//!
//! Matches: what the calibrated passes match (constant 2-D MatMul/Gemm weights of the
//! main graph), the lm_head included; a tied head stands for its table, shared with
//! the embedding Gather (`tied-embedding` then stores one table of the chosen
//! setting, 4 or 8 bits, or leaves both float).
//! Calibrates: `H = XᵀX` per MatMul input, as GPTQ does; each setting's predicted
//! error is the relative output error ‖X·(W − Ŵ)‖² / ‖X·W‖², Ŵ from the pass's
//! algorithm (rtn or hqq), estimated on evenly spaced output columns (blocks run
//! along K, so a column quantizes the same alone as in the whole weight).
//! Settings: MatMulNBits bits × block sizes (the pinned onnxruntime 1.32 CPU kernel
//! runs 2, 4 and 8 bits at blocks 16..256) and float; bytes are exactly what is
//! stored (codes, scales in the weight's type, or float16 with `scale-type = "f16"`
//! for the `scale-type` pass that follows, zero points when asymmetric).
//! Objective: Σ predicted error × parameters, optionally × a measured loss gain per
//! kind of weight or per weight (`sensitivity`, see [`Sensitivity`]). The best
//! uniform setting that fits is a candidate too, kept unless the allocation predicts
//! `uniform-margin` less error: the prediction ranks settings of one weight well but
//! is only a model of the final loss across weights.
//! Budget: all-in bits per parameter over every weight matrix (MatMul weights, the
//! head, embedding tables; norms and biases excluded). Tables it does not choose
//! (an untied embedding) count at their current size.
//! Emits: nothing but a precision annotation on each node (`onnxq.precision`,
//! "int4/b32" or "float"), which `matmul-nbits`, `gptq`, `awq` and `tied-embedding`
//! read in place of their own bits and block size. The graph is otherwise unchanged.
use std::collections::BTreeMap;

use rayon::prelude::*;
use serde::Deserialize;

use super::{calibrated_setup, CalibKeys};
use crate::calib::hessian::TokenWeighting;
use crate::calib::CalibData;
use crate::error::{Error, Result};
use crate::ir::{DType, Graph, Model, NodeId, ValueId};
use crate::quant::mixed::{allocate, nbits_bytes, prior_bits, spearman, variance, Candidate};
use crate::quant::{FloatType, QuantParams};
use crate::rewrite::matchers::{constant, WeightMatMul};
use crate::rewrite::{Pass, PassCx, PassOutcome, PrecisionRow};
use crate::transforms::common::decoder::DecoderView;
use crate::transforms::common::nbits::{self as kernels, Algorithm, Format};
use crate::transforms::common::select::{annotate, Precision, Selection};
use crate::transforms::common::targets::{targets, weight_kn};
use crate::transforms::weight_only::matmul_nbits as weight_only;
use crate::transforms::weight_only::scales::ScaleType;

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct MixedConfig {
    /// Budget in bits per parameter, all-in (codes, scales, zero points).
    pub budget_bpw: Option<f64>,
    /// Budget in MiB of weight bytes (the same bytes `budget-bpw` counts).
    pub max_size_mb: Option<f64>,
    /// Bit widths to choose from (MatMulNBits: 2, 4, 8).
    pub bits: Vec<u8>,
    /// Block sizes to choose from (powers of two, 16..256).
    pub block_sizes: Vec<usize>,
    /// Symmetric blocks (no zero points); must match the quantizer that follows.
    pub symmetric: bool,
    /// Float (the weight as it is) is a setting too.
    pub allow_float: bool,
    /// How the errors are predicted: rtn or hqq (hqq is asymmetric).
    pub algorithm: Algorithm,
    /// How the weights' predicted errors add up in the objective.
    pub error_weighting: ErrorWeighting,
    pub token_weighting: TokenWeighting,
    pub calib: Option<String>,
    pub calib_text: Option<String>,
    pub tokenizer: Option<String>,
    pub calib_samples: usize,
    pub calib_seqlen: usize,
    pub seed: Option<u64>,
    pub exclude: Vec<String>,
    pub include_ops: Vec<String>,
    pub runtime: String,
    pub calib_memory_mb: u64,
    /// How the scales will be stored (`scale-type` pass after the quantizer): f16
    /// scales cost 2 bytes each in a float32 model.
    pub scale_type: ScaleType,
    /// Scale each weight's predicted errors by a measured effect on the model's output
    /// (see [`Sensitivity`]).
    pub sensitivity: Sensitivity,
    /// Calibration windows each loss probe runs (sensitivity kind or layer).
    pub probe_samples: usize,
    /// The allocation replaces the best uniform setting that fits only when it
    /// predicts at least this fraction less total error: the prediction is not exact,
    /// and a near tie is no reason to trade a known-good uniform model for a mix.
    pub uniform_margin: f64,
}

/// How each weight's predicted errors are put on a common scale before they add up.
///
/// Why: the predicted error (relative output error of the weight's own MatMul, ×
/// parameters) does not say what a weight's error does to the model's output: on
/// SmolLM2-135M at 5.0 bits per parameter, allocating by it measured worse
/// perplexity than uniform int4/b32. A loss probe measures it: the weights of a
/// group are quantized alone at a probe setting (int4, block 128 when offered) and
/// the mean KL divergence of the model's next-token distribution from the float
/// model's is measured on `probe-samples` calibration windows with the pass's
/// runtime; the group's predicted errors are scaled so they sum to that KL at the
/// probe setting.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Sensitivity {
    /// The predicted errors as they are.
    #[default]
    None,
    /// One probe per kind of weight (its report name without digits: q_proj of every
    /// layer together, the head alone): a handful of model runs.
    Kind,
    /// One probe per weight: a model run per weight and window (slow on a large
    /// model; the report notes the time).
    Layer,
}

impl Default for MixedConfig {
    fn default() -> Self {
        MixedConfig {
            budget_bpw: None,
            max_size_mb: None,
            bits: vec![2, 4, 8],
            block_sizes: vec![16, 32, 64, 128, 256],
            symmetric: true,
            allow_float: true,
            algorithm: Algorithm::Rtn,
            error_weighting: ErrorWeighting::Parameters,
            token_weighting: TokenWeighting::Energy,
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
            scale_type: ScaleType::F32,
            sensitivity: Sensitivity::None,
            probe_samples: 4,
            uniform_margin: 0.05,
        }
    }
}

pub const MIXED_KEYS: &[&str] = &[
    "budget-bpw",
    "max-size-mb",
    "bits",
    "block-sizes",
    "symmetric",
    "allow-float",
    "algorithm",
    "error-weighting",
    "token-weighting",
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
    "scale-type",
    "sensitivity",
    "probe-samples",
    "uniform-margin",
];

/// The objective the allocation minimises.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorWeighting {
    /// Σ relative output errors: every weight counts the same, whatever its size.
    /// On SmolLM2-135M at 5.0 bpw (RTN) it spends bytes on 8-bit k/v/o projections and
    /// leaves the MLPs and the tied head at 4 bits: perplexity 25.75.
    Relative,
    /// Σ relative output error × parameters: a large weight (MLP, head) counts by its
    /// size. Same model and budget: perplexity 23.55 (benches/results/perplexity.md).
    #[default]
    Parameters,
}

const NAME: &str = "mixed-precision";

/// Output columns each setting's error is estimated on.
const ERROR_COLUMNS: usize = 256;

pub struct Mixed {
    pub config: MixedConfig,
    selection: Selection,
    data: CalibData,
}

impl Mixed {
    pub fn new(config: MixedConfig) -> Result<Self> {
        match (config.budget_bpw, config.max_size_mb) {
            (Some(_), Some(_)) => {
                return Err(Error::invalid(
                    "mixed-precision takes budget-bpw or max-size-mb, not both",
                ))
            }
            (None, None) => {
                return Err(Error::invalid(
                    "mixed-precision needs a budget: budget-bpw or max-size-mb",
                ))
            }
            (Some(b), None) | (None, Some(b)) if !(b > 0.0 && b.is_finite()) => {
                return Err(Error::invalid(format!(
                    "mixed-precision budget {b} must be a positive number"
                )))
            }
            _ => {}
        }
        if config.algorithm == Algorithm::Hqq && config.symmetric {
            return Err(Error::invalid(
                "mixed-precision: hqq writes zero points; set symmetric = false so their bytes \
                 are counted",
            ));
        }
        if !(config.uniform_margin >= 0.0 && config.uniform_margin < 1.0) {
            return Err(Error::invalid(format!(
                "mixed-precision uniform-margin {} must be in [0, 1)",
                config.uniform_margin
            )));
        }
        if config.sensitivity != Sensitivity::None && config.probe_samples == 0 {
            return Err(Error::invalid(
                "mixed-precision probe-samples must be at least 1 with a sensitivity probe",
            ));
        }
        if config.bits.is_empty() || config.block_sizes.is_empty() {
            return Err(Error::invalid(
                "mixed-precision needs at least one bit width and one block size",
            ));
        }
        for &b in &config.bits {
            for &s in &config.block_sizes {
                weight_only::validate(b, s, Format::Matmulnbits, config.algorithm)?;
            }
        }
        let (selection, data) = calibrated_setup(
            NAME,
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
        Ok(Mixed {
            config,
            selection,
            data,
        })
    }

    /// The settings a weight may take: (precision, bytes); `tied` tables are read by
    /// GatherBlockQuantized too, which takes 4 or 8 bits.
    fn settings(
        &self,
        k: usize,
        n: usize,
        dtype: DType,
        float_bytes: u64,
        tied: bool,
    ) -> Vec<(Precision, u64)> {
        let scale_bytes = self.config.scale_type.bytes(dtype);
        let symmetric = self.config.symmetric;
        let mut out = Vec::new();
        for &bits in &self.config.bits {
            if tied && bits != 4 && bits != 8 {
                continue;
            }
            for &block_size in &self.config.block_sizes {
                out.push((
                    Precision::Nbits { bits, block_size },
                    nbits_bytes(k, n, bits, block_size, symmetric, scale_bytes),
                ));
            }
        }
        if self.config.allow_float || out.is_empty() {
            out.push((Precision::Float, float_bytes));
        }
        out
    }
}

impl Mixed {
    /// The decoder's embedding Gather as a layer, when its table is a constant 2-D
    /// float tensor that is not also a chosen weight (a tied head).
    fn embedding_layer(
        &self,
        g: &Graph,
        map: &crate::llm::DecoderMap,
        chosen: &BTreeMap<ValueId, usize>,
    ) -> Option<Layer> {
        let (id, node) = g.nodes().find(|(_, n)| n.name() == map.embedding.node)?;
        if !node.is("", "Gather") || node.attr_int("axis").unwrap_or(0) != 0 {
            return None;
        }
        if self.selection.resolve_node(node)
            == crate::transforms::common::select::NodeOverride::Skip
        {
            return None;
        }
        let v = node.input(0)?;
        let (source, t) = constant(g, v)?;
        if chosen.contains_key(&v) || t.dims.len() != 2 || !t.dtype().is_float() {
            return None;
        }
        let (n, k) = (t.dims[0] as usize, t.dims[1] as usize);
        Some(Layer {
            name: "embedding".into(),
            nodes: vec![id],
            m: WeightMatMul {
                node: id,
                weight: v,
                source,
                transposed: true,
                transpose: None,
                bias: None,
                k,
                n,
                dtype: t.dtype(),
            },
            x: None,
            k,
            n,
            settings: self.settings(k, n, t.dtype(), t.stored_len() as u64, true),
        })
    }
}

/// One weight the allocation chooses a setting for.
struct Layer {
    name: String,
    /// Every node reading the weight (they share its setting).
    nodes: Vec<NodeId>,
    m: WeightMatMul,
    /// The MatMul input whose H weighs the error; none for an embedding table (its
    /// rows are the output: plain weight error).
    x: Option<String>,
    k: usize,
    n: usize,
    settings: Vec<(Precision, u64)>,
}

impl Pass for Mixed {
    fn name(&self) -> &'static str {
        NAME
    }

    fn run(&self, model: &mut Model, cx: &mut PassCx) -> Result<PassOutcome> {
        let mut outcome = PassOutcome::new(NAME);
        let g = &model.graph;
        let mut found = targets(g, &self.selection, false, &mut outcome);
        if found.is_empty() {
            return Ok(outcome);
        }
        let view = DecoderView::of(g);
        found.sort_by_key(|t| view.order_of(t.m.node));
        let tied_head = view
            .map
            .as_ref()
            .filter(|m| m.tied_lm_head)
            .map(|m| m.lm_head.node_id);
        // One layer per weight; MatMuls sharing a weight share its setting.
        let mut layers: Vec<Layer> = Vec::new();
        let mut by_weight: BTreeMap<ValueId, usize> = BTreeMap::new();
        for t in &found {
            if let Some(&i) = by_weight.get(&t.m.weight) {
                layers[i].nodes.push(t.m.node);
                continue;
            }
            let tensor = constant(g, t.m.weight).expect("matched as constant").1;
            let tied = tied_head == Some(t.m.node);
            let name = view
                .name_of(t.m.node)
                .map_or_else(|| tensor.name().to_string(), str::to_string);
            by_weight.insert(t.m.weight, layers.len());
            layers.push(Layer {
                name,
                nodes: vec![t.m.node],
                m: t.m.clone(),
                x: Some(g.value_name(t.x).to_string()),
                k: t.m.k,
                n: t.m.n,
                settings: self.settings(
                    t.m.k,
                    t.m.n,
                    tensor.dtype(),
                    tensor.stored_len() as u64,
                    tied,
                ),
            });
        }
        // An untied embedding table: a layer of its own (GatherBlockQuantized: 4 or 8
        // bits, or float).
        if let Some(l) = view
            .map
            .as_ref()
            .and_then(|map| self.embedding_layer(g, map, &by_weight))
        {
            by_weight.insert(l.m.weight, layers.len());
            layers.push(l);
        }
        // A tied head's table is the embedding's too: the Gather carries the head's
        // setting, for a gather-block-quantized pass that shares rows a calibrated
        // quantizer wrote for the head (`tied-embedding` rewrites both itself).
        if let (Some(head), Some(map)) = (tied_head, view.map.as_ref()) {
            let gather = g
                .nodes()
                .find(|(_, n)| n.name() == map.embedding.node && n.is("", "Gather"))
                .map(|(id, _)| id);
            if let (Some(gather), Some(l)) =
                (gather, layers.iter_mut().find(|l| l.nodes.contains(&head)))
            {
                l.nodes.push(gather);
            }
        }
        let hidden = view.map.as_ref().map(|m| m.hidden_size);
        let (fixed_params, fixed_bytes) = fixed_tables(g, &by_weight, hidden);
        let params: u64 = layers.iter().map(|l| (l.k * l.n) as u64).sum::<u64>() + fixed_params;
        let budget_total = match (self.config.budget_bpw, self.config.max_size_mb) {
            (Some(bpw), _) => (bpw * params as f64 / 8.0).floor() as u64,
            (_, Some(mb)) => (mb * (1u64 << 20) as f64).floor() as u64,
            _ => unreachable!("checked in new"),
        };
        let budget = budget_total.checked_sub(fixed_bytes).ok_or_else(|| {
            Error::invalid(format!(
                "the budget ({budget_total} bytes) is smaller than the tables mixed-precision \
                 does not choose ({fixed_bytes} bytes: embedding tables not tied to the head)"
            ))
        })?;

        // Calibration: H per input, each layer's errors computed as its H completes.
        let mut k_of: BTreeMap<String, usize> = BTreeMap::new();
        for l in &layers {
            let Some(x) = &l.x else { continue };
            if let Some(&k) = k_of.get(x) {
                if k != l.k {
                    return Err(Error::tensor(
                        x,
                        format!("read by MatMuls with K = {k} and K = {}", l.k),
                    ));
                }
            }
            k_of.insert(x.clone(), l.k);
        }
        let seed = self.config.seed.unwrap_or(cx.seed);
        let (count, mut feeds) = self.data.feeds(
            model,
            self.config.calib_samples,
            self.config.calib_seqlen,
            seed,
            &mut outcome,
        )?;
        let rt = crate::runtime::named(&self.config.runtime)?;
        let progress = kernels::progress_bar(cx.progress, count as u64, "calibrating");
        let mut errors: Vec<Option<Vec<f64>>> = (0..layers.len()).map(|_| None).collect();
        let mut variances = vec![0.0; layers.len()];
        let mut unobserved = Vec::new();
        let g = &model.graph;
        crate::calib::hessian::hessians(
            model,
            &k_of,
            self.config.token_weighting,
            self.config.calib_memory_mb.saturating_mul(1 << 20),
            // Sensitivities are measured on the float model: no quantized prefix.
            BTreeMap::new(),
            count,
            &mut feeds,
            rt.as_ref(),
            &progress,
            &mut |finished| {
                let hs: BTreeMap<String, (u64, Vec<f64>)> = finished
                    .into_iter()
                    .map(|(name, h)| (name, (h.rows, h.finish())))
                    .collect();
                let jobs: Vec<usize> = (0..layers.len())
                    .filter(|&i| layers[i].x.as_ref().is_some_and(|x| hs.contains_key(x)))
                    .collect();
                let done: Vec<Result<(Vec<f64>, f64)>> = jobs
                    .par_iter()
                    .map(|&i| {
                        let (rows, h) = &hs[layers[i].x.as_ref().expect("filtered")];
                        self.layer_errors(g, &layers[i], (*rows > 0).then_some(h.as_slice()))
                    })
                    .collect();
                for (i, r) in jobs.into_iter().zip(done) {
                    let (e, var) = r?;
                    if hs[layers[i].x.as_ref().expect("filtered")].0 == 0 {
                        unobserved.push(layers[i].name.clone());
                    }
                    errors[i] = Some(e);
                    variances[i] = var;
                }
                Ok(Vec::new())
            },
        )?;
        progress.finish_and_clear();
        drop(feeds);
        for name in unobserved {
            outcome.notes.push(format!(
                "'{name}' was not observed in calibration: its errors are weight errors \
                 (identity H)"
            ));
        }
        for (i, l) in layers.iter().enumerate() {
            if l.x.is_none() {
                let (e, var) = self.layer_errors(g, l, None)?;
                errors[i] = Some(e);
                variances[i] = var;
            }
        }
        let errors: Vec<Vec<f64>> = errors
            .into_iter()
            .zip(&layers)
            .map(|(e, l)| e.ok_or_else(|| Error::tensor(&l.name, "no Hessian was computed")))
            .collect::<Result<_>>()?;

        let weights: Vec<f64> = layers
            .iter()
            .map(|l| match self.config.error_weighting {
                ErrorWeighting::Relative => 1.0,
                ErrorWeighting::Parameters => (l.k * l.n) as f64,
            })
            .collect();
        let gains = match self.config.sensitivity {
            Sensitivity::None => vec![1.0; layers.len()],
            _ => self.loss_gains(model, &layers, &errors, &weights, cx, &mut outcome)?,
        };
        let options: Vec<Vec<Candidate>> = layers
            .iter()
            .zip(&errors)
            .enumerate()
            .map(|(i, (l, e))| {
                l.settings
                    .iter()
                    .zip(e)
                    .map(|(&(_, bytes), &error)| Candidate {
                        bytes,
                        error: error * weights[i] * gains[i],
                    })
                    .collect()
            })
            .collect();
        let mut choice = allocate(&options, budget).map_err(|e| {
            Error::invalid(format!(
                "size budget: {} (plus {fixed_bytes} bytes of tables it does not choose; {params} \
                 parameters)",
                e.0
            ))
        })?;
        if let Some((p, uniform)) = best_uniform(&layers, &options, budget) {
            let objective =
                |c: &[usize]| -> f64 { c.iter().zip(&options).map(|(&j, o)| o[j].error).sum() };
            let (mixed, flat) = (objective(&choice), objective(&uniform));
            if mixed >= flat * (1.0 - self.config.uniform_margin) {
                outcome.notes.push(format!(
                    "uniform {p} fits the budget and the allocation predicts no less than \
                     {:.0}% below it ({mixed:.4e} vs {flat:.4e}): kept uniform",
                    100.0 * self.config.uniform_margin
                ));
                choice = uniform;
            } else {
                outcome.notes.push(format!(
                    "the allocation predicts {mixed:.4e}, {:.1}% below the best uniform setting \
                     that fits ({p}: {flat:.4e})",
                    100.0 * (1.0 - mixed / flat.max(f64::MIN_POSITIVE))
                ));
            }
        }

        let g = &mut model.graph;
        let mut spent = fixed_bytes;
        let mut total_error = 0.0;
        for (i, ((l, e), &c)) in layers.iter().zip(&errors).zip(&choice).enumerate() {
            let (p, bytes) = l.settings[c];
            for &node in &l.nodes {
                annotate(g.node_mut(node), p);
            }
            spent += bytes;
            total_error += e[c];
            outcome.count(&format!("weights {p}"), 1);
            outcome.precision.push(PrecisionRow {
                name: l.name.clone(),
                params: (l.k * l.n) as u64,
                setting: p.to_string(),
                bytes,
                error: e[c],
                prior_bits: prior_bits(variances[i], 1.0),
                candidates: l
                    .settings
                    .iter()
                    .zip(e)
                    .map(|(&(p, b), &err)| (p.to_string(), b, err))
                    .collect(),
                nodes: l
                    .nodes
                    .iter()
                    .map(|&n| g.node(n).name().to_string())
                    .collect(),
            });
        }
        outcome.count("parameters", params);
        outcome.count("budget bytes", budget_total);
        outcome.count("weight bytes", spent);
        outcome.notes.push(format!(
            "{} weights, {params} parameters: {spent} of {budget_total} budget bytes ({:.3} bits \
             per parameter all-in; {fixed_bytes} bytes of tables not chosen), total predicted \
             error {total_error:.4e}",
            layers.len(),
            spent as f64 * 8.0 / params.max(1) as f64,
        ));
        // How well the variance prior ranks layers against the calibrated error, at the
        // setting most weights can take (the first bit width at the first block size).
        let reference = layers
            .iter()
            .zip(&errors)
            .filter_map(|(l, e)| {
                l.settings
                    .iter()
                    .position(|(p, _)| *p != Precision::Float)
                    .map(|i| e[i])
            })
            .collect::<Vec<f64>>();
        if reference.len() == layers.len() && layers.len() >= 2 {
            let rho = spearman(&variances, &reference);
            outcome.notes.push(format!(
                "variance prior (arXiv 2411.06084) vs calibrated error at {}: Spearman {rho:.3} \
                 over {} weights",
                layers[0]
                    .settings
                    .iter()
                    .find(|(p, _)| *p != Precision::Float)
                    .map_or_else(String::new, |(p, _)| p.to_string()),
                layers.len()
            ));
        }
        outcome.changed = true;
        Ok(outcome)
    }
}

impl Mixed {
    /// The predicted error of each of `l`'s settings, and the weight's variance.
    /// Without a Hessian (input not observed) the error is the weight error.
    fn layer_errors(&self, g: &Graph, l: &Layer, h: Option<&[f64]>) -> Result<(Vec<f64>, f64)> {
        let t = constant(g, l.m.weight).expect("matched as constant").1;
        let w = weight_kn(g, &l.m)?;
        let var = variance(&w);
        let ft = FloatType::from_dtype(t.dtype()).unwrap_or_default();
        // Evenly spaced columns: each quantizes alone as in the whole weight.
        let step = l.n.div_ceil(ERROR_COLUMNS).max(1);
        let cols: Vec<usize> = (0..l.n).step_by(step).collect();
        let mc = cols.len();
        let mut sub = vec![0f32; l.k * mc];
        for i in 0..l.k {
            for (j, &c) in cols.iter().enumerate() {
                sub[i * mc + j] = w[i * l.n + c];
            }
        }
        drop(w);
        let identity;
        let h = match h {
            Some(h) => h,
            None => {
                let mut id = vec![0.0; l.k * l.k];
                (0..l.k).for_each(|i| id[i * l.k + i] = 1.0);
                identity = id;
                &identity
            }
        };
        let err = |e: crate::quant::QuantError| Error::tensor(t.name(), e.to_string());
        let hqq = crate::quant::hqq::HqqParams::default();
        l.settings
            .iter()
            .map(|&(p, _)| match p {
                Precision::Float => Ok(0.0),
                Precision::Nbits { bits, block_size } => {
                    let qp =
                        QuantParams::new(bits, block_size, self.config.symmetric).map_err(err)?;
                    let q = match self.config.algorithm {
                        Algorithm::Rtn => {
                            crate::quant::nbits::quantize_kn_as(&sub, l.k, mc, &qp, ft)
                        }
                        Algorithm::Hqq => {
                            crate::quant::hqq::quantize_kn_as(&sub, l.k, mc, &qp, &hqq, ft)
                        }
                    }
                    .map_err(err)?;
                    let deq = q.dequantize_kn();
                    Ok(crate::quant::gptq::output_errors(&sub, &[&deq], l.k, mc, h, mc)[0])
                }
            })
            .collect::<Result<Vec<f64>>>()
            .map(|e| (e, var))
    }
}

/// The uniform setting (one precision every weight offers) that fits `budget` with
/// the least objective, as (setting, the option index per layer).
fn best_uniform(
    layers: &[Layer],
    options: &[Vec<Candidate>],
    budget: u64,
) -> Option<(Precision, Vec<usize>)> {
    let mut precisions: Vec<Precision> = layers.first()?.settings.iter().map(|s| s.0).collect();
    precisions.retain(|p| layers.iter().all(|l| l.settings.iter().any(|s| s.0 == *p)));
    let mut best: Option<(f64, Precision, Vec<usize>)> = None;
    for p in precisions {
        let idx: Vec<usize> = layers
            .iter()
            .map(|l| l.settings.iter().position(|s| s.0 == p).expect("retained"))
            .collect();
        let bytes: u64 = idx.iter().zip(options).map(|(&j, o)| o[j].bytes).sum();
        if bytes > budget {
            continue;
        }
        let err: f64 = idx.iter().zip(options).map(|(&j, o)| o[j].error).sum();
        if best.as_ref().is_none_or(|(e, _, _)| err < *e) {
            best = Some((err, p, idx));
        }
    }
    best.map(|(_, p, idx)| (p, idx))
}

/// The setting a loss probe quantizes a weight at: int4 (else the fewest bits
/// offered) at block 128 (else the largest block below it, else the smallest).
fn probe_setting(settings: &[(Precision, u64)]) -> Option<usize> {
    let nbits: Vec<(usize, u8, usize)> = settings
        .iter()
        .enumerate()
        .filter_map(|(i, (p, _))| match *p {
            Precision::Nbits { bits, block_size } => Some((i, bits, block_size)),
            Precision::Float => None,
        })
        .collect();
    let bits = if nbits.iter().any(|n| n.1 == 4) {
        4
    } else {
        nbits.iter().map(|n| n.1).min()?
    };
    let of_bits = nbits.iter().filter(|n| n.1 == bits);
    of_bits
        .clone()
        .filter(|n| n.2 <= 128)
        .max_by_key(|n| n.2)
        .or_else(|| of_bits.min_by_key(|n| n.2))
        .map(|n| n.0)
}

/// Natural log-probabilities of one row of logits.
fn log_softmax(row: &[f32]) -> Vec<f32> {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let lse = max
        + row
            .iter()
            .map(|&v| (v as f64 - max).exp())
            .sum::<f64>()
            .ln();
    row.iter().map(|&v| (v as f64 - lse) as f32).collect()
}

/// KL(p ‖ q) of two rows of log-probabilities, p the reference.
fn kl(log_p: &[f32], log_q: &[f32]) -> f64 {
    log_p
        .iter()
        .zip(log_q)
        .map(|(&a, &b)| {
            let a = a as f64;
            a.exp() * (a - b as f64)
        })
        .sum::<f64>()
        .max(0.0)
}

impl Mixed {
    /// The measured loss gain of each layer (see [`Sensitivity`]): for each group,
    /// the mean KL divergence of the model's next-token distribution with the group's
    /// weights quantized at the probe setting, over the group's predicted errors at
    /// that setting (× `weights`).
    fn loss_gains(
        &self,
        model: &Model,
        layers: &[Layer],
        errors: &[Vec<f64>],
        weights: &[f64],
        cx: &PassCx,
        outcome: &mut PassOutcome,
    ) -> Result<Vec<f64>> {
        let start = std::time::Instant::now();
        let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, l) in layers.iter().enumerate() {
            let key = match self.config.sensitivity {
                Sensitivity::Kind => l
                    .name
                    .chars()
                    .filter(|c| !c.is_ascii_digit())
                    .collect::<String>(),
                _ => format!("{i:06} {}", l.name),
            };
            groups.entry(key).or_default().push(i);
        }
        let logits_name = crate::llm::DecoderIoNames::of(&model.graph)
            .map(|n| n.logits)
            .ok();
        let seed = self.config.seed.unwrap_or(cx.seed);
        let (count, mut feeds) = self.data.feeds(
            model,
            self.config.probe_samples,
            self.config.calib_seqlen,
            seed,
            outcome,
        )?;
        let feeds: Vec<crate::runtime::NamedTensors> =
            (0..count).map(&mut feeds).collect::<Result<_>>()?;
        let rt = crate::runtime::named(&self.config.runtime)?;
        let logits_of = |out: crate::runtime::NamedTensors| -> Result<(Vec<f32>, usize)> {
            let (name, t) = match &logits_name {
                Some(n) => out.into_iter().find(|(o, _)| o == n),
                None => out.into_iter().next(),
            }
            .ok_or_else(|| Error::invalid("loss probe: the model has no logits output"))?;
            let vocab = t.shape.last().copied().unwrap_or(0);
            if vocab == 0 {
                return Err(Error::tensor(&name, "loss probe: empty logits"));
            }
            Ok((t.to_f32_vec()?, vocab))
        };
        // The float model's log-probabilities, every row of every window.
        let mut reference: Vec<(Vec<f32>, usize)> = Vec::with_capacity(feeds.len());
        {
            let mut session = crate::runtime::open_model(rt.as_ref(), model, &[])?;
            for f in &feeds {
                let (v, vocab) = logits_of(session.run(f)?)?;
                let rows: Vec<f32> = v.par_chunks(vocab).flat_map_iter(log_softmax).collect();
                reference.push((rows, vocab));
            }
        }
        let progress = kernels::progress_bar(cx.progress, groups.len() as u64, "probing the loss");
        let probes: Vec<Option<usize>> =
            layers.iter().map(|l| probe_setting(&l.settings)).collect();
        let hqq = crate::quant::hqq::HqqParams::default();
        let mut gains: Vec<Option<f64>> = vec![None; layers.len()];
        let mut table = Vec::new();
        for (group, members) in &groups {
            let mut m = model.clone();
            let mut predicted = 0.0;
            for &i in members {
                let (l, Some(p)) = (&layers[i], probes[i]) else {
                    continue;
                };
                let Precision::Nbits { bits, block_size } = l.settings[p].0 else {
                    continue;
                };
                let g = &mut m.graph;
                let Some(t) = g.initializer(l.m.weight).cloned() else {
                    // A Constant-node weight: not probed, its gain is the median.
                    continue;
                };
                let w = weight_kn(g, &l.m)?;
                let ft = FloatType::from_dtype(t.dtype()).unwrap_or_default();
                let err = |e: crate::quant::QuantError| Error::tensor(t.name(), e.to_string());
                let qp = QuantParams::new(bits, block_size, self.config.symmetric).map_err(err)?;
                let q = match self.config.algorithm {
                    Algorithm::Rtn => crate::quant::nbits::quantize_kn_as(&w, l.k, l.n, &qp, ft),
                    Algorithm::Hqq => {
                        crate::quant::hqq::quantize_kn_as(&w, l.k, l.n, &qp, &hqq, ft)
                    }
                }
                .map_err(err)?;
                let deq = q.dequantize_kn();
                let stored = if l.m.transposed {
                    crate::quant::transpose(&deq, l.k, l.n)
                } else {
                    deq
                };
                let new = crate::ir::float_tensor(t.name(), t.dtype(), t.dims.clone(), &stored);
                g.set_initializer(l.m.weight, new.stored_like(&t));
                predicted += errors[i][p] * weights[i];
            }
            let mut session = crate::runtime::open_model(rt.as_ref(), &m, &[])?;
            drop(m);
            let (mut sum, mut rows) = (0.0, 0usize);
            for (f, (log_p, vocab)) in feeds.iter().zip(&reference) {
                let (v, _) = logits_of(session.run(f)?)?;
                sum += v
                    .par_chunks(*vocab)
                    .zip(log_p.par_chunks(*vocab))
                    .map(|(q, lp)| kl(lp, &log_softmax(q)))
                    .sum::<f64>();
                rows += v.len() / vocab;
            }
            let measured = sum / rows.max(1) as f64;
            if predicted > 0.0 && measured > 0.0 {
                for &i in members {
                    gains[i] = Some(measured / predicted);
                }
            }
            table.push((group.clone(), measured, predicted));
            progress.inc(1);
        }
        progress.finish_and_clear();
        // Weights without a measured gain (not probed, or nothing measurable) take
        // the median gain: neither favoured nor neglected.
        let mut known: Vec<f64> = gains.iter().flatten().copied().collect();
        known.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        let median = known.get(known.len() / 2).copied().unwrap_or(1.0);
        if self.config.sensitivity == Sensitivity::Kind {
            for (group, measured, predicted) in &table {
                outcome.notes.push(format!(
                    "loss probe '{}': KL {measured:.4e} nats/token, predicted {predicted:.4e}, \
                     gain {:.3e}",
                    group.trim(),
                    if *predicted > 0.0 {
                        measured / predicted
                    } else {
                        f64::NAN
                    }
                ));
            }
        }
        outcome.notes.push(format!(
            "loss probes: {} groups x {} windows of {} tokens on {}, {:.1} s",
            groups.len(),
            feeds.len(),
            self.config.calib_seqlen,
            rt.name(),
            start.elapsed().as_secs_f64()
        ));
        Ok(gains.into_iter().map(|g| g.unwrap_or(median)).collect())
    }
}

/// Constant 2-D tables of Gather nodes that are not weights being chosen (a second
/// embedding): (parameters, bytes) at their current size. A table that is also a
/// chosen weight (a tied head) is counted there.
fn fixed_tables(g: &Graph, chosen: &BTreeMap<ValueId, usize>, hidden: Option<usize>) -> (u64, u64) {
    let mut seen: BTreeMap<ValueId, (u64, u64)> = BTreeMap::new();
    for (_, n) in g.nodes() {
        let gather = n.is("", "Gather") || n.is("com.microsoft", "GatherBlockQuantized");
        let Some(v) = n.input(0).filter(|_| gather) else {
            continue;
        };
        if chosen.contains_key(&v) || seen.contains_key(&v) {
            continue;
        }
        if let Some((_, t)) = constant(g, v) {
            // In a decoder only hidden-size rows are embeddings (not rotary caches).
            let embedding = hidden.is_none_or(|h| t.dims.get(1) == Some(&(h as i64)));
            if t.dims.len() == 2 && t.dtype().is_float() && embedding {
                let p = (t.dims[0] * t.dims[1]) as u64;
                seen.insert(v, (p, t.stored_len() as u64));
            }
        }
    }
    seen.values()
        .fold((0, 0), |(p, b), &(tp, tb)| (p + tp, b + tb))
}
