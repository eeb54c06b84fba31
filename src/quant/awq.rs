//! AWQ (Lin et al., 2023) scale search: per-input-channel scales `s` that protect
//! the channels with large activations before block quantization.
//!
//! For MatMuls `y = x·W` sharing an input x (weights [K, N]), with `a_j = mean|x_j|`
//! over every calibration row, each candidate `α ∈ {0, 1/n, .., (n-1)/n}` gives
//! `s = a^α / sqrt(max(a^α)·min(a^α))`; the loss is
//! `Σ_W ‖X·(Q(diag(s)·W)/s − W)‖²` on a bounded subsample X of the captured rows,
//! with Q the RTN block quantizer the model will be written with. `α = 0` is plain
//! RTN (`s = 1`), so the chosen scales never do worse than RTN on the subsample.
//! The caller scales the weights by `s` and divides x by `s` upstream.
use rayon::prelude::*;

use super::convert::FloatType;
use super::nbits::{quantize_kn_as, QuantParams};
use super::QuantError;

/// Channel means of |x| over every row seen, and an evenly spread bounded sample of
/// rows.
#[derive(Clone, Debug)]
pub struct ActivationSample {
    pub k: usize,
    abs_sum: Vec<f64>,
    seen: u64,
    /// Kept rows, row-major [rows, k].
    pub rows: Vec<f32>,
    /// Rows kept from each tensor added.
    per_add: usize,
    max_rows: usize,
}

impl ActivationSample {
    /// Keeps up to `max_rows` rows, at most `per_add` from each tensor added.
    pub fn new(k: usize, max_rows: usize, per_add: usize) -> Self {
        ActivationSample {
            k,
            abs_sum: vec![0.0; k],
            seen: 0,
            rows: Vec::new(),
            per_add: per_add.max(1),
            max_rows,
        }
    }

    /// Adds the rows of `x` ([rows, k] row-major); rows holding non-finite values are
    /// ignored.
    pub fn add(&mut self, x: &[f32]) {
        let k = self.k;
        if k == 0 {
            return;
        }
        let good: Vec<&[f32]> = x
            .chunks_exact(k)
            .filter(|r| r.iter().all(|v| v.is_finite()))
            .collect();
        for r in &good {
            for (a, &v) in self.abs_sum.iter_mut().zip(r.iter()) {
                *a += v.abs() as f64;
            }
        }
        self.seen += good.len() as u64;
        let room = (self.max_rows - self.rows.len() / k).min(self.per_add);
        if room == 0 || good.is_empty() {
            return;
        }
        // Evenly spaced rows (the same positions for every sample of a length).
        let take = room.min(good.len());
        for i in 0..take {
            let r = i * good.len() / take;
            self.rows.extend_from_slice(good[r]);
        }
    }

    /// mean|x| per channel.
    pub fn channel_mean_abs(&self) -> Vec<f32> {
        let n = self.seen.max(1) as f64;
        self.abs_sum.iter().map(|&a| (a / n) as f32).collect()
    }

    pub fn row_count(&self) -> usize {
        self.rows.len() / self.k.max(1)
    }
}

/// Normalized AWQ scales `a^α / sqrt(max·min)`; channels with zero mean get the
/// smallest positive scale so they stay finite.
pub fn scales_for(mean_abs: &[f32], alpha: f64) -> Vec<f32> {
    let floor = mean_abs
        .iter()
        .copied()
        .filter(|&v| v > 0.0)
        .fold(f32::INFINITY, f32::min);
    let floor = if floor.is_finite() { floor } else { 1.0 };
    let s: Vec<f64> = mean_abs
        .iter()
        .map(|&a| (a.max(floor) as f64).powf(alpha).max(1e-4))
        .collect();
    let (lo, hi) = s
        .iter()
        .fold((f64::INFINITY, 0f64), |(l, h), &v| (l.min(v), h.max(v)));
    let norm = (lo * hi).sqrt();
    s.iter().map(|&v| (v / norm) as f32).collect()
}

/// Result of the search for one group.
#[derive(Clone, Debug)]
pub struct AwqSearch {
    pub alpha: f64,
    pub scales: Vec<f32>,
    /// Loss of the chosen α and of α = 0 (plain RTN).
    pub loss: f64,
    pub rtn_loss: f64,
    /// ‖X·W‖² summed over the group: the losses relative to it are output errors.
    pub output_norm: f64,
}

/// Searches α over `grid` points for weights `ws` ([K, N] each, with their N) read
/// with input rows `x` ([rows, K]).
pub fn search(
    ws: &[(&[f32], usize)],
    k: usize,
    x: &[f32],
    mean_abs: &[f32],
    p: &QuantParams,
    scale_type: FloatType,
    grid: usize,
) -> Result<AwqSearch, QuantError> {
    p.check()?;
    if mean_abs.len() != k || !x.len().is_multiple_of(k.max(1)) {
        return Err(QuantError(format!(
            "activation statistics do not match K = {k}"
        )));
    }
    let mut best: Option<AwqSearch> = None;
    let mut rtn_loss = 0.0;
    for i in 0..grid.max(1) {
        let alpha = i as f64 / grid.max(1) as f64;
        let s = scales_for(mean_abs, alpha);
        let mut loss = 0.0;
        for &(w, n) in ws {
            loss += loss_for(w, k, n, x, &s, p, scale_type)?;
        }
        if i == 0 {
            rtn_loss = loss;
        }
        if best.as_ref().is_none_or(|b| loss < b.loss) {
            best = Some(AwqSearch {
                alpha,
                scales: s,
                loss,
                rtn_loss,
                output_norm: 0.0,
            });
        }
    }
    let mut b = best.expect("grid has at least one point");
    b.rtn_loss = rtn_loss;
    b.output_norm = ws.iter().map(|&(w, n)| output_sq(x, w, k, n)).sum();
    Ok(b)
}

/// ‖X·(Q(diag(s)·W)/s − W)‖² for one [K, N] weight.
fn loss_for(
    w: &[f32],
    k: usize,
    n: usize,
    x: &[f32],
    s: &[f32],
    p: &QuantParams,
    scale_type: FloatType,
) -> Result<f64, QuantError> {
    let mut ws = w.to_vec();
    for (row, &sj) in ws.chunks_mut(n).zip(s) {
        for v in row {
            *v *= sj;
        }
    }
    let q = quantize_kn_as(&ws, k, n, p, scale_type)?.dequantize_kn();
    let mut delta = q;
    for (j, (drow, wrow)) in delta.chunks_mut(n).zip(w.chunks(n)).enumerate() {
        for (d, &wv) in drow.iter_mut().zip(wrow) {
            *d = *d / s[j] - wv;
        }
    }
    Ok(output_sq(x, &delta, k, n))
}

/// ‖X·D‖² for rows `x` ([rows, K]) and a [K, N] matrix `d`.
fn output_sq(x: &[f32], d: &[f32], k: usize, n: usize) -> f64 {
    // Blocks of rows in parallel, each one f32 GEMM; squares summed in f64. The
    // split is fixed, so the result does not depend on the thread count.
    const ROWS: usize = 32;
    x.par_chunks(ROWS * k)
        .map(|xb| {
            let m = xb.len() / k;
            let mut out = vec![0f32; m * n];
            // SAFETY: A = xb (m×k, row stride k), B = d (k×n, row stride n), C = out
            // (m×n, row stride n), all inside their slices.
            unsafe {
                matrixmultiply::sgemm(
                    m,
                    k,
                    n,
                    1.0,
                    xb.as_ptr(),
                    k as isize,
                    1,
                    d.as_ptr(),
                    n as isize,
                    1,
                    0.0,
                    out.as_mut_ptr(),
                    n as isize,
                    1,
                );
            }
            out.iter().map(|&v| v as f64 * v as f64).sum::<f64>()
        })
        .sum()
}
