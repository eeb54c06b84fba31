//! `onnxq verify`: compare a candidate model with a reference on the same inputs.
use std::path::PathBuf;

use super::verify_gate::VerifyGate;
use crate::error::{Error, Result};

#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// The reference model (e.g. the fp32 original).
    pub reference: PathBuf,
    /// The model to check (e.g. the quantized one).
    pub candidate: PathBuf,
    /// How many random input sets to compare.
    #[arg(long, default_value_t = 1)]
    pub samples: usize,
    /// Seed of the random inputs.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub gate: VerifyGate,
}

pub fn run(args: &VerifyArgs) -> Result<i32> {
    let mut opts = args.gate.options(args.seed)?;
    opts.samples = args.samples;
    let report = crate::verify::compare(&args.reference, &args.candidate, &opts)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(|e| Error::invalid(e.to_string()))?
        );
    }
    let (_, pass) = args
        .gate
        .check(&args.reference, &args.candidate, args.seed)?;
    Ok(if pass { 0 } else { 2 })
}
