//! Command-line front end: argument plumbing only; the work is in the library.
mod apply;
mod convert;
mod diff;
mod eval;
mod inspect;
mod llm;
mod lora;
mod pipeline;
mod quantize;
mod run;
mod verify;
mod verify_gate;

pub use convert::LayoutArgs;
pub use inspect::{inspect, Inspection};

use clap::{Parser, Subcommand};

use crate::error::Result;

/// onnxq: ONNX in, smaller and faster ONNX out.
///
/// Quantizes ONNX models for ONNX Runtime on a CPU, in one streaming pass, and checks
/// every rewrite numerically (tract embedded; ONNX Runtime when installed).
#[derive(Parser, Debug)]
#[command(name = "onnxq", version, about, long_about)]
pub struct Cli {
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
}

/// Runs the CLI; returns the process exit code.
pub fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Inspect(a) => inspect::run(&a),
        Command::Convert(a) => convert::run(&a),
        Command::Diff(a) => diff::run(&a),
        Command::Quantize(a) => quantize::run(&a),
        Command::Apply(a) => apply::run(&a),
        Command::Verify(a) => verify::run(&a),
        Command::Run(a) => run::run(&a),
        Command::Lora(a) => lora::run(&a),
        Command::Llm(a) => llm::run(&a),
        Command::Eval(a) => eval::run(&a),
    }
}
