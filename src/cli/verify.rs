//! `onnxq verify`: compare a candidate model with a reference on the same inputs;
//! thresholds set the exit code (3 when one is broken) so it can gate a build.
use std::path::PathBuf;

use super::verify_gate::VerifyGate;
use crate::error::{Error, Result};
use crate::verify::{compare, VerifyOptions};

#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// The reference model (e.g. the fp32 original).
    pub reference: PathBuf,
    /// The model to check (e.g. the quantized one).
    pub candidate: PathBuf,
    /// Input values: a .npy/.npz/.pb file, a directory of them, or a directory of
    /// test_data_set_* directories (one sample each). Default: seeded random inputs.
    #[arg(long, value_name = "DIR|FILE")]
    pub inputs: Option<PathBuf>,
    /// How many random input sets to compare.
    #[arg(long, default_value_t = 1)]
    pub samples: usize,
    /// Seed of the random inputs.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print the report as JSON (with the thresholds and what broke them).
    #[arg(long)]
    pub json: bool,
    /// Also write that JSON report (with time and peak memory) to this file.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    #[command(flatten)]
    pub gate: VerifyGate,
}

pub fn run(args: &VerifyArgs) -> Result<i32> {
    let start = std::time::Instant::now();
    let opts = VerifyOptions {
        samples: args.samples,
        inputs: args.inputs.clone(),
        ..args.gate.options(args.seed)?
    };
    let report = compare(&args.reference, &args.candidate, &opts)?;
    if !args.json {
        print!("{}", report.table());
    }
    let (mut json, passed) = args.gate.judge(&report);
    if let Some(path) = &args.report {
        json["seconds"] = serde_json::json!(start.elapsed().as_secs_f64());
        json["peak_rss_bytes"] = serde_json::json!(super::report::peak_rss_bytes());
        let text =
            serde_json::to_string_pretty(&json).map_err(|e| Error::invalid(e.to_string()))?;
        let mut file = crate::io::AtomicFile::create(path)?;
        file.write_all(text.as_bytes())?;
        file.commit()?;
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json).map_err(|e| Error::invalid(e.to_string()))?
        );
    }
    Ok(if passed {
        super::exit::SUCCESS
    } else {
        super::exit::CHECK_FAILED
    })
}
