//! Thresholds that gate a build on a comparison, and the human-readable table.
use std::fmt;

use serde::Serialize;

use super::{OutputMetrics, Report};

/// Limits on the metrics of every output; unset limits are not checked.
/// max-abs applies to every output; rel-L2, cosine and SNR to float outputs;
/// top-1 to logits; exact-match to integer/bool/string outputs.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Thresholds {
    pub max_abs: Option<f64>,
    pub max_rel_l2: Option<f64>,
    pub min_cosine: Option<f64>,
    pub min_snr_db: Option<f64>,
    pub min_top1: Option<f64>,
    pub min_exact_match: Option<f64>,
}

/// One output breaking one limit.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Violation {
    pub output: String,
    pub metric: &'static str,
    pub value: f64,
    pub limit: f64,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (cmp, bound) = if self.metric.starts_with("max") || self.metric == "rel-l2" {
            (">", "max")
        } else {
            ("<", "min")
        };
        write!(
            f,
            "output '{}': {} {} {cmp} {bound} {}",
            self.output,
            self.metric,
            fmt_num(self.value),
            fmt_num(self.limit)
        )
    }
}

impl Thresholds {
    pub fn is_empty(&self) -> bool {
        *self == Thresholds::default()
    }

    /// Every limit some output breaks (NaN metrics break every limit they meet).
    pub fn check(&self, report: &Report) -> Vec<Violation> {
        let mut out = Vec::new();
        for m in &report.outputs {
            let mut over = |metric: &'static str, value: f64, limit: Option<f64>| {
                if let Some(limit) = limit {
                    if value.is_nan() || value > limit {
                        out.push(Violation {
                            output: m.name.clone(),
                            metric,
                            value,
                            limit,
                        });
                    }
                }
            };
            over("max-abs", m.max_abs, self.max_abs);
            if m.is_float() {
                over("rel-l2", m.rel_l2, self.max_rel_l2);
            }
            let mut under = |metric: &'static str, value: Option<f64>, limit: Option<f64>| {
                if let (Some(value), Some(limit)) = (value, limit) {
                    if value.is_nan() || value < limit {
                        out.push(Violation {
                            output: m.name.clone(),
                            metric,
                            value,
                            limit,
                        });
                    }
                }
            };
            if m.is_float() {
                under("cosine", Some(m.cosine), self.min_cosine);
                under("snr-db", Some(m.snr_db), self.min_snr_db);
            }
            under("top1", m.top1, self.min_top1);
            under("exact-match", m.exact_match, self.min_exact_match);
        }
        out
    }
}

fn fmt_num(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 { "inf" } else { "-inf" }.to_string()
    } else if v == 0.0 {
        "0".to_string()
    } else if v.abs() >= 1e-3 && v.abs() < 1e5 {
        format!("{v:.6}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    } else {
        format!("{v:.3e}")
    }
}

fn pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{:.2}%", 100.0 * v))
}

fn row(m: &OutputMetrics) -> Vec<String> {
    vec![
        m.name.clone(),
        format!("{}{:?}", m.dtype, m.shape),
        fmt_num(m.max_abs),
        fmt_num(m.mean_abs),
        if m.is_float() {
            fmt_num(m.rel_l2)
        } else {
            "-".into()
        },
        if m.is_float() {
            format!("{:.6}", m.cosine)
        } else {
            "-".into()
        },
        if !m.is_float() {
            "-".into()
        } else if m.snr_db.is_infinite() {
            "inf".into()
        } else {
            format!("{:.1}", m.snr_db)
        },
        pct(m.top1),
        pct(m.exact_match),
    ]
}

impl Report {
    /// The report as an aligned text table, one row per output.
    pub fn table(&self) -> String {
        let header: Vec<String> = [
            "output", "type", "max-abs", "mean-abs", "rel-L2", "cosine", "SNR dB", "top-1", "exact",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let rows: Vec<Vec<String>> = std::iter::once(header)
            .chain(self.outputs.iter().map(row))
            .collect();
        let widths: Vec<usize> = (0..rows[0].len())
            .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
            .collect();
        let mut s = format!(
            "{} vs {} on {} ({} sample{}, inputs {})\n",
            self.candidate.display(),
            self.reference.display(),
            self.runtime,
            self.samples,
            if self.samples == 1 { "" } else { "s" },
            self.inputs
        );
        if let Some(note) = &self.runtime_note {
            s.push_str(&format!("note: {note}\n"));
        }
        for n in &self.notes {
            s.push_str(&format!("note: {n}\n"));
        }
        for l in &self.lowered {
            s.push_str(&format!("lowered for tract: {l}\n"));
        }
        for r in &rows {
            let cells: Vec<String> = r
                .iter()
                .enumerate()
                .map(|(c, v)| {
                    if c < 2 {
                        format!("{v:<w$}", w = widths[c])
                    } else {
                        format!("{v:>w$}", w = widths[c])
                    }
                })
                .collect();
            s.push_str(cells.join("  ").trim_end());
            s.push('\n');
        }
        if !self.extra_outputs.is_empty() {
            s.push_str(&format!(
                "not compared (candidate only): {}\n",
                self.extra_outputs.join(", ")
            ));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(name: &str, rel: f64, exact: Option<f64>) -> OutputMetrics {
        OutputMetrics {
            name: name.into(),
            dtype: "float".into(),
            shape: vec![1, 4],
            elements: 4,
            max_abs: rel,
            mean_abs: rel / 2.0,
            rel_l2: rel,
            cosine: 1.0 - rel,
            snr_db: -20.0 * rel.log10(),
            top1: Some(1.0),
            exact_match: exact,
        }
    }

    #[test]
    fn limits_are_checked_per_kind_of_output() {
        let report = Report {
            runtime: "tract".into(),
            runtime_note: None,
            reference: "a.onnx".into(),
            candidate: "b.onnx".into(),
            samples: 1,
            inputs: "random (seed 0)".into(),
            lowered: vec![],
            notes: vec![],
            outputs: vec![metrics("y", 0.1, None), metrics("ids", 0.1, Some(0.5))],
            extra_outputs: vec![],
        };
        let t = Thresholds {
            max_rel_l2: Some(0.05),
            min_snr_db: Some(30.0),
            min_exact_match: Some(1.0),
            ..Default::default()
        };
        let v = t.check(&report);
        let names: Vec<String> = v
            .iter()
            .map(|v| format!("{}:{}", v.output, v.metric))
            .collect();
        // rel-L2 and SNR only for the float output; exact-match only for the integer one.
        assert_eq!(names, ["y:rel-l2", "y:snr-db", "ids:exact-match"]);
        assert_eq!(v[0].to_string(), "output 'y': rel-l2 0.1 > max 0.05");
        assert!(Thresholds::default().check(&report).is_empty());
        let table = report.table();
        assert!(
            table.contains("rel-L2") && table.contains("50.00%"),
            "{table}"
        );
    }
}
