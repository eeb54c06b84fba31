//! The verification a pipeline command runs on its own output, with thresholds
//! that fail the command.
use std::path::Path;

use crate::error::{Error, Result};
use crate::verify::{compare, VerifyOptions};

#[derive(clap::Args, Debug, Clone, Default)]
pub struct VerifyGate {
    /// Fail (exit 2) if any output's relative L2 error exceeds this.
    #[arg(long, value_name = "X")]
    pub max_rel_l2: Option<f64>,
    /// Fail if any output's max absolute error exceeds this.
    #[arg(long, value_name = "X")]
    pub max_abs: Option<f64>,
    /// Fail if any output's cosine similarity is below this.
    #[arg(long, value_name = "X")]
    pub min_cosine: Option<f64>,
    /// Value for a symbolic input dim, e.g. --dim batch_size=1 --dim sequence_length=16.
    #[arg(long = "dim", value_name = "NAME=N")]
    pub dims: Vec<String>,
}

impl VerifyGate {
    pub fn options(&self, seed: u64) -> Result<VerifyOptions> {
        let mut o = VerifyOptions {
            seed,
            samples: 1,
            ..Default::default()
        };
        for d in &self.dims {
            let (k, v) = d
                .split_once('=')
                .ok_or_else(|| Error::invalid(format!("--dim {d}: expected NAME=N")))?;
            let v: i64 = v
                .parse()
                .map_err(|_| Error::invalid(format!("--dim {d}: {v} is not an integer")))?;
            o.dims.insert(k.to_string(), v);
        }
        Ok(o)
    }

    /// Compares `output` with `input`, prints a summary; returns (report, passed).
    pub fn check(
        &self,
        input: &Path,
        output: &Path,
        seed: u64,
    ) -> Result<(serde_json::Value, bool)> {
        let report = match compare(input, output, &self.options(seed)?) {
            Ok(r) => r,
            // The reference itself does not run here: nothing was learned about the
            // rewrite, so say so instead of failing the command.
            Err(crate::Error::Reference(reason)) => {
                eprintln!("warning: verification skipped: {reason}");
                return Ok((serde_json::json!({ "skipped": reason }), true));
            }
            Err(e) => return Err(e),
        };
        let mut pass = true;
        for m in &report.outputs {
            let top1 = m
                .top1
                .map(|t| format!("  top-1 {:.1}%", 100.0 * t))
                .unwrap_or_default();
            eprintln!(
                "verify ({}) {}: max-abs {:.3e}  rel-L2 {:.3e}  cosine {:.6}  SNR {:.1} dB{top1}",
                report.runtime, m.name, m.max_abs, m.rel_l2, m.cosine, m.snr_db
            );
            if self.max_rel_l2.is_some_and(|x| m.rel_l2 > x)
                || self.max_abs.is_some_and(|x| m.max_abs > x)
                || self.min_cosine.is_some_and(|x| m.cosine < x)
            {
                eprintln!("verify: output '{}' breaks a threshold", m.name);
                pass = false;
            }
        }
        let json = serde_json::to_value(&report).map_err(|e| Error::invalid(e.to_string()))?;
        Ok((json, pass))
    }
}
