//! Command-line front end: argument plumbing only; the work is in the library.
mod apply;
mod completions;
mod convert;
mod diff;
mod eval;
mod inspect;
mod llm;
pub mod log;
mod lora;
mod pipeline;
mod quantize;
mod report;
mod rotate;
mod run;
mod tune;
mod verify;
mod verify_gate;

pub use convert::LayoutArgs;
pub use inspect::{inspect, Inspection};

use clap::{Parser, Subcommand};

use crate::error::Result;

/// Process exit codes, the same for every subcommand.
pub mod exit {
    /// Success (also: nothing matched and an unchanged copy was written).
    pub const SUCCESS: i32 = 0;
    /// Any other error: unreadable model, a pass refused it, I/O.
    pub const ERROR: i32 = 1;
    /// Usage error: unknown or inconsistent flags, recipe or algorithm names.
    pub const USAGE: i32 = 2;
    /// A check the user asked for failed: a verify threshold, `--fail-if-unchanged`,
    /// an accuracy target (`--max-ppl-increase`, `--max-error`) that cannot be met.
    pub const CHECK_FAILED: i32 = 3;

    /// The exit code of a command that failed with `e`.
    pub fn code_for(e: &crate::error::Error) -> i32 {
        match e {
            crate::error::Error::Usage(_) => USAGE,
            crate::error::Error::CheckFailed(_) => CHECK_FAILED,
            _ => ERROR,
        }
    }
}

const EXIT_CODES: &str = "Exit codes: 0 success (also when nothing matched: an unchanged copy is \
written), 1 error, 2 usage error (unknown or inconsistent flags or names), 3 a check failed (a \
verify threshold such as --max-abs, --fail-if-unchanged, or an accuracy target such as \
--max-ppl-increase that cannot be met).";

/// onnxq: ONNX in, smaller and faster ONNX out.
///
/// Quantizes ONNX models for ONNX Runtime on a CPU, in one streaming pass, and checks
/// every rewrite numerically (tract embedded; ONNX Runtime when installed).
#[derive(Parser, Debug)]
#[command(name = "onnxq", version, about, long_about, after_help = EXIT_CODES)]
pub struct Cli {
    /// How much to say on stderr: error, warn, info or debug (= --explain).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "info",
        value_name = "LEVEL"
    )]
    pub log_level: log::Level,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Describe a model: versions, inputs/outputs, ops, parameters, largest tensors,
    /// external data, quantized ops.
    Inspect(inspect::InspectArgs),
    /// Re-save a model with another tensor layout (inline, one external data file,
    /// size threshold). Nothing else changes.
    Convert(convert::ConvertArgs),
    /// Show how two models' graphs differ: nodes added/removed/changed, initializers
    /// changed with dtype/shape/bytes.
    Diff(diff::DiffArgs),
    /// Quantize weights to N bits (MatMulNBits, blocked QDQ, bnb4; RTN or HQQ), then
    /// check the output numerically against the input.
    Quantize(Box<quantize::QuantizeArgs>),
    /// Run a recipe (a shipped name or a TOML file of passes) on a model.
    Apply(apply::ApplyArgs),
    /// Rotate a decoder (QuaRot): RMS norms fused, a seeded randomized Hadamard
    /// folded into the weights, an online Hadamard before down_proj. The float
    /// function is unchanged; int4 weights then lose less.
    Rotate(rotate::RotateArgs),
    /// Compare two models on the same inputs: max-abs, mean-abs, relative L2, cosine,
    /// SNR and top-1 agreement per output; thresholds set the exit code.
    Verify(verify::VerifyArgs),
    /// Run a model on inputs (.npy/.npz/.pb files, or seeded random ones), print a
    /// summary of its outputs and optionally write them to files.
    Run(run::RunArgs),
    /// LoRA adapters (PEFT) on a decoder: inject a switchable branch plus an ONNX
    /// Runtime .onnx_adapter file, merge into the weights, or pack an adapter file.
    Lora(lora::LoraArgs),
    /// LLM fix-ups: add a KV cache to a decoder exported without one; recompute the
    /// rotary tables for a longer context.
    Llm(llm::LlmArgs),
    /// Perplexity of a decoder on a text in sliding windows; with --reference also
    /// the KL divergence, top-1 and greedy-generation agreement with another model.
    Eval(eval::EvalArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(completions::CompletionsArgs),
    /// Print the man page, or write one per subcommand with --out DIR.
    Man(completions::ManArgs),
}

/// Runs the CLI; returns the process exit code.
pub fn run(cli: Cli) -> Result<i32> {
    log::set(cli.log_level);
    match cli.command {
        Command::Inspect(a) => inspect::run(&a),
        Command::Convert(a) => convert::run(&a),
        Command::Diff(a) => diff::run(&a),
        Command::Quantize(a) if a.tuning() => tune::run(&a),
        Command::Quantize(a) => quantize::run(&a),
        Command::Apply(a) => apply::run(&a),
        Command::Rotate(a) => rotate::run(&a),
        Command::Verify(a) => verify::run(&a),
        Command::Run(a) => run::run(&a),
        Command::Lora(a) => lora::run(&a),
        Command::Llm(a) => llm::run(&a),
        Command::Eval(a) => eval::run(&a),
        Command::Completions(a) => completions::completions(&a),
        Command::Man(a) => completions::man(&a),
    }
}
