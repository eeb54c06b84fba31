//! QuaRot's measured choice (`select = "measured"`): which projections read the
//! rotated residual stream, and which down_projs take the online Hadamard, decided per
//! weight by its calibrated output error after round-to-nearest in each basis.
//!
//! Why not rotate everything: a trained norm's scale γ is often anti-correlated with
//! the energy of the channels it scales (SmolLM2-135M: ρ = K·Σeγ²/(Σe·Σγ²) has median
//! 0.58 before the MLPs, benches/results/quarot_analysis.md). Fusing γ and rotating
//! spreads the rounding error evenly over channels whose weighted energy was not
//! even, which raises the output error by about 1/ρ, more than the rotation's
//! flatter weights save. A projection that loses reads the stream de-rotated online
//! (`MatMul(x, Qᵀ)`, then γ) and keeps its own weight: the float function is exact
//! either way, only the rounding differs.
//!
//! Both errors are measured in the float model's basis: a rotated weight's rounding
//! is mapped back (`Ŵ ↦ D⁻¹·Q·Ŵ` for a norm reader, `Ŵ ↦ H·Ŵ` for a down_proj),
//! so one `XᵀX` per input serves both, and no rotated Hessian is ever formed.
use std::collections::{BTreeMap, BTreeSet};

use rayon::prelude::*;

use super::tensors;
use crate::calib::hessian::{hessians, TokenWeighting};
use crate::calib::CalibData;
use crate::error::{Error, Result};
use crate::ir::{Model, NodeId};
use crate::quant::gptq::output_errors;
use crate::quant::hadamard::{rotate_rows, Rotation};
use crate::quant::nbits::{quantize_kn_as, QuantParams};
use crate::quant::FloatType;
use crate::rewrite::matchers::weight_matmul;
use crate::rewrite::{PassCx, PassOutcome};
use crate::transforms::common::nbits::progress_bar;

/// Output columns each error is estimated on (evenly spaced; every column quantizes
/// alone, so a subset measures what the whole weight would show).
const COLUMNS: usize = 128;

/// How the choice measures: the quantizer it predicts and the calibration it runs.
pub(super) struct Measure<'a> {
    pub params: QuantParams,
    pub data: &'a CalibData,
    pub samples: usize,
    pub seqlen: usize,
    pub runtime: &'a str,
    pub memory_mb: u64,
    pub seed: u64,
}

/// What the rotation would do to a projection's weight.
pub(super) enum Side {
    /// Reads a norm's output `x̂·diag(γ)`: rotated, it reads `x̂·Q` with weight
    /// `Qᵀ·diag(γ)·W`, where `gamma` is the part of the scale fused into the weight
    /// (1 on channels kept out of Q, whose scale stays in the norm).
    Norm { gamma: Vec<f64> },
    /// A down_proj (its output side is rotated either way): with the online
    /// Hadamard H, it reads `u·H` with weight `Hᵀ·W·Q`.
    Down,
}

/// One projection the choice is made for.
pub(super) struct Candidate {
    pub node: NodeId,
    /// q_proj, gate_proj, down_proj, ...
    pub what: &'static str,
    pub side: Side,
}

/// The choice, and the errors it was made on.
#[derive(Default)]
pub(super) struct Choice {
    /// Projections that take the rotation (norm readers: read `x̂·Q`; down_projs:
    /// take the online Hadamard).
    pub rotated: BTreeSet<NodeId>,
    /// Per kind of projection: (how many rotated, how many, Σ error kept, Σ error
    /// unrotated, Σ error rotated).
    pub by_kind: BTreeMap<&'static str, (usize, usize, f64, f64, f64)>,
}

/// `Q·Y` for Y [k, n]: Qᵀ's own `rotate_rows`.
fn unrotate_rows(y: &[f64], k: usize, n: usize, q: &Rotation) -> Vec<f64> {
    let qt = Rotation {
        n: q.n,
        m: tensors::transpose(&q.m, q.n, q.n),
        kind: q.kind.clone(),
    };
    rotate_rows(y, k, n, &qt)
}

/// Evenly spaced columns of `w` [k, n]: at most [`COLUMNS`].
fn columns(w: &[f64], k: usize, n: usize) -> (Vec<f64>, usize) {
    let cols: Vec<usize> = (0..n).step_by(n.div_ceil(COLUMNS).max(1)).collect();
    let m = cols.len();
    let mut out = vec![0f64; k * m];
    for i in 0..k {
        for (j, &c) in cols.iter().enumerate() {
            out[i * m + j] = w[i * n + c];
        }
    }
    (out, m)
}

fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// The relative output errors of `c`'s weight rounded unrotated and rotated, both
/// in the float model's basis, on `h` = XᵀX of its input there.
fn errors(
    model: &Model,
    c: &Candidate,
    q: &Rotation,
    online: Option<&Rotation>,
    h: &[f64],
    p: &QuantParams,
) -> Result<(f64, f64)> {
    let g = &model.graph;
    let m = weight_matmul(g, c.node).map_err(|why| {
        Error::invalid(format!(
            "quarot: {} '{}': {why}",
            c.what,
            g.node(c.node).name()
        ))
    })?;
    let (k, n) = (m.k, m.n);
    let full = tensors::read_kn(g, &m)?;
    let full = match c.side {
        // The output side is rotated in both bases: the columns are W·Q's.
        Side::Down => crate::quant::hadamard::rotate_cols(&full, k, n, q),
        Side::Norm { .. } => full,
    };
    let (w, mc) = columns(&full, k, n);
    drop(full);
    let round = |w: &[f64]| -> Result<Vec<f64>> {
        let qz = quantize_kn_as(&f32s(w), k, mc, p, FloatType::F32)
            .map_err(|e| Error::tensor(g.value_name(m.weight), e.to_string()))?;
        Ok(qz.dequantize_kn().into_iter().map(f64::from).collect())
    };
    let plain = round(&w)?;
    let back = match &c.side {
        Side::Norm { gamma } => {
            let mut scaled = w.clone();
            for (row, s) in scaled.chunks_mut(mc).zip(gamma) {
                row.iter_mut().for_each(|x| *x *= s);
            }
            let r = round(&rotate_rows(&scaled, k, mc, q))?;
            let mut b = unrotate_rows(&r, k, mc, q);
            // A channel the norm zeroes reads nothing: its row does not count.
            for (row, &s) in b.chunks_mut(mc).zip(gamma) {
                let inv = if s == 0.0 { 0.0 } else { 1.0 / s };
                row.iter_mut().for_each(|x| *x *= inv);
            }
            b
        }
        Side::Down => {
            let Some(hd) = online else {
                return Ok((0.0, f64::INFINITY));
            };
            let r = round(&rotate_rows(&w, k, mc, hd))?;
            unrotate_rows(&r, k, mc, hd)
        }
    };
    let e = output_errors(&f32s(&w), &[&f32s(&plain), &f32s(&back)], k, mc, h, mc);
    Ok((e[0], e[1]))
}

/// Calibrates the float model once (`XᵀX` of every candidate's input) and keeps the
/// rotation for each candidate whose measured error it lowers.
pub(super) fn choose(
    model: &Model,
    candidates: &[Candidate],
    q: &Rotation,
    online: Option<&Rotation>,
    how: &Measure,
    cx: &PassCx,
    outcome: &mut PassOutcome,
) -> Result<Choice> {
    let g = &model.graph;
    let mut by_input: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut k_of: BTreeMap<String, usize> = BTreeMap::new();
    for (i, c) in candidates.iter().enumerate() {
        let node = g.node(c.node);
        let x = node
            .input(0)
            .ok_or_else(|| Error::invalid(format!("quarot: '{}' has no input", node.name())))?;
        let m = weight_matmul(g, c.node)
            .map_err(|why| Error::invalid(format!("quarot: '{}': {why}", node.name())))?;
        let name = g.value_name(x).to_string();
        k_of.insert(name.clone(), m.k);
        by_input.entry(name).or_default().push(i);
    }
    let (count, mut feeds) = how
        .data
        .feeds(model, how.samples, how.seqlen, how.seed, outcome)?;
    let rt = crate::runtime::named(how.runtime)?;
    let progress = progress_bar(cx.progress, count as u64, "measuring the rotation");
    let mut measured: Vec<Option<(f64, f64)>> = (0..candidates.len()).map(|_| None).collect();
    hessians(
        model,
        &k_of,
        // Every token counts alike, as in perplexity: with plain XᵀX the attention
        // sink's massive activations dominate the error, and the choice it made on
        // SmolLM2-135M scored 21.55 against 21.39 (RTN sym b32).
        TokenWeighting::Equal,
        how.memory_mb.saturating_mul(1 << 20),
        BTreeMap::new(),
        count,
        &mut feeds,
        rt.as_ref(),
        &progress,
        &mut |finished| {
            let hs: BTreeMap<String, Vec<f64>> = finished
                .into_iter()
                .map(|(name, h)| (name, h.finish()))
                .collect();
            let jobs: Vec<(usize, &Vec<f64>)> = hs
                .iter()
                .flat_map(|(x, h)| by_input[x].iter().map(move |&i| (i, h)))
                .collect();
            let done: Vec<Result<(f64, f64)>> = jobs
                .par_iter()
                .map(|&(i, h)| errors(model, &candidates[i], q, online, h, &how.params))
                .collect();
            for ((i, _), r) in jobs.into_iter().zip(done) {
                measured[i] = Some(r?);
            }
            Ok(Vec::new())
        },
    )?;
    progress.finish_and_clear();
    let mut choice = Choice::default();
    for (c, e) in candidates.iter().zip(measured) {
        let (plain, rotated) = e.ok_or_else(|| {
            Error::invalid(format!(
                "quarot: the input of {} '{}' was not observed in calibration",
                c.what,
                g.node(c.node).name()
            ))
        })?;
        let rotate = rotated < plain;
        if rotate {
            choice.rotated.insert(c.node);
        }
        let k = choice.by_kind.entry(c.what).or_default();
        k.0 += usize::from(rotate);
        k.1 += 1;
        k.2 += plain.min(rotated);
        k.3 += plain;
        k.4 += rotated;
    }
    Ok(choice)
}
