//! `onnxq eval`: perplexity of a decoder on a text, and with `--reference` how far
//! it strays from another model (KL, top-1, greedy generations).
use std::io::IsTerminal;
use std::path::PathBuf;

use super::verify_gate::{parse_config, RuntimeArgs};
use crate::error::{Error, Result};
use crate::eval::{evaluate, tokenize, EvalOptions};
use crate::runtime::RuntimeOptions;

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// The decoder to evaluate (e.g. the quantized one).
    pub model: PathBuf,
    /// Compare with this model (e.g. the fp32 original): KL divergence, top-1 and
    /// greedy-generation agreement.
    #[arg(long, value_name = "MODEL")]
    pub reference: Option<PathBuf>,
    /// The text to score (UTF-8; CRLF read as LF).
    #[arg(long, value_name = "FILE")]
    pub text: PathBuf,
    /// Hugging Face tokenizer.json matching the model.
    #[arg(long, value_name = "tokenizer.json")]
    pub tokenizer: PathBuf,
    /// Score only the first N tokens of the text.
    #[arg(long, value_name = "N")]
    pub tokens: Option<usize>,
    /// Tokens per forward pass (default 512, fewer when the model's rotary tables
    /// hold fewer positions).
    #[arg(long, value_name = "W")]
    pub window: Option<usize>,
    /// Tokens between window starts; each window scores only the tokens the previous
    /// one did not (default: half the window).
    #[arg(long, value_name = "S")]
    pub stride: Option<usize>,
    /// Greedy prompts taken from the text (with --reference).
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub prompts: usize,
    /// Tokens per greedy prompt.
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub prompt_tokens: usize,
    /// Tokens generated per greedy prompt.
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub generate_tokens: usize,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub rt: RuntimeArgs,
}

fn progress_bar() -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(0);
    pb.set_style(
        indicatif::ProgressStyle::with_template("eval [{bar:30}] {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    pb
}

pub fn run(args: &EvalArgs) -> Result<i32> {
    if !args.rt.dims.is_empty() {
        return Err(Error::invalid(
            "eval shapes its inputs from the text: --dim does not apply",
        ));
    }
    let ids = tokenize(&args.text, &args.tokenizer)?;
    let opts = EvalOptions {
        tokens: args.tokens,
        window: args.window,
        stride: args.stride,
        prompts: args.prompts,
        prompt_tokens: args.prompt_tokens,
        generate_tokens: args.generate_tokens,
        runtime: RuntimeOptions {
            kind: args.rt.runtime,
            threads: args.rt.threads,
            ort_config: parse_config(&args.rt.ort_config)?,
        },
    };
    let pb = progress_bar();
    let report = evaluate(&args.model, args.reference.as_deref(), &ids, &opts, &pb)?;
    pb.finish_and_clear();
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(|e| Error::invalid(e.to_string()))?
        );
    } else {
        print!("{}", report.table());
    }
    Ok(0)
}
