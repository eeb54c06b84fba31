//! Second moments of MatMul inputs for GPTQ: `H = XᵀX / rows` per observed value,
//! accumulated sample by sample (activations are dropped after each sample, so
//! memory is one K×K matrix per value, not samples × sequence length).
//!
//! [`capture`] is the calibration loop: the values to observe become extra outputs of
//! one session on a temporary copy of the model, which runs once per sample.
//! A model too large to hold every layer's H at once would run this per chunk of
//! layers; not done yet.
use std::collections::{BTreeMap, BTreeSet};

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::ir::Model;
use crate::runtime::{NamedTensors, Runtime};

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
        let xs: Vec<f64> = rows
            .iter()
            .flat_map(|r| r.iter().map(|&v| v as f64))
            .collect();
        let nr = rows.len();
        // Tasks own blocks of H rows; each reads every activation row once per block
        // (not once per H row), and the block's H rows stay in cache.
        const ROWS_PER_TASK: usize = 32;
        self.sum
            .par_chunks_mut(ROWS_PER_TASK * k)
            .enumerate()
            .for_each(|(b, hblock)| {
                let i0 = b * ROWS_PER_TASK;
                for xr in xs.chunks_exact(k) {
                    for (ii, hrow) in hblock.chunks_mut(k).enumerate() {
                        let i = i0 + ii;
                        let xi = xr[i];
                        if xi != 0.0 {
                            for (h, &xj) in hrow[i..].iter_mut().zip(&xr[i..]) {
                                *h += xi * xj;
                            }
                        }
                    }
                }
            });
        self.rows += nr as u64;
        bad
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

/// Receives each observed tensor: (name, values, shape).
pub type Visit<'a> = dyn FnMut(&str, &[f32], &[usize]) + 'a;

/// Runs `model` on `count` samples (`feeds(i)` builds sample `i`) with the main-graph
/// values `names` exposed, handing each observed float tensor to `visit(name,
/// values, shape)`. Values that are graph inputs are observed from the feeds.
pub fn capture(
    model: &Model,
    names: &BTreeSet<String>,
    count: usize,
    feeds: &mut dyn FnMut(usize) -> Result<NamedTensors>,
    runtime: &dyn Runtime,
    progress: &indicatif::ProgressBar,
    visit: &mut Visit,
) -> Result<()> {
    let g = &model.graph;
    let inputs: BTreeSet<String> = g.input_specs().into_iter().map(|s| s.name).collect();
    let mut extra = Vec::new();
    for name in names {
        let v = g.find(name).ok_or_else(|| {
            Error::tensor(
                name,
                "is not a value of the main graph; it cannot be observed",
            )
        })?;
        if !inputs.contains(name) && !g.is_graph_output(v) {
            extra.push(name.clone());
        }
    }
    if count == 0 {
        return Err(Error::invalid("the calibration set is empty"));
    }
    let first = feeds(0)?;
    let mut session = crate::runtime::open_model(runtime, model, &extra)?;
    progress.set_length(count as u64);
    let mut next = Some(first);
    for i in 0..count {
        let f = match next.take() {
            Some(f) => f,
            None => feeds(i)?,
        };
        let outputs = session.run(&f).map_err(|e| {
            Error::invalid(format!(
                "calibration sample #{} does not run on {}: {e}",
                i + 1,
                runtime.name()
            ))
        })?;
        for (name, t) in f.iter().chain(outputs.iter()) {
            if names.contains(name) && t.is_float() {
                let v = t.to_f32_vec()?;
                visit(name, &v, &t.shape);
            }
        }
        progress.inc(1);
    }
    Ok(())
}

/// `XᵀX / rows` of each value in `k_of` (name → row length K) over the samples.
pub fn hessians(
    model: &Model,
    k_of: &BTreeMap<String, usize>,
    count: usize,
    feeds: &mut dyn FnMut(usize) -> Result<NamedTensors>,
    runtime: &dyn Runtime,
    progress: &indicatif::ProgressBar,
) -> Result<BTreeMap<String, Hessian>> {
    let mut acc: BTreeMap<String, Hessian> = k_of
        .iter()
        .map(|(n, &k)| (n.clone(), Hessian::new(k)))
        .collect();
    let names: BTreeSet<String> = k_of.keys().cloned().collect();
    let mut mismatch: Option<Error> = None;
    capture(
        model,
        &names,
        count,
        feeds,
        runtime,
        progress,
        &mut |name, values, shape| {
            let Some(h) = acc.get_mut(name) else { return };
            if shape.last() != Some(&h.k) {
                mismatch.get_or_insert_with(|| {
                    Error::tensor(
                        name,
                        format!(
                            "calibration gave shape {shape:?}, expected last dim {}",
                            h.k
                        ),
                    )
                });
                return;
            }
            h.add(values);
        },
    )?;
    if let Some(e) = mismatch {
        return Err(e);
    }
    Ok(acc)
}

#[cfg(test)]
mod tests {
    use super::*;

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
