//! Mixed precision under a size budget: the byte cost of each weight setting as
//! stored, the allocation of settings to layers that minimises the total predicted
//! error within a byte budget, and the variance prior of arXiv 2411.06084.
//!
//! Contracts:
//! - [`nbits_bytes`] is exactly what `MatMulNBits` stores for a [K, N] weight: packed
//!   codes [N, ceil(K/block), block·bits/8], scales [N, ceil(K/block)] in the weight's
//!   float type, and (asymmetric) packed zero points [N, ceil(ceil(K/block)·bits/8)].
//! - [`allocate`] takes, per layer, its options as (bytes, error) and returns one
//!   option per layer whose bytes sum to at most the budget, or an error naming the
//!   smallest possible total when even the cheapest options do not fit.
use super::pack::packed_len;
use super::QuantError;

/// Bytes MatMulNBits (and GatherBlockQuantized) store for a [K, N] weight.
pub fn nbits_bytes(
    k: usize,
    n: usize,
    bits: u8,
    block_size: usize,
    symmetric: bool,
    scale_bytes: usize,
) -> u64 {
    let kb = k.div_ceil(block_size);
    let codes = n * kb * (block_size * bits as usize / 8);
    let scales = n * kb * scale_bytes;
    let zero_points = if symmetric {
        0
    } else {
        n * packed_len(kb, bits)
    };
    (codes + scales + zero_points) as u64
}

/// One option of one layer: what it costs on disk and the error it is predicted to add.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Candidate {
    pub bytes: u64,
    pub error: f64,
}

/// The option index per layer minimising Σ error subject to Σ bytes ≤ `budget`.
///
/// Greedy on the lower convex hull of each layer's (bytes, error) points: every layer
/// starts at its cheapest option, then hull steps are taken in order of error removed
/// per byte while they fit (the Lagrangian solution of the knapsack, optimal at the
/// hull's corners). Leftover bytes then go to any single upgrade that still fits and
/// lowers the error most. Ties break on layer order, so the result is deterministic.
pub fn allocate(layers: &[Vec<Candidate>], budget: u64) -> Result<Vec<usize>, QuantError> {
    let mut choice = Vec::with_capacity(layers.len());
    let mut spent = 0u64;
    for (i, opts) in layers.iter().enumerate() {
        let cheapest = (0..opts.len())
            .min_by(|&a, &b| {
                (opts[a].bytes, opts[a].error)
                    .partial_cmp(&(opts[b].bytes, opts[b].error))
                    .unwrap_or(std::cmp::Ordering::Equal)
            })
            .ok_or_else(|| QuantError(format!("layer {i} has no option")))?;
        spent += opts[cheapest].bytes;
        choice.push(cheapest);
    }
    if spent > budget {
        return Err(QuantError(format!(
            "the budget of {budget} bytes is below the smallest possible size, {spent} bytes \
             (every layer at its cheapest setting)"
        )));
    }
    // Hull steps of every layer: (slope, layer, from, to).
    let mut steps: Vec<(f64, usize, usize, usize)> = Vec::new();
    for (i, opts) in layers.iter().enumerate() {
        let hull = lower_hull(opts);
        for w in hull.windows(2) {
            let (a, b) = (opts[w[0]], opts[w[1]]);
            let slope = (a.error - b.error) / (b.bytes - a.bytes) as f64;
            steps.push((slope, i, w[0], w[1]));
        }
    }
    // Steepest first; within a layer slopes fall along the hull, so its steps keep
    // their order.
    steps.sort_by(|a, b| {
        b.0.partial_cmp(&a.0)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.1.cmp(&b.1))
            .then(a.2.cmp(&b.2))
    });
    let mut blocked = vec![false; layers.len()];
    for (_, i, from, to) in steps {
        if blocked[i] || choice[i] != from {
            continue;
        }
        let extra = layers[i][to].bytes - layers[i][from].bytes;
        if spent + extra <= budget {
            spent += extra;
            choice[i] = to;
        } else {
            // A later (flatter) step of this layer must not jump over this one.
            blocked[i] = true;
        }
    }
    // Fill what is left with the best single upgrades that fit.
    loop {
        let mut best: Option<(f64, usize, usize)> = None;
        for (i, opts) in layers.iter().enumerate() {
            let cur = opts[choice[i]];
            for (j, o) in opts.iter().enumerate() {
                if o.error < cur.error && spent - cur.bytes + o.bytes <= budget {
                    let gain = cur.error - o.error;
                    if best.is_none_or(|(g, _, _)| gain > g) {
                        best = Some((gain, i, j));
                    }
                }
            }
        }
        let Some((_, i, j)) = best else { break };
        spent = spent - layers[i][choice[i]].bytes + layers[i][j].bytes;
        choice[i] = j;
    }
    Ok(choice)
}

/// Indices of the lower convex hull of (bytes, error), by increasing bytes, from the
/// cheapest point to the lowest error; dominated points are left out.
fn lower_hull(opts: &[Candidate]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..opts.len()).collect();
    idx.sort_by(|&a, &b| {
        (opts[a].bytes, opts[a].error)
            .partial_cmp(&(opts[b].bytes, opts[b].error))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    // Pareto front: strictly falling error as bytes grow.
    let mut front: Vec<usize> = Vec::new();
    for i in idx {
        if front.last().is_none_or(|&l| opts[i].error < opts[l].error) {
            if front
                .last()
                .is_some_and(|&l| opts[l].bytes == opts[i].bytes)
            {
                front.pop();
            }
            front.push(i);
        }
    }
    let mut hull: Vec<usize> = Vec::new();
    for i in front {
        while hull.len() >= 2 {
            let (a, b) = (opts[hull[hull.len() - 2]], opts[hull[hull.len() - 1]]);
            let c = opts[i];
            // b is above the segment a→c: not on the lower hull.
            let cross = (b.bytes as f64 - a.bytes as f64) * (c.error - a.error)
                - (b.error - a.error) * (c.bytes as f64 - a.bytes as f64);
            if cross <= 0.0 {
                hull.pop();
            } else {
                break;
            }
        }
        hull.push(i);
    }
    hull
}

/// Population variance of a weight's values.
pub fn variance(w: &[f32]) -> f64 {
    if w.is_empty() {
        return 0.0;
    }
    let n = w.len() as f64;
    let mean = w.iter().map(|&v| v as f64).sum::<f64>() / n;
    w.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n
}

/// The bit width arXiv 2411.06084 predicts for a layer of weight variance `var`:
/// b* = ½·log2(α·σ²/λ), with `alpha_over_lambda` = α/λ. Only differences between
/// layers matter for ranking, so any positive α/λ ranks layers the same.
pub fn prior_bits(var: f64, alpha_over_lambda: f64) -> f64 {
    0.5 * (alpha_over_lambda * var).max(f64::MIN_POSITIVE).log2()
}

/// Spearman's rank correlation of `a` and `b` (average ranks for ties); 0 when
/// either has no spread or fewer than two points.
pub fn spearman(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len());
    if n < 2 {
        return 0.0;
    }
    let (ra, rb) = (ranks(&a[..n]), ranks(&b[..n]));
    let mean = (n as f64 - 1.0) / 2.0;
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for i in 0..n {
        let (x, y) = (ra[i] - mean, rb[i] - mean);
        sab += x * y;
        saa += x * x;
        sbb += y * y;
    }
    if saa == 0.0 || sbb == 0.0 {
        0.0
    } else {
        sab / (saa * sbb).sqrt()
    }
}

fn ranks(v: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[a].partial_cmp(&v[b]).unwrap_or(std::cmp::Ordering::Equal));
    let mut r = vec![0.0; v.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0;
        for &t in &idx[i..=j] {
            r[t] = avg;
        }
        i = j + 1;
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::nbits::{quantize_kn, QuantParams};

    #[test]
    fn bytes_match_the_quantizer() {
        let (k, n) = (200, 12);
        let w: Vec<f32> = (0..k * n)
            .map(|i| ((i * 7919) % 97) as f32 - 48.0)
            .collect();
        for bits in [2u8, 4, 8] {
            for block in [16usize, 32, 64, 128, 256] {
                for sym in [true, false] {
                    let q = quantize_kn(&w, k, n, &QuantParams::new(bits, block, sym).unwrap())
                        .unwrap();
                    let stored = q.packed.len()
                        + q.scales.len() * 4
                        + q.zero_points.as_ref().map_or(0, Vec::len);
                    assert_eq!(
                        nbits_bytes(k, n, bits, block, sym, 4),
                        stored as u64,
                        "{bits} {block} {sym}"
                    );
                }
            }
        }
    }

    fn o(bytes: u64, error: f64) -> Candidate {
        Candidate { bytes, error }
    }

    /// Every assignment, for a brute-force check.
    fn best_by_search(layers: &[Vec<Candidate>], budget: u64) -> f64 {
        let mut best = f64::INFINITY;
        let mut idx = vec![0usize; layers.len()];
        loop {
            let bytes: u64 = idx.iter().zip(layers).map(|(&j, l)| l[j].bytes).sum();
            if bytes <= budget {
                best = best.min(idx.iter().zip(layers).map(|(&j, l)| l[j].error).sum());
            }
            let mut i = 0;
            loop {
                if i == layers.len() {
                    return best;
                }
                idx[i] += 1;
                if idx[i] < layers[i].len() {
                    break;
                }
                idx[i] = 0;
                i += 1;
            }
        }
    }

    #[test]
    fn allocation_fits_and_is_near_the_optimum() {
        let mut s = 7u64;
        let mut rnd = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 33) as f64 / (1u64 << 31) as f64
        };
        for _ in 0..200 {
            let layers: Vec<Vec<Candidate>> = (0..4)
                .map(|_| {
                    let size = 10.0 + 90.0 * rnd();
                    let sens = rnd() * 10.0;
                    [2.0, 4.0, 8.0, 32.0]
                        .iter()
                        .map(|&b: &f64| {
                            o(
                                (size * (b + 0.5 * rnd())) as u64,
                                if b == 32.0 { 0.0 } else { sens * 4f64.powf(-b) },
                            )
                        })
                        .collect()
                })
                .collect();
            let min: u64 = layers
                .iter()
                .map(|l| l.iter().map(|o| o.bytes).min().unwrap())
                .sum();
            let budget = min + (rnd() * 2000.0) as u64;
            let c = allocate(&layers, budget).unwrap();
            let bytes: u64 = c.iter().zip(&layers).map(|(&j, l)| l[j].bytes).sum();
            assert!(bytes <= budget);
            let err: f64 = c.iter().zip(&layers).map(|(&j, l)| l[j].error).sum();
            let opt = best_by_search(&layers, budget);
            // Greedy on the hull is optimal at its corners; in between it may be off
            // by at most one layer's step. Here: never worse than 3x + a small slack.
            assert!(err <= opt * 3.0 + 1e-9, "{err} vs optimum {opt}");
        }
    }

    #[test]
    fn more_budget_never_more_error() {
        let layers = vec![
            vec![o(10, 5.0), o(20, 1.0), o(40, 0.1), o(80, 0.0)],
            vec![o(5, 9.0), o(10, 2.0), o(20, 0.5), o(40, 0.0)],
            vec![o(30, 1.0), o(60, 0.2), o(120, 0.0)],
        ];
        let mut last = f64::INFINITY;
        for budget in 45..250 {
            let c = allocate(&layers, budget).unwrap();
            let err: f64 = c.iter().zip(&layers).map(|(&j, l)| l[j].error).sum();
            assert!(err <= last + 1e-12, "budget {budget}: {err} > {last}");
            last = err;
        }
        assert!(allocate(&layers, 44).is_err());
    }

    #[test]
    fn spearman_ranks() {
        assert!((spearman(&[1.0, 2.0, 3.0], &[10.0, 20.0, 30.0]) - 1.0).abs() < 1e-12);
        assert!((spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        assert_eq!(spearman(&[1.0, 1.0], &[1.0, 2.0]), 0.0);
        assert!(prior_bits(4.0, 1.0) > prior_bits(1.0, 1.0));
    }
}
