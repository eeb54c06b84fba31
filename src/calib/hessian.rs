//! Second moments of MatMul inputs for GPTQ: `H = XᵀX / rows` per observed value,
//! accumulated sample by sample (activations are dropped after each sample, so
//! memory is one K×K matrix per value, not samples × sequence length).
//!
//! The calibration loop is [`capture`]; a model too large to hold every H at once
//! is calibrated piece by piece and each piece's H handed on when it is complete.
//! With stages, the weights the caller solves from one piece's H replace the float
//! ones for the rest of the run (quantized-prefix calibration, see [`capture`]).
use std::collections::BTreeMap;

use rayon::prelude::*;

use super::capture::{capture, Captured, Observer, Plan};
use crate::error::{Error, Result};
use crate::ir::{Model, Tensor};
use crate::runtime::{NamedTensors, Runtime};

/// Activation rows per f32 GEMM before the product is added to the f64 total.
const ROWS_PER_GEMM: usize = 1024;
/// H rows per parallel task.
const H_ROWS_PER_TASK: usize = 64;

/// How much each activation row (token) counts in `H`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TokenWeighting {
    /// Plain `XᵀX`: a token counts by its squared norm, so one token with massive
    /// activations (the attention sink at position 0) can make up nearly all of H.
    #[default]
    Energy,
    /// Every token's row scaled to unit norm: the objective is each token's relative
    /// error, whatever its magnitude.
    Equal,
    /// As `Equal`, with the first position of each sequence (the attention sink every
    /// later token reads) weighted as much as all the other positions together.
    Sink,
}

impl TokenWeighting {
    /// `values` ([.., seq, k] rows) reweighted; `None` when rows stay as they are.
    fn apply(self, values: &[f32], shape: &[usize], k: usize) -> Option<Vec<f32>> {
        if self == TokenWeighting::Energy || k == 0 {
            return None;
        }
        let seq = if shape.len() >= 2 {
            shape[shape.len() - 2].max(1)
        } else {
            1
        };
        let mut out = values.to_vec();
        for (i, row) in out.chunks_exact_mut(k).enumerate() {
            let n2: f64 = row.iter().map(|&v| v as f64 * v as f64).sum();
            if n2 == 0.0 || !n2.is_finite() {
                continue;
            }
            let weight = if self == TokenWeighting::Sink && seq > 1 && i % seq == 0 {
                (seq - 1) as f64
            } else {
                1.0
            };
            let s = (weight / n2).sqrt() as f32;
            row.iter_mut().for_each(|v| *v *= s);
        }
        Some(out)
    }
}

/// Running `Σ xᵀx` over rows `x` of length `k`.
#[derive(Clone, Debug)]
pub struct Hessian {
    pub k: usize,
    /// Upper triangle (row-major K×K) while accumulating.
    sum: Vec<f64>,
    pub rows: u64,
}

impl Hessian {
    pub fn new(k: usize) -> Self {
        Hessian {
            k,
            sum: vec![0.0; k * k],
            rows: 0,
        }
    }

    /// Adds the rows of `x` (row-major, row length `k`). Non-finite rows are skipped
    /// and counted in the return value.
    ///
    /// Rows go through an f32 GEMM in batches of at most `ROWS_PER_GEMM` (short
    /// enough sums for f32), and each batch's product is added to the f64 total.
    /// The work split is fixed, so the result does not depend on the thread count.
    pub fn add(&mut self, x: &[f32]) -> usize {
        let k = self.k;
        if k == 0 {
            return 0;
        }
        let rows: Vec<&[f32]> = x
            .chunks_exact(k)
            .filter(|r| r.iter().all(|v| v.is_finite()))
            .collect();
        let bad = x.len() / k - rows.len();
        self.rows += rows.len() as u64;
        let mut batch: Vec<f32> = Vec::with_capacity(ROWS_PER_GEMM.min(rows.len()) * k);
        for group in rows.chunks(ROWS_PER_GEMM) {
            batch.clear();
            for r in group {
                batch.extend_from_slice(r);
            }
            self.add_gram(&batch, group.len());
        }
        bad
    }

    /// `sum += Rᵀ·R` (upper triangle) for the `nr` rows `r`.
    fn add_gram(&mut self, r: &[f32], nr: usize) {
        let k = self.k;
        self.sum
            .par_chunks_mut(H_ROWS_PER_TASK * k)
            .enumerate()
            .for_each(|(b, hblock)| {
                let i0 = b * H_ROWS_PER_TASK;
                let m = hblock.len() / k;
                // Rows i0..i0+m of Rᵀ·R, columns i0..k (the upper triangle and the
                // small square below it, which `finish` ignores).
                let cols = k - i0;
                let mut c = vec![0f32; m * cols];
                // SAFETY: A = Rᵀ[i0..i0+m, :] is read through r (k·nr values, strides
                // 1 and k stay inside it for rows < m ≤ k - i0); B = R[:, i0..k] reads
                // r with row stride k; C is the m×cols buffer above, row-major.
                unsafe {
                    matrixmultiply::sgemm(
                        m,
                        nr,
                        cols,
                        1.0,
                        r.as_ptr().add(i0),
                        1,
                        k as isize,
                        r.as_ptr().add(i0),
                        k as isize,
                        1,
                        0.0,
                        c.as_mut_ptr(),
                        cols as isize,
                        1,
                    );
                }
                for (ii, (hrow, crow)) in hblock.chunks_mut(k).zip(c.chunks(cols)).enumerate() {
                    for (h, &v) in hrow[i0 + ii..].iter_mut().zip(&crow[ii..]) {
                        *h += v as f64;
                    }
                }
            });
    }

    /// The symmetric K×K matrix `XᵀX / rows` (zeros when nothing was seen).
    pub fn finish(mut self) -> Vec<f64> {
        let k = self.k;
        let scale = if self.rows > 0 {
            1.0 / self.rows as f64
        } else {
            0.0
        };
        for i in 0..k {
            for j in i..k {
                let v = self.sum[i * k + j] * scale;
                self.sum[i * k + j] = v;
                self.sum[j * k + i] = v;
            }
        }
        self.sum
    }
}

struct HessianObserver<'a> {
    k_of: &'a BTreeMap<String, usize>,
    weighting: TokenWeighting,
    acc: BTreeMap<String, Hessian>,
    mismatch: Option<Error>,
    done: &'a mut dyn FnMut(Vec<(String, Hessian)>) -> Result<Vec<Tensor>>,
    /// What `done` returned for the last piece.
    solved: Vec<Tensor>,
}

impl Observer for HessianObserver<'_> {
    fn observe(&mut self, name: &str, values: &[f32], shape: &[usize]) {
        let Some(&k) = self.k_of.get(name) else {
            return;
        };
        if shape.last() != Some(&k) {
            self.mismatch.get_or_insert_with(|| {
                Error::tensor(
                    name,
                    format!("calibration gave shape {shape:?}, expected last dim {k}"),
                )
            });
            return;
        }
        let weighted = self.weighting.apply(values, shape, k);
        self.acc
            .entry(name.to_string())
            .or_insert_with(|| Hessian::new(k))
            .add(weighted.as_deref().unwrap_or(values));
    }

    fn piece_done(&mut self, completed: &[String]) -> Result<()> {
        if let Some(e) = self.mismatch.take() {
            return Err(e);
        }
        let finished = completed
            .iter()
            .map(|name| {
                let h = self
                    .acc
                    .remove(name)
                    .unwrap_or_else(|| Hessian::new(self.k_of[name]));
                (name.clone(), h)
            })
            .collect();
        self.solved = (self.done)(finished)?;
        Ok(())
    }

    fn replacements(&mut self) -> Vec<Tensor> {
        std::mem::take(&mut self.solved)
    }
}

/// `XᵀX / rows` (rows weighted by `weighting`) of each value in `k_of` (name → row
/// length K) over the samples,
/// calibrated piece by piece within `budget` bytes (see [`capture`]): after each
/// piece, `done` receives the finished matrices of the values it completed (values
/// never observed come with 0 rows), so at most one piece's Hessians are held.
/// `stages` (observed value → layer) cuts the model between layers, and the weights
/// `done` returns replace the initializers of their names for the pieces after it.
/// Returns what the capture did.
#[allow(clippy::too_many_arguments)]
pub fn hessians(
    model: &Model,
    k_of: &BTreeMap<String, usize>,
    weighting: TokenWeighting,
    budget: u64,
    stages: BTreeMap<String, usize>,
    count: usize,
    feeds: &mut dyn FnMut(usize) -> Result<NamedTensors>,
    runtime: &dyn Runtime,
    progress: &indicatif::ProgressBar,
    done: &mut dyn FnMut(Vec<(String, Hessian)>) -> Result<Vec<Tensor>>,
) -> Result<Captured> {
    let plan = Plan {
        observed: k_of
            .iter()
            .map(|(n, &k)| (n.clone(), (k * k * 8) as u64))
            .collect(),
        budget,
        stages,
    };
    let mut observer = HessianObserver {
        k_of,
        weighting,
        acc: BTreeMap::new(),
        mismatch: None,
        done,
        solved: Vec::new(),
    };
    capture(model, &plan, count, feeds, runtime, progress, &mut observer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_weighting_normalizes_rows_and_weights_the_sink() {
        // Two sequences of 3 tokens, k = 2: rows of norm 5, 1, 10 and 2, 3, 4.
        let x = [3.0, 4.0, 1.0, 0.0, 6.0, 8.0, 0.0, 2.0, 3.0, 0.0, 0.0, 4.0];
        let shape = [2, 3, 2];
        assert!(TokenWeighting::Energy.apply(&x, &shape, 2).is_none());
        let norms = |v: Vec<f32>| -> Vec<f32> {
            v.chunks(2)
                .map(|r| (r[0] * r[0] + r[1] * r[1]).sqrt())
                .collect()
        };
        let eq = norms(TokenWeighting::Equal.apply(&x, &shape, 2).unwrap());
        assert!(eq.iter().all(|n| (n - 1.0).abs() < 1e-6), "{eq:?}");
        let sink = norms(TokenWeighting::Sink.apply(&x, &shape, 2).unwrap());
        // Position 0 of each sequence carries the weight of the other two: norm √2.
        let want = [2f32.sqrt(), 1.0, 1.0, 2f32.sqrt(), 1.0, 1.0];
        assert!(
            sink.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6),
            "{sink:?}"
        );
    }

    #[test]
    fn blocked_gemm_matches_the_naive_sum() {
        // K not a multiple of the task rows, more rows than one GEMM batch.
        let (k, rows) = (70, 1100);
        let mut s = 7u32;
        let x: Vec<f32> = (0..k * rows)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect();
        let mut h = Hessian::new(k);
        h.add(&x[..k * 3]);
        h.add(&x[k * 3..]);
        let m = h.finish();
        for i in 0..k {
            for j in 0..k {
                let want: f64 =
                    x.chunks(k).map(|r| r[i] as f64 * r[j] as f64).sum::<f64>() / rows as f64;
                assert!((m[i * k + j] - want).abs() < 1e-6, "({i},{j})");
            }
        }
    }

    #[test]
    fn accumulates_the_mean_outer_product() {
        let mut h = Hessian::new(2);
        h.add(&[1.0, 2.0, 3.0, 4.0]);
        h.add(&[f32::NAN, 0.0]);
        h.add(&[0.0, 1.0]);
        assert_eq!(h.rows, 3);
        let m = h.finish();
        let want = [10.0 / 3.0, 14.0 / 3.0, 14.0 / 3.0, 21.0 / 3.0];
        for (a, b) in m.iter().zip(want) {
            assert!((a - b).abs() < 1e-12, "{m:?}");
        }
    }
}
