//! Verification flags shared by `verify` and every model-writing command: runtime,
//! symbolic dims and the thresholds that set the exit code.
use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{Error, Result};
use crate::runtime::RuntimeKind;
use crate::verify::selfcheck::self_check;
use crate::verify::{Report, Thresholds, VerifyOptions};

/// Which runtime runs a model, and how: shared by `run`, `verify` and the
/// verification of model-writing commands.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct RuntimeArgs {
    /// Runtime: tract (embedded), ort (ONNX Runtime) or auto (ORT when found).
    #[arg(long, default_value = "auto", value_name = "auto|tract|ort")]
    pub runtime: RuntimeKind,
    /// ONNX Runtime intra-op threads (default: available cores).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// ONNX Runtime session config entry, e.g.
    /// --ort-config session.qdq_matmulnbits_accuracy_level=0 (repeatable).
    #[arg(long = "ort-config", value_name = "KEY=VALUE")]
    pub ort_config: Vec<String>,
    /// Value of a symbolic input dim for random inputs, e.g. --dim batch_size=1
    /// --dim sequence_length=16.
    #[arg(long = "dim", value_name = "NAME=N")]
    pub dims: Vec<String>,
}

#[derive(clap::Args, Debug, Clone, Default)]
pub struct VerifyGate {
    #[command(flatten)]
    pub rt: RuntimeArgs,
    /// Fail (exit 3) if any output's max absolute error exceeds X.
    #[arg(long, value_name = "X")]
    pub max_abs: Option<f64>,
    /// Fail if any float output's relative L2 error exceeds X.
    #[arg(long, value_name = "X")]
    pub max_rel_l2: Option<f64>,
    /// Fail if any float output's cosine similarity is below X.
    #[arg(long, value_name = "X")]
    pub min_cosine: Option<f64>,
    /// Fail if any float output's SNR is below X dB.
    #[arg(long, value_name = "X")]
    pub min_snr_db: Option<f64>,
    /// Fail if any logits output's top-1 agreement is below X (0..1).
    #[arg(long, value_name = "X")]
    pub min_top1: Option<f64>,
    /// Fail if any integer/bool/string output's exact-match rate is below X (0..1).
    #[arg(long, value_name = "X")]
    pub min_exact_match: Option<f64>,
}

/// `NAME=N` pairs of `--dim`.
pub fn parse_dims(dims: &[String]) -> Result<BTreeMap<String, i64>> {
    let mut out = BTreeMap::new();
    for d in dims {
        let (k, v) = d
            .split_once('=')
            .ok_or_else(|| Error::invalid(format!("--dim {d}: expected NAME=N")))?;
        let v: i64 = v
            .trim()
            .parse()
            .map_err(|_| Error::invalid(format!("--dim {d}: '{v}' is not an integer")))?;
        if v < 0 {
            return Err(Error::invalid(format!("--dim {d}: must not be negative")));
        }
        out.insert(k.trim().to_string(), v);
    }
    Ok(out)
}

/// `KEY=VALUE` pairs of `--ort-config`.
pub fn parse_config(entries: &[String]) -> Result<Vec<(String, String)>> {
    entries
        .iter()
        .map(|e| {
            e.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .ok_or_else(|| Error::invalid(format!("--ort-config {e}: expected KEY=VALUE")))
        })
        .collect()
}

impl VerifyGate {
    pub fn options(&self, seed: u64) -> Result<VerifyOptions> {
        Ok(VerifyOptions {
            dims: parse_dims(&self.rt.dims)?,
            seed,
            runtime: self.rt.runtime,
            threads: self.rt.threads,
            ort_config: parse_config(&self.rt.ort_config)?,
            ..Default::default()
        })
    }

    pub fn thresholds(&self) -> Thresholds {
        Thresholds {
            max_abs: self.max_abs,
            max_rel_l2: self.max_rel_l2,
            min_cosine: self.min_cosine,
            min_snr_db: self.min_snr_db,
            min_top1: self.min_top1,
            min_exact_match: self.min_exact_match,
        }
    }

    /// Prints the report and what broke a threshold; returns whether it passed.
    pub fn judge(&self, report: &Report) -> (serde_json::Value, bool) {
        let thresholds = self.thresholds();
        let violations = thresholds.check(report);
        for v in &violations {
            eprintln!("verify: FAILED: {v}");
        }
        let json = serde_json::json!({
            "report": report,
            "thresholds": thresholds,
            "violations": violations,
            "passed": violations.is_empty(),
        });
        (json, violations.is_empty())
    }

    /// Compares `output` with `input` (a pipeline's own check, on the calibration
    /// samples `calib` when given); returns (report, passed).
    pub fn check(
        &self,
        input: &Path,
        output: &Path,
        seed: u64,
        calib: Option<std::path::PathBuf>,
    ) -> Result<(serde_json::Value, bool)> {
        let opts = VerifyOptions {
            calib,
            ..self.options(seed)?
        };
        let check = self_check(input, output, &opts)?;
        eprint!("{}", check.summary());
        let report = &check.end_to_end;
        eprint!("{}", report.table());
        let (mut json, passed) = self.judge(report);
        json["layers"] = serde_json::json!({
            "checked": check.layers,
            "worst": check.worst,
            "hint": check.hint,
            "unchecked": check.unchecked,
            "seconds": check.seconds,
        });
        Ok((json, passed))
    }
}
