//! GPTQ: calibrated weight-only N-bit quantization of constant MatMul/Gemm weights.
//!
//! Matches: what `matmul-nbits` matches (constant 2-D float B, directly or through
//! Transpose, Gemm with transB), in the main graph only (subgraph MatMuls are not
//! calibrated and are left alone).
//! Calibrates: runs the float model once over the calibration samples with every
//! distinct MatMul input exposed, accumulating `H = XᵀX / rows` per input value
//! (MatMuls reading the same value share it); activations are dropped after each
//! sample. Samples come from `calib` (.npz/.npy sets), from `calib-text` tokenized with
//! `tokenizer` (seeded windows; ids, all-ones mask, positions, empty past), or else
//! seeded random inputs.
//! On a decoder, weights are solved in the decoder map's execution order and the
//! per-layer report uses its names ("layer 0 q_proj"); each solve is independent, so
//! the output is the same as without the map.
//! With `calib-sequential` (quantized-prefix calibration, as in the GPTQ paper) the
//! model is calibrated one decoder layer per piece, and each piece's solved weights
//! (dequantized) replace the float ones before the next layer is observed: layer i's
//! H comes from the outputs of the already-quantized layers 0…i−1. On a model that
//! does not map as a decoder the pieces are the memory budget's.
//! Emits: com.microsoft MatMulNBits exactly as `matmul-nbits` does (same names,
//! bias fusion), with codes/scales/zero points from `crate::quant::gptq`.
use std::collections::BTreeMap;

use rayon::prelude::*;
use serde::Deserialize;

use crate::calib::hessian::TokenWeighting;

use super::{calibrated_setup, CalibKeys};
use crate::calib::CalibData;
use crate::error::{Error, Result};
use crate::ir::{float_tensor, Tensor};
use crate::ir::{Model, ValueId};
use crate::quant::gptq::GptqOptions;
use crate::quant::{FloatType, QuantParams};
use crate::rewrite::matchers::{constant, ConstSource};
use crate::rewrite::{LayerError, Pass, PassCx, PassOutcome};
use crate::transforms::common::decoder::DecoderView;
use crate::transforms::common::nbits::{self as kernels, Format, NbitsWeight};
use crate::transforms::common::select::{NodeOverride, Selection};
use crate::transforms::common::targets::{targets, weight_kn};
use crate::transforms::weight_only::matmul_nbits::{
    self as weight_only, WeightOnly, WeightOnlyConfig,
};

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct GptqConfig {
    pub bits: u8,
    /// Group (= MatMulNBits block) size along K.
    pub block_size: usize,
    pub symmetric: bool,
    /// MatMulNBits accuracy_level (0 = unset).
    pub accuracy_level: i64,
    /// Dampening added to H's diagonal, relative to its mean.
    pub damp: f64,
    /// Quantize input channels by decreasing activation energy (groups stay contiguous).
    pub act_order: bool,
    /// How much each calibration token counts in H (energy, equal, sink).
    pub token_weighting: TokenWeighting,
    /// Calibrate layer by layer on the outputs of the already-quantized layers.
    pub calib_sequential: bool,
    /// Calibration samples: a directory of .npz files / <input>.npy folders, or one .npz.
    pub calib: Option<String>,
    /// Calibration text (needs `tokenizer`).
    pub calib_text: Option<String>,
    /// Hugging Face tokenizer.json (byte-level BPE) for `calib-text`.
    pub tokenizer: Option<String>,
    /// Number of samples (text windows or random inputs; files: at most this many).
    pub calib_samples: usize,
    /// Tokens per text window.
    pub calib_seqlen: usize,
    /// Seed of the window choice and random inputs (default: the pipeline's seed).
    pub seed: Option<u64>,
    /// Node name patterns (`*` wildcards) to leave alone.
    pub exclude: Vec<String>,
    pub include_ops: Vec<String>,
    pub fuse_bias: bool,
    /// Runtime calibration runs on (tract, ort, auto).
    pub runtime: String,
    /// Memory for one calibration piece (its weights + Hessians), in MiB; larger
    /// models are calibrated piece by piece, cut between layers.
    pub calib_memory_mb: u64,
}

/// Default of `calib-memory-mb`: about two 1B-class decoder layers with their H.
pub const CALIB_MEMORY_MB: u64 = 1024;

impl Default for GptqConfig {
    fn default() -> Self {
        GptqConfig {
            bits: 4,
            block_size: 32,
            symmetric: true,
            accuracy_level: 0,
            damp: 0.01,
            act_order: true,
            token_weighting: TokenWeighting::Energy,
            calib_sequential: false,
            calib: None,
            calib_text: None,
            tokenizer: None,
            calib_samples: 16,
            calib_seqlen: 128,
            seed: None,
            exclude: Vec::new(),
            include_ops: vec!["MatMul".into(), "Gemm".into()],
            fuse_bias: true,
            runtime: "tract".into(),
            calib_memory_mb: CALIB_MEMORY_MB,
        }
    }
}

pub const GPTQ_KEYS: &[&str] = &[
    "bits",
    "block-size",
    "symmetric",
    "accuracy-level",
    "damp",
    "act-order",
    "token-weighting",
    "calib-sequential",
    "calib",
    "calib-text",
    "tokenizer",
    "calib-samples",
    "calib-seqlen",
    "seed",
    "exclude",
    "include-ops",
    "fuse-bias",
    "runtime",
    "calib-memory-mb",
];

const NAME: &str = "gptq";

/// Output columns the per-layer error report is estimated on.
const REPORT_COLUMNS: usize = 256;

pub struct Gptq {
    pub config: GptqConfig,
    selection: Selection,
    data: CalibData,
}

impl Gptq {
    pub fn new(config: GptqConfig) -> Result<Self> {
        weight_only::validate(
            config.bits,
            config.block_size,
            Format::Matmulnbits,
            kernels::Algorithm::Rtn,
        )?;
        if !(config.damp >= 0.0 && config.damp.is_finite()) {
            return Err(Error::invalid(format!(
                "gptq damp {} must be a finite value >= 0",
                config.damp
            )));
        }
        let (selection, data) = calibrated_setup(
            "gptq",
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
        Ok(Gptq {
            config,
            selection,
            data,
        })
    }

    /// The settings of one node: the pass's, or its precision annotation's.
    fn params_of(&self, node: &crate::ir::Node) -> Result<kernels::Params> {
        let (bits, block_size) = match self.selection.resolve_node(node) {
            NodeOverride::Quantize {
                bits, block_size, ..
            } => (
                bits.unwrap_or(self.config.bits),
                block_size.unwrap_or(self.config.block_size),
            ),
            NodeOverride::Skip => (self.config.bits, self.config.block_size),
        };
        weight_only::validate(
            bits,
            block_size,
            Format::Matmulnbits,
            kernels::Algorithm::Rtn,
        )
        .map_err(|e| Error::tensor(node.name(), e.to_string()))?;
        Ok(kernels::Params {
            bits,
            block_size,
            symmetric: self.config.symmetric,
            algorithm: kernels::Algorithm::Rtn,
        })
    }
}

impl Pass for Gptq {
    fn name(&self) -> &'static str {
        NAME
    }

    fn run(&self, model: &mut Model, cx: &mut PassCx) -> Result<PassOutcome> {
        let mut outcome = PassOutcome::new(NAME);
        let mut targets = targets(
            &model.graph,
            &self.selection,
            self.config.fuse_bias,
            &mut outcome,
        );
        if targets.is_empty() {
            return Ok(outcome);
        }
        let g = &model.graph;
        // On a decoder, layers are solved and reported in the map's order and by its
        // names; each weight's solve is independent, so the order changes no number.
        let view = DecoderView::of(g);
        outcome.notes.push(view.summary());
        targets.sort_by_key(|t| view.order_of(t.m.node));
        let mut k_of: BTreeMap<String, usize> = BTreeMap::new();
        for t in &targets {
            let name = g.value_name(t.x).to_string();
            if let Some(&k) = k_of.get(&name) {
                if k != t.m.k {
                    return Err(Error::tensor(
                        &name,
                        format!("read by MatMuls with K = {k} and K = {}", t.m.k),
                    ));
                }
            }
            k_of.insert(name, t.m.k);
        }
        let seed = self.config.seed.unwrap_or(cx.seed);
        let (count, mut feeds) = self.data.feeds(
            model,
            self.config.calib_samples,
            self.config.calib_seqlen,
            seed,
            &mut outcome,
        )?;
        // One quantization per (weight, input, settings); settings are the pass's
        // unless the node carries a precision annotation (mixed-precision).
        let mut unique: Vec<(usize, String, kernels::Params)> = Vec::new();
        let mut index: BTreeMap<(ValueId, String, u8, usize, bool), usize> = BTreeMap::new();
        let mut planned = Vec::new();
        for (ti, t) in targets.iter().enumerate() {
            let x = g.value_name(t.x).to_string();
            let params = self.params_of(g.node(t.m.node))?;
            let key = (
                t.m.weight,
                x.clone(),
                params.bits,
                params.block_size,
                params.symmetric,
            );
            let ui = *index.entry(key).or_insert_with(|| {
                unique.push((ti, x, params));
                unique.len() - 1
            });
            planned.push((t.m.clone(), t.add, ui));
        }
        let opts = GptqOptions {
            damp: self.config.damp,
            act_order: self.config.act_order,
        };
        let rt = crate::runtime::named(&self.config.runtime)?;
        let progress = kernels::progress_bar(cx.progress, count as u64, "calibrating");
        let started = std::time::Instant::now();
        let mut solving = std::time::Duration::ZERO;
        // Stored tensors (spilled out of memory when large) as each piece is solved.
        let mut results: Vec<Option<kernels::ReadyWeight>> =
            (0..unique.len()).map(|_| None).collect();
        let mut notes = Vec::new();
        let mut hessians = 0u64;
        let mut layers = Vec::new();
        // Each piece's Hessians are solved and dropped as soon as the piece is done.
        // Quantized-prefix calibration: cut between the decoder's layers.
        let stages = match (&view.map, self.config.calib_sequential) {
            (Some(map), true) => map
                .layer_inputs(g)
                .into_iter()
                .filter(|(x, _)| k_of.contains_key(x))
                .collect(),
            _ => BTreeMap::new(),
        };
        let sequential = self.config.calib_sequential;
        let captured = crate::calib::hessian::hessians(
            model,
            &k_of,
            self.config.token_weighting,
            self.config.calib_memory_mb.saturating_mul(1 << 20),
            stages,
            count,
            &mut feeds,
            rt.as_ref(),
            &progress,
            &mut |finished| {
                let t0 = std::time::Instant::now();
                let hs: BTreeMap<String, Vec<f64>> = finished
                    .into_iter()
                    .map(|(name, h)| {
                        if h.rows == 0 {
                            notes.push(format!(
                                "'{name}' was not observed in calibration: its MatMuls are \
                                 quantized by RTN"
                            ));
                        }
                        (name, h.finish())
                    })
                    .collect();
                hessians += hs.len() as u64;
                // One factorization per input, shared by the weights reading it.
                let factors: BTreeMap<&String, crate::quant::gptq::HessianFactor> = hs
                    .par_iter()
                    .map(|(name, h)| {
                        let k = k_of[name];
                        crate::quant::gptq::factor(h, k, &opts)
                            .map(|f| (name, f))
                            .map_err(|e| Error::tensor(name, e.to_string()))
                    })
                    .collect::<Result<_>>()?;
                let jobs: Vec<usize> = (0..unique.len())
                    .filter(|&ui| hs.contains_key(&unique[ui].1))
                    .collect();
                type Solved = (kernels::ReadyWeight, LayerError, Option<Tensor>);
                let solved: Vec<Result<Solved>> = jobs
                    .par_iter()
                    .map(|&ui| {
                        let (ti, x, params) = &unique[ui];
                        let params = *params;
                        let qp = QuantParams {
                            bits: params.bits,
                            block_size: params.block_size,
                            symmetric: params.symmetric,
                        };
                        let m = &targets[*ti].m;
                        let (source, t) = constant(g, m.weight).expect("matched as constant");
                        let w = weight_kn(g, m)?;
                        let ft = FloatType::from_dtype(t.dtype()).unwrap_or_default();
                        let err =
                            |e: crate::quant::QuantError| Error::tensor(t.name(), e.to_string());
                        let h = &hs[x];
                        let q = crate::quant::gptq::quantize_factored(
                            &w,
                            m.k,
                            m.n,
                            &factors[x],
                            &qp,
                            ft,
                        )
                        .map_err(err)?;
                        let rtn = crate::quant::nbits::quantize_kn_as(&w, m.k, m.n, &qp, ft)
                            .map_err(err)?
                            .dequantize_kn();
                        let deq = q.dequantize_kn();
                        let e = crate::quant::gptq::output_errors(
                            &w,
                            &[&rtn, &deq],
                            m.k,
                            m.n,
                            h,
                            REPORT_COLUMNS,
                        );
                        let layer = LayerError {
                            name: view
                                .name_of(m.node)
                                .map_or_else(|| t.name().to_string(), str::to_string),
                            rtn: e[0],
                            after: e[1],
                        };
                        // What the rest of a sequential calibration runs with: the
                        // dequantized weight, stored as the original is.
                        let replacement = match source {
                            ConstSource::Initializer(_) if sequential => {
                                let stored = if m.transposed {
                                    crate::quant::transpose(&deq, m.k, m.n)
                                } else {
                                    deq
                                };
                                Some(float_tensor(t.name(), t.dtype(), t.dims.clone(), &stored))
                            }
                            _ => None,
                        };
                        let q = NbitsWeight {
                            params,
                            k: m.k,
                            n: m.n,
                            dtype: t.dtype(),
                            q,
                            original_bytes: t.stored_len(),
                        };
                        Ok((q.into_ready(Format::Matmulnbits), layer, replacement))
                    })
                    .collect();
                let mut replacements = Vec::new();
                for (ui, r) in jobs.into_iter().zip(solved) {
                    let (q, layer, replacement) = r?;
                    results[ui] = Some(q);
                    layers.push(layer);
                    replacements.extend(replacement);
                }
                solving += t0.elapsed();
                Ok(replacements)
            },
        )?;
        progress.finish_and_clear();
        drop(feeds);
        outcome.notes.extend(notes);
        outcome.layers = layers;
        outcome.count("hessians", hessians);
        let quantized: Vec<kernels::ReadyWeight> = results
            .into_iter()
            .zip(&unique)
            .map(|(q, (_, x, _))| {
                q.ok_or_else(|| Error::tensor(x, "no Hessian was computed for this MatMul input"))
            })
            .collect::<Result<_>>()?;
        let total = started.elapsed();
        let pieces = captured.pieces;
        if sequential {
            outcome.notes.push(format!(
                "calibrated sequentially: each piece's statistics from the outputs of the \
                 already-quantized pieces before it ({pieces} pieces, {} re-run with their \
                 quantized weights)",
                captured.reruns
            ));
        }
        for name in &captured.too_late {
            outcome.notes.push(format!(
                "'{name}' is read before the piece that calibrates it: later pieces saw its \
                 float values"
            ));
        }
        outcome.notes.push(format!(
            "time: calibration {:.1}s, GPTQ solve {:.1}s ({pieces} calibration piece{})",
            (total - solving).as_secs_f64(),
            solving.as_secs_f64(),
            if pieces == 1 { "" } else { "s" }
        ));
        let emit = WeightOnly::new(WeightOnlyConfig {
            bits: self.config.bits,
            block_size: self.config.block_size,
            symmetric: self.config.symmetric,
            accuracy_level: self.config.accuracy_level,
            fuse_bias: self.config.fuse_bias,
            ..Default::default()
        })?
        .labelled(NAME);
        emit.emit_ready(&mut model.graph, planned, quantized, &mut outcome)?;
        if outcome.changed {
            model.require_opset("com.microsoft", 1);
        }
        Ok(outcome)
    }
}
