//! Error metrics between a reference and a candidate output.
use serde::Serialize;

use super::HostTensor;

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct OutputMetrics {
    pub name: String,
    pub max_abs: f64,
    pub mean_abs: f64,
    /// ‖a − b‖ / ‖a‖.
    pub rel_l2: f64,
    pub cosine: f64,
    /// 10·log10(‖a‖² / ‖a − b‖²); infinite for identical outputs.
    pub snr_db: f64,
    /// For logits-like outputs (last dim > 1): share of rows whose argmax agrees.
    pub top1: Option<f64>,
}

/// Running sums over samples, so memory does not grow with their number.
#[derive(Default, Debug)]
pub struct Accumulator {
    n: u64,
    max_abs: f64,
    sum_abs: f64,
    ref_sq: f64,
    err_sq: f64,
    cand_sq: f64,
    dot: f64,
    rows: u64,
    agree: u64,
    logits: bool,
}

impl Accumulator {
    pub fn add(&mut self, a: &HostTensor, b: &HostTensor) {
        self.add_values(a, b, a.name.to_ascii_lowercase().contains("logits"));
    }

    /// Adds a pair of outputs; `logits` turns on top-1 agreement over the last axis.
    pub fn add_values(&mut self, a: &HostTensor, b: &HostTensor, logits: bool) {
        let (x, y) = (&a.values, &b.values);
        for (&p, &q) in x.iter().zip(y.iter()) {
            let (p, q) = (p as f64, q as f64);
            let d = (p - q).abs();
            self.max_abs = self.max_abs.max(if d.is_nan() { f64::INFINITY } else { d });
            self.sum_abs += d;
            self.ref_sq += p * p;
            self.cand_sq += q * q;
            self.err_sq += d * d;
            self.dot += p * q;
            self.n += 1;
        }
        let last = a.shape.last().copied().unwrap_or(1);
        if logits && a.shape.len() >= 2 && last > 1 && a.is_float {
            self.logits = true;
            for (ra, rb) in x.chunks(last).zip(y.chunks(last)) {
                self.rows += 1;
                if argmax(ra) == argmax(rb) {
                    self.agree += 1;
                }
            }
        }
    }

    pub fn finish(&self, name: &str) -> OutputMetrics {
        let n = self.n.max(1) as f64;
        let rel = if self.ref_sq > 0.0 {
            (self.err_sq / self.ref_sq).sqrt()
        } else if self.err_sq == 0.0 {
            0.0
        } else {
            f64::INFINITY
        };
        let denom = (self.ref_sq * self.cand_sq).sqrt();
        OutputMetrics {
            name: name.to_string(),
            max_abs: self.max_abs,
            mean_abs: self.sum_abs / n,
            rel_l2: rel,
            cosine: if denom > 0.0 { self.dot / denom } else { 1.0 },
            snr_db: if self.err_sq == 0.0 {
                f64::INFINITY
            } else {
                10.0 * (self.ref_sq / self.err_sq).log10()
            },
            top1: self
                .logits
                .then(|| self.agree as f64 / self.rows.max(1) as f64),
        }
    }
}

fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(values: Vec<f32>, shape: Vec<usize>) -> HostTensor {
        HostTensor {
            name: "y".into(),
            shape,
            values,
            is_float: true,
        }
    }

    #[test]
    fn identical_outputs_have_zero_error() {
        let mut a = Accumulator::default();
        a.add(
            &t(vec![1.0, 2.0, 3.0, 4.0], vec![2, 2]),
            &t(vec![1.0, 2.0, 3.0, 4.0], vec![2, 2]),
        );
        let m = a.finish("y");
        assert_eq!((m.max_abs, m.rel_l2, m.cosine), (0.0, 0.0, 1.0));
        assert!(m.snr_db.is_infinite());
        assert_eq!(m.top1, Some(1.0));
    }

    #[test]
    fn known_perturbation_gives_known_error() {
        // a = [3, 4] (norm 5), b = a + [0, 0.5]: rel L2 = 0.1, SNR = 20 dB.
        let mut a = Accumulator::default();
        a.add(&t(vec![3.0, 4.0], vec![2]), &t(vec![3.0, 4.5], vec![2]));
        let m = a.finish("y");
        assert!((m.rel_l2 - 0.1).abs() < 1e-9);
        assert!((m.snr_db - 20.0).abs() < 1e-9);
        assert!((m.max_abs - 0.5).abs() < 1e-9);
        assert!((m.mean_abs - 0.25).abs() < 1e-9);
    }
}
