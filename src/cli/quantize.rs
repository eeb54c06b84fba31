//! `onnxq quantize`: a shipped recipe picked by --algorithm, with flag overrides.
use std::path::PathBuf;

use clap::ValueEnum;

use super::pipeline::{self, PipelineArgs};
use crate::error::Result;
use crate::pass::recipe::Recipe;

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlgorithmArg {
    /// Round to nearest per block (fast; onnxruntime's default quantizer).
    Rtn,
    /// Half-quadratic quantization: lower weight error than RTN, no calibration;
    /// integer zero points, so it decodes as fast as RTN (onnxruntime's HQQ writes
    /// float zero points that decode ~7x slower).
    Hqq,
    /// bitsandbytes NF4/FP4 (MatMulBnb4), as Olive's bnb4.
    Bnb4,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FormatArg {
    /// com.microsoft MatMulNBits.
    Matmulnbits,
    /// Standard ONNX blocked DequantizeLinear → MatMul (raises the opset to 21).
    Qdq,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantTypeArg {
    Nf4,
    Fp4,
}

/// Quantize MatMul/Gemm weights (and optionally embeddings) to N bits.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Defaults follow onnxruntime's MatMulNBitsQuantizer CLI (symmetric, block 32, \
accuracy_level unset = A stays float). --accuracy-level 4 lets ONNX Runtime's CPU kernel quantize \
activations to int8: about 2x faster decoding, but it can flip greedy tokens on models with outlier \
activations; check with `onnxq verify`."
)]
pub struct QuantizeArgs {
    /// Model to read.
    pub input: PathBuf,
    /// Model to write.
    pub output: PathBuf,
    #[arg(long, value_enum, default_value = "rtn")]
    pub algorithm: AlgorithmArg,
    /// Bits per weight: 2, 4 or 8 (MatMulNBits); 4 or 8 (QDQ).
    #[arg(long)]
    pub bits: Option<u8>,
    /// Weights per block along K (power of two, >= 16). Default 32 (64 for bnb4).
    #[arg(long)]
    pub block_size: Option<usize>,
    /// Asymmetric blocks (min/max with a zero point) instead of symmetric (absmax).
    /// HQQ is always asymmetric.
    #[arg(long)]
    pub asymmetric: bool,
    /// MatMulNBits accuracy_level: 0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8 activations.
    #[arg(long, value_name = "N")]
    pub accuracy_level: Option<i64>,
    #[arg(long, value_enum, default_value = "matmulnbits")]
    pub format: FormatArg,
    /// bnb4 code book.
    #[arg(long, value_enum, default_value = "nf4")]
    pub quant_type: QuantTypeArg,
    /// Also quantize embedding tables (Gather on a constant table) to GatherBlockQuantized.
    #[arg(long)]
    pub embeddings: bool,
    /// Node name pattern to leave in float (`*` wildcards); repeatable.
    #[arg(long, value_name = "PATTERN")]
    pub exclude: Vec<String>,
    /// Op types to quantize (default MatMul and Gemm); repeatable.
    #[arg(long, value_name = "OP")]
    pub include_op: Vec<String>,
    /// JSON file of per-node settings: {"pattern": {"bits": 8, "block-size": 64} | "skip"}.
    #[arg(long, value_name = "FILE")]
    pub nodes_config: Option<String>,
    #[command(flatten)]
    pub pipeline: PipelineArgs,
}

impl QuantizeArgs {
    /// The shipped recipe for the algorithm with every flag applied.
    pub fn recipe(&self) -> Result<Recipe> {
        let name = match (self.algorithm, self.format) {
            (AlgorithmArg::Rtn, FormatArg::Matmulnbits) => "int4-rtn",
            (AlgorithmArg::Rtn, FormatArg::Qdq) => "int4-rtn-qdq",
            (AlgorithmArg::Hqq, _) => "int4-hqq",
            (AlgorithmArg::Bnb4, _) => "bnb4-nf4",
        };
        let mut r = Recipe::load(name)?;
        use toml::Value as V;
        if let Some(b) = self.bits {
            r.set("bits", V::Integer(b as i64));
        }
        if let Some(b) = self.block_size {
            r.set("block-size", V::Integer(b as i64));
        }
        if self.asymmetric {
            r.set("symmetric", V::Boolean(false));
        }
        if let Some(a) = self.accuracy_level {
            r.set("accuracy-level", V::Integer(a));
        }
        if self.algorithm != AlgorithmArg::Bnb4 {
            let f = match self.format {
                FormatArg::Matmulnbits => "matmulnbits",
                FormatArg::Qdq => "qdq",
            };
            r.set("format", V::String(f.into()));
        }
        if self.algorithm == AlgorithmArg::Bnb4 {
            let q = match self.quant_type {
                QuantTypeArg::Nf4 => "nf4",
                QuantTypeArg::Fp4 => "fp4",
            };
            r.set("quant-type", V::String(q.into()));
        }
        if !self.exclude.is_empty() {
            r.set(
                "exclude",
                V::Array(self.exclude.iter().cloned().map(V::String).collect()),
            );
        }
        if !self.include_op.is_empty() {
            r.set(
                "include-ops",
                V::Array(self.include_op.iter().cloned().map(V::String).collect()),
            );
        }
        if let Some(f) = &self.nodes_config {
            r.set("nodes-config", V::String(f.clone()));
        }
        if self.embeddings {
            let mut t = toml::Table::new();
            t.insert("name".into(), V::String("gather-block-quantized".into()));
            t.insert(
                "bits".into(),
                V::Integer(self.bits.unwrap_or(4).clamp(4, 8) as i64),
            );
            t.insert(
                "block-size".into(),
                V::Integer(self.block_size.unwrap_or(32) as i64),
            );
            t.insert("symmetric".into(), V::Boolean(!self.asymmetric));
            r.passes.push(t);
        }
        // Validate everything (bits/block size combinations) before any work.
        r.build()?;
        Ok(r)
    }
}

pub fn run(args: &QuantizeArgs) -> Result<i32> {
    let recipe = args.recipe()?;
    pipeline::run(&recipe, &args.input, &args.output, &args.pipeline)
}
