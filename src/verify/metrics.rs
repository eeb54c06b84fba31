//! Error metrics between a reference and a candidate output, accumulated over
//! samples in running sums so memory does not grow with their number.
use serde::Serialize;

use crate::error::{Error, Result};
use crate::ir::DType;
use crate::runtime::HostTensor;

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct OutputMetrics {
    pub name: String,
    /// Element type of the reference output.
    pub dtype: String,
    /// Shape of the reference output (last sample).
    pub shape: Vec<usize>,
    /// Elements compared, over all samples.
    pub elements: u64,
    pub max_abs: f64,
    pub mean_abs: f64,
    /// ‖a − b‖ / ‖a‖ (0 when both are zero, infinite when only a is).
    pub rel_l2: f64,
    /// a·b / (‖a‖‖b‖); 1 when both are zero, 0 when only one is.
    pub cosine: f64,
    /// 10·log10(‖a‖² / ‖a − b‖²); infinite (JSON null) for identical outputs.
    pub snr_db: f64,
    /// Logits-like outputs (float, last dim > 1, named *logits* or 3-D): share of
    /// rows whose argmax agrees.
    pub top1: Option<f64>,
    /// Integer, bool and string outputs: share of elements exactly equal.
    pub exact_match: Option<f64>,
}

impl OutputMetrics {
    pub fn is_float(&self) -> bool {
        self.exact_match.is_none()
    }
}

/// Whether top-1 agreement applies to an output.
pub fn is_logits(name: &str, t: &HostTensor) -> bool {
    t.is_float()
        && t.shape.len() >= 2
        && t.shape.last().is_some_and(|&d| d > 1)
        && (name.to_ascii_lowercase().contains("logits") || t.shape.len() == 3)
}

#[derive(Default, Debug)]
pub struct Accumulator {
    dtype: Option<DType>,
    shape: Vec<usize>,
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
    exact: Option<u64>,
}

impl Accumulator {
    /// Adds one sample's pair of values of output `name`.
    pub fn add(&mut self, name: &str, a: &HostTensor, b: &HostTensor) -> Result<()> {
        if a.shape != b.shape {
            return Err(Error::invalid(format!(
                "output '{name}': the reference gives shape {:?}, the candidate {:?}",
                a.shape, b.shape
            )));
        }
        self.dtype = Some(a.dtype);
        self.shape = a.shape.clone();
        if a.dtype == DType::String || b.dtype == DType::String {
            if a.dtype != b.dtype {
                return Err(Error::invalid(format!(
                    "output '{name}': the reference gives {}, the candidate {}",
                    a.dtype, b.dtype
                )));
            }
            let same = a
                .strings
                .iter()
                .zip(&b.strings)
                .filter(|(x, y)| x == y)
                .count();
            *self.exact.get_or_insert(0) += same as u64;
            let diff = (a.strings.len() - same) as f64;
            self.n += a.strings.len() as u64;
            self.sum_abs += diff;
            self.err_sq += diff;
            self.ref_sq += a.strings.len() as f64;
            self.cand_sq += a.strings.len() as f64;
            self.dot += same as f64;
            if diff > 0.0 {
                self.max_abs = f64::INFINITY;
            }
            return Ok(());
        }
        let x = a
            .to_f64_vec()
            .map_err(|e| Error::invalid(format!("output '{name}': {e}")))?;
        let y = b
            .to_f64_vec()
            .map_err(|e| Error::invalid(format!("output '{name}': {e}")))?;
        let integer = a.is_integer() && b.is_integer();
        let mut same = 0u64;
        for (&p, &q) in x.iter().zip(&y) {
            // Equal values (infinities included) and NaN against NaN count as exact.
            let d = if p == q || (p.is_nan() && q.is_nan()) {
                same += 1;
                0.0
            } else if p.is_nan() || q.is_nan() {
                f64::INFINITY
            } else {
                (p - q).abs()
            };
            self.max_abs = self.max_abs.max(d);
            self.sum_abs += d;
            if p.is_finite() && q.is_finite() {
                self.ref_sq += p * p;
                self.cand_sq += q * q;
                self.dot += p * q;
            }
            self.err_sq += d * d;
        }
        self.n += x.len() as u64;
        if integer {
            *self.exact.get_or_insert(0) += same;
        }
        if is_logits(name, a) {
            self.logits = true;
            let last = a.shape[a.shape.len() - 1];
            for (ra, rb) in x.chunks(last).zip(y.chunks(last)) {
                self.rows += 1;
                if argmax(ra) == argmax(rb) {
                    self.agree += 1;
                }
            }
        }
        Ok(())
    }

    pub fn finish(&self, name: &str) -> OutputMetrics {
        let n = self.n.max(1) as f64;
        let rel_l2 = if self.err_sq == 0.0 {
            0.0
        } else if self.ref_sq > 0.0 {
            (self.err_sq / self.ref_sq).sqrt()
        } else {
            f64::INFINITY
        };
        let cosine = match (self.ref_sq > 0.0, self.cand_sq > 0.0) {
            (true, true) => (self.dot / (self.ref_sq * self.cand_sq).sqrt()).clamp(-1.0, 1.0),
            (false, false) => 1.0,
            _ => 0.0,
        };
        OutputMetrics {
            name: name.to_string(),
            dtype: self.dtype.map_or("?".into(), |d| d.to_string()),
            shape: self.shape.clone(),
            elements: self.n,
            max_abs: self.max_abs,
            mean_abs: self.sum_abs / n,
            rel_l2,
            cosine,
            snr_db: if self.err_sq == 0.0 {
                f64::INFINITY
            } else {
                10.0 * (self.ref_sq / self.err_sq).log10()
            },
            top1: self
                .logits
                .then(|| self.agree as f64 / self.rows.max(1) as f64),
            exact_match: self.exact.map(|e| e as f64 / n),
        }
    }
}

fn argmax(v: &[f64]) -> usize {
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

    fn f(values: &[f32], shape: Vec<usize>) -> HostTensor {
        HostTensor::from_f32(shape, values).unwrap()
    }

    #[test]
    fn identical_outputs_have_zero_error() {
        let mut a = Accumulator::default();
        let t = f(&[1.0, 2.0, 3.0, 4.0], vec![2, 2]);
        a.add("logits", &t, &t).unwrap();
        let m = a.finish("logits");
        assert_eq!((m.max_abs, m.rel_l2, m.cosine), (0.0, 0.0, 1.0));
        assert!(m.snr_db.is_infinite());
        assert_eq!(m.top1, Some(1.0));
        assert_eq!(m.exact_match, None);
    }

    #[test]
    fn known_perturbation_gives_known_error() {
        // a = [3, 4] (norm 5), b = a + [0, 0.5]: rel L2 = 0.1, SNR = 20 dB.
        let mut a = Accumulator::default();
        a.add("y", &f(&[3.0, 4.0], vec![2]), &f(&[3.0, 4.5], vec![2]))
            .unwrap();
        let m = a.finish("y");
        assert!((m.rel_l2 - 0.1).abs() < 1e-9);
        assert!((m.snr_db - 20.0).abs() < 1e-9);
        assert!((m.max_abs - 0.5).abs() < 1e-9);
        assert!((m.mean_abs - 0.25).abs() < 1e-9);
        let cos = (9.0 + 18.0) / (5.0 * (9.0f64 + 20.25).sqrt());
        assert!((m.cosine - cos).abs() < 1e-12);
    }

    #[test]
    fn integer_outputs_report_exact_matches_and_top1_counts_rows() {
        let mut a = Accumulator::default();
        let x = HostTensor::from_i64(vec![4], &[1, 2, 3, 4]).unwrap();
        let y = HostTensor::from_i64(vec![4], &[1, 2, 3, 5]).unwrap();
        a.add("ids", &x, &y).unwrap();
        assert_eq!(a.finish("ids").exact_match, Some(0.75));

        let mut l = Accumulator::default();
        // Row 0 argmax 1 vs 1; row 1 argmax 0 vs 1.
        l.add(
            "logits",
            &f(&[0.0, 1.0, 1.0, 0.0], vec![1, 2, 2]),
            &f(&[0.0, 1.0, 0.0, 1.0], vec![1, 2, 2]),
        )
        .unwrap();
        assert_eq!(l.finish("logits").top1, Some(0.5));
        let e = l
            .add("logits", &f(&[0.0; 4], vec![4]), &f(&[0.0; 4], vec![2, 2]))
            .unwrap_err();
        assert!(e.to_string().contains("'logits'"));
    }

    #[test]
    fn nan_in_the_candidate_only_is_an_infinite_error() {
        let mut a = Accumulator::default();
        a.add(
            "y",
            &f(&[1.0, f32::NAN], vec![2]),
            &f(&[1.0, f32::NAN], vec![2]),
        )
        .unwrap();
        assert_eq!(a.finish("y").max_abs, 0.0);
        a.add("y", &f(&[1.0, 2.0], vec![2]), &f(&[1.0, f32::NAN], vec![2]))
            .unwrap();
        assert!(a.finish("y").max_abs.is_infinite());
    }
}
