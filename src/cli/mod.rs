//! Command-line front end: argument plumbing only; the work is in the library.
mod convert;
mod diff;
mod inspect;

pub use convert::LayoutArgs;
pub use inspect::{inspect, Inspection, QUANTIZED_OPS};

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
}

/// Runs the CLI; returns the process exit code.
pub fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Inspect(a) => inspect::run(&a),
        Command::Convert(a) => convert::run(&a),
        Command::Diff(a) => diff::run(&a),
    }
}
