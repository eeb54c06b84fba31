//! `onnxq quantize`: a shipped recipe picked by --algorithm, with flag overrides.
use std::path::PathBuf;

use clap::ValueEnum;

use super::pipeline::{self, PipelineArgs};
use crate::error::Result;
use crate::pass::recipe::Recipe;

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TiedHeadArg {
    Shared,
    Separate,
    /// --algorithm gptq|awq,gptq: one shared table quantized by the calibrated
    /// quantizer as the head (GPTQ on the head's inputs) at the body's bits and block
    /// size, read by GatherBlockQuantized too.
    Calibrated,
}

/// `--sensitivity`: how the size budget's allocation weighs each weight's error.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SensitivityArg {
    None,
    Kind,
    Layer,
}

/// `--quarot-select`: which projections take QuaRot's rotation.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuarotSelectArg {
    All,
    Measured,
}

/// How MatMulNBits/GatherBlockQuantized block scales are stored in a float32 model.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScaleTypeArg {
    /// float32, the activation type the kernels take.
    F32,
    /// float16 behind a Cast to float that ONNX Runtime folds at load: half the scale
    /// bytes (int4 at block 32: 4.5 bits per parameter instead of 5.0).
    F16,
}

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
    /// 8-bit weights, activations quantized at run time, per token by default
    /// (--activations per-tensor: onnxruntime's quantize_dynamic):
    /// MatMul/Gemm/Conv/Gather, no calibration.
    Dynamic,
    /// 8-bit weights and calibrated 8/16-bit activations (onnxruntime's
    /// quantize_static): QDQ or QOperator; --calib DIR gives the samples.
    Static,
    /// GPTQ: 4-bit (2/8) MatMulNBits with calibrated second-order error feedback;
    /// --calib-text FILE --tokenizer tokenizer.json (or --calib DIR) give the samples.
    Gptq,
    /// AWQ: activation-aware per-channel scales (searched on calibration data, folded
    /// into the norms) and then round to nearest, MatMulNBits; samples as for gptq.
    Awq,
    /// float32 → float16 (onnxruntime's float16 converter): weights and activations,
    /// ops without float16 kernels left float32 behind Casts; IO types kept.
    Fp16,
    /// float32 → bfloat16, same rules as fp16 (few ORT CPU kernels take bfloat16).
    Bf16,
    /// Olive's QuaRot (Hadamard rotations before quantizing): NOT built in this
    /// version of onnxq; refused with an error.
    Quarot,
    /// llama.cpp-style k-quants, as Olive names them: NOT built in this version of
    /// onnxq; refused with an error.
    Kquant,
}

/// `--precision`, spelled as Olive spells it: the type the weights are stored in.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrecisionArg {
    /// 4-bit integer weights (rtn, hqq, gptq, awq; symmetric unless --asymmetric).
    Int4,
    /// 8-bit weights: `--bits 8` for the weight-only algorithms, int8 weights for
    /// dynamic/static.
    Int8,
    /// 8-bit asymmetric weights: `--bits 8 --asymmetric` (weight-only), uint8 weights
    /// (dynamic/static).
    Uint8,
    /// bitsandbytes NF4 (implies --algorithm bnb4).
    Nf4,
    /// bitsandbytes FP4 (implies --algorithm bnb4).
    Fp4,
    /// float16 conversion (implies --algorithm fp16).
    Fp16,
    /// bfloat16 conversion (implies --algorithm bf16).
    Bf16,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FormatArg {
    /// com.microsoft MatMulNBits.
    Matmulnbits,
    /// Standard ONNX blocked DequantizeLinear → MatMul (raises the opset to 21);
    /// for --algorithm static, QuantizeLinear/DequantizeLinear pairs (the default).
    Qdq,
    /// --algorithm static: integer operators (QLinearConv, QLinearMatMul, QGemm, ...).
    Qoperator,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CalibMethodArg {
    Minmax,
    Entropy,
    Percentile,
    Distribution,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntTypeArg {
    Int8,
    Uint8,
    Int16,
    /// float8 e4m3fn (activations only; opset 19)
    Float8e4m3fn,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActivationsArg {
    /// One int8 scale per token (row of A) and per-channel weights: holds decoders
    PerToken,
    /// One scale per tensor, exactly onnxruntime's quantize_dynamic
    PerTensor,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantTypeArg {
    Nf4,
    Fp4,
}

/// `--algorithm`: an algorithm, optionally after the QuaRot rotation and, for
/// GPTQ, after AWQ's scales (`awq,gptq`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AlgorithmSpec {
    pub rotate: bool,
    /// AWQ's scales are folded first and `base` (gptq) quantizes the scaled weights.
    pub awq_scales: bool,
    pub base: AlgorithmArg,
}

fn parse_algorithm(s: &str) -> std::result::Result<AlgorithmSpec, String> {
    let (rotate, rest) = match s.split_once(',') {
        Some((first, rest)) if first.trim().eq_ignore_ascii_case("quarot") => (true, rest.trim()),
        _ => (false, s.trim()),
    };
    let (awq_scales, base) = match rest.split_once(',') {
        Some((first, second))
            if first.trim().eq_ignore_ascii_case("awq")
                && second.trim().eq_ignore_ascii_case("gptq") =>
        {
            (true, second.trim())
        }
        Some((first, _)) => {
            return Err(format!(
                "'{}' cannot combine: the combinations are quarot,ALGORITHM (rtn, gptq, awq, \
                 hqq, dynamic), awq,gptq and quarot,awq,gptq",
                first.trim()
            ))
        }
        None => (false, rest),
    };
    let base = <AlgorithmArg as ValueEnum>::from_str(base, true).map_err(|_| {
        let names = AlgorithmArg::value_variants()
            .iter()
            .filter_map(|v| v.to_possible_value())
            .map(|v| v.get_name().to_string())
            .collect::<Vec<_>>();
        format!(
            "unknown algorithm '{base}'{} (rtn, hqq, bnb4, dynamic, static, gptq, awq, fp16, bf16, \
             quarot,ALGORITHM)",
            crate::error::did_you_mean(base, names.iter().map(String::as_str))
        )
    })?;
    if rotate
        && !matches!(
            base,
            AlgorithmArg::Rtn
                | AlgorithmArg::Hqq
                | AlgorithmArg::Gptq
                | AlgorithmArg::Awq
                | AlgorithmArg::Dynamic
        )
    {
        return Err(format!(
            "quarot combines with the N-bit weight algorithms (rtn, hqq, gptq, awq) and \
             dynamic int8, not {s}"
        ));
    }
    Ok(AlgorithmSpec {
        rotate,
        awq_scales,
        base,
    })
}

/// Quantize MatMul/Gemm weights (and optionally embeddings) to N bits.
#[derive(clap::Args, Debug, Clone)]
#[command(
    after_help = "Defaults follow onnxruntime's MatMulNBitsQuantizer CLI (symmetric, block 32, \
accuracy_level unset = A stays float). --accuracy-level 4 lets ONNX Runtime's CPU kernel quantize \
activations to int8: about 2x faster decoding, but it can flip greedy tokens on models with outlier \
activations; check with `onnxq verify`.

onnxruntime's option names are accepted as aliases: --nodes-to-exclude (= --exclude), \
--op-types-to-quantize (= --include-op), --is-symmetric BOOL (false = --asymmetric), \
--per-channel, --reduce-range, --block-size, --accuracy-level. Olive's names: --algorithm \
rtn|hqq|gptq|awq|bnb4|fp16|bf16, --precision int4|int8|uint8|nf4|fp4|fp16|bf16 (Olive's \
quarot is quarot,ALGORITHM here; kquant is not built in this version and is refused).

Exit codes: 0 success (also when nothing matched: an unchanged copy is written, unless \
--fail-if-unchanged), 1 error, 2 usage error, 3 a check failed (a verify threshold, \
--fail-if-unchanged, a --max-ppl-increase/--max-error target the tuning loop cannot meet; \
nothing is written then)."
)]
pub struct QuantizeArgs {
    /// Model to read.
    pub input: PathBuf,
    /// Model to write.
    pub output: PathBuf,
    /// rtn, hqq, bnb4, dynamic, static, gptq or awq [default: rtn] (Olive's names);
    /// `quarot,rtn`, `quarot,gptq`, `quarot,awq` (or `quarot,hqq`, `quarot,dynamic`)
    /// first rotate the decoder (QuaRot: norms fused, a seeded randomized Hadamard
    /// folded into the weights, an online Hadamard before down_proj; --seed picks the
    /// rotation).
    /// `awq,gptq` folds AWQ's activation-aware scales first, then GPTQ quantizes the
    /// scaled weights.
    #[arg(long = "algorithm", value_parser = parse_algorithm, value_name = "ALGORITHM")]
    pub algorithm_flag: Option<AlgorithmSpec>,
    /// The algorithm after --algorithm and --precision are resolved.
    #[arg(skip = AlgorithmSpec { rotate: false, awq_scales: false, base: AlgorithmArg::Rtn })]
    pub algorithm: AlgorithmSpec,
    /// Weight precision as Olive spells it; sets --bits/--asymmetric/--quant-type/
    /// --weight-type (and --algorithm bnb4 for nf4/fp4).
    #[arg(long, value_enum)]
    pub precision: Option<PrecisionArg>,
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
    /// onnxruntime's spelling: `--is-symmetric false` = --asymmetric; for
    /// dynamic/static, int8 (true) or uint8 (false) weights.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true",
          conflicts_with = "asymmetric")]
    pub is_symmetric: Option<bool>,
    /// MatMulNBits accuracy_level: 0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8 activations.
    #[arg(long, value_name = "N")]
    pub accuracy_level: Option<i64>,
    /// Output format: matmulnbits (default for weight-only) or qdq; for
    /// --algorithm static qdq (default) or qoperator.
    #[arg(long, value_enum)]
    pub format: Option<FormatArg>,
    /// bnb4 code book.
    #[arg(long, value_enum, default_value = "nf4")]
    pub quant_type: QuantTypeArg,
    /// Also quantize embedding tables (Gather on a constant table) to GatherBlockQuantized.
    #[arg(long)]
    pub embeddings: bool,
    /// A decoder whose lm_head multiplies by its embedding table: `shared` stores both as
    /// one quantized table (--tied-head-bits) read by GatherBlockQuantized and
    /// MatMulNBits; `separate` quantizes the head like any MatMul and keeps the
    /// embedding float (unless --embeddings).
    #[arg(long, value_enum, default_value = "shared")]
    pub tied_head: TiedHeadArg,
    /// Bits of the shared tied table: 8 (default; next to lossless) or 4.
    #[arg(long, value_name = "4|8")]
    pub tied_head_bits: Option<u8>,
    /// MatMulNBits/GatherBlockQuantized block scales of a float32 model: f32 (as the
    /// kernels take them) or f16 behind a Cast, half the scale bytes; --size-budget
    /// then counts 2 bytes per scale [default: f32].
    #[arg(long, value_enum, value_name = "f32|f16")]
    pub scale_type: Option<ScaleTypeArg>,
    /// Node name pattern to leave in float (`*` wildcards); repeatable or
    /// comma-separated.
    #[arg(
        long,
        value_name = "PATTERN",
        visible_alias = "nodes-to-exclude",
        value_delimiter = ','
    )]
    pub exclude: Vec<String>,
    /// Op types to quantize (default MatMul and Gemm); repeatable or comma-separated.
    #[arg(
        long,
        value_name = "OP",
        visible_alias = "op-types-to-quantize",
        value_delimiter = ','
    )]
    pub include_op: Vec<String>,
    /// JSON file of per-node settings, first matching pattern wins: {"pattern":
    /// "skip" | {"bits": 8, "block-size": 64}} (weight-only), {"activation-type":
    /// "int16"} (static).
    #[arg(long, value_name = "FILE")]
    pub nodes_config: Option<String>,
    /// --algorithm static: calibration samples (a directory of .npz files, keys =
    /// input names, or one .npz). Without it, seeded random inputs are used.
    #[arg(long, value_name = "DIR")]
    pub calib: Option<String>,
    /// --algorithm static: how activation ranges are chosen from calibration.
    #[arg(long, value_enum, default_value = "minmax")]
    pub calib_method: CalibMethodArg,
    /// --algorithm static, --calib-method percentile: share of values kept (%).
    #[arg(long, value_name = "P")]
    pub percentile: Option<f64>,
    /// int8 algorithms: one weight scale per output channel (`--per-channel false`:
    /// one per tensor, onnxruntime's default). Static QDQ defaults to per channel;
    /// per-token dynamic always is.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub per_channel: Option<bool>,
    /// int8 algorithms: 7-bit weights (for x86 CPUs without VNNI).
    #[arg(long)]
    pub reduce_range: bool,
    /// --algorithm static: type of quantized activations (int16 needs opset 21,
    /// float8e4m3fn opset 19 and the qdq format).
    #[arg(long, value_enum)]
    pub activation_type: Option<IntTypeArg>,
    /// int8 algorithms: type of quantized weights (int8 symmetric, uint8 asymmetric).
    #[arg(long, value_enum)]
    pub weight_type: Option<IntTypeArg>,
    /// --algorithm dynamic: MatMul/Gemm activation scales [default: per-token].
    #[arg(long, value_enum)]
    pub activations: Option<ActivationsArg>,
    /// --algorithm static: migrate activation outliers into the weights first
    /// (SmoothQuant): strength ALPHA in [0, 1], or `auto` (the default when the flag
    /// has no value) to search α per group of MatMuls by int8 output error.
    #[arg(long, value_name = "ALPHA|auto", num_args = 0..=1, default_missing_value = "auto")]
    pub smooth_quant: Option<String>,
    /// --algorithm static: leave float the N MatMul/Gemm/Conv groups whose inputs
    /// the int8 grid serves worst (outliers stretch the range; predicted noise from
    /// the calibration statistics), or `auto`: those above 7.5 % noise. Reported.
    #[arg(long, value_name = "N|auto")]
    pub exclude_worst: Option<String>,
    /// --algorithm gptq|awq|static: calibration text, tokenized with --tokenizer.
    #[arg(long, value_name = "FILE")]
    pub calib_text: Option<String>,
    /// --algorithm gptq|awq|static: Hugging Face tokenizer.json (byte-level BPE) for --calib-text.
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<String>,
    /// --algorithm gptq|awq|static: number of calibration samples (text windows, files
    /// or random inputs).
    #[arg(long, value_name = "N")]
    pub calib_samples: Option<usize>,
    /// --algorithm gptq|awq|static: tokens per calibration window.
    #[arg(long, value_name = "L")]
    pub calib_seqlen: Option<usize>,
    /// --algorithm gptq|awq: memory for one calibration piece (its weights and
    /// statistics), in MiB [default: 1024]. A larger model is calibrated piece by
    /// piece, cut between layers, so peak memory stays near this budget.
    #[arg(long, value_name = "MIB")]
    pub calib_memory_mb: Option<u64>,
    /// GPTQ: quantize columns in the order of their input's energy, not
    /// left to right (the default; blocks stay contiguous, so no g_idx).
    /// `--act-order false` processes them left to right.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub act_order: Option<bool>,
    /// --algorithm gptq: quantized-prefix calibration, as in the GPTQ paper: the
    /// decoder is calibrated layer by layer, each layer's statistics taken from the
    /// outputs of the already-quantized layers before it (one extra run per layer).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub calib_sequential: Option<bool>,
    /// --algorithm gptq: dampening of the Hessian diagonal, relative to its mean (0.01).
    #[arg(long, value_name = "X")]
    pub damp: Option<f64>,
    /// Mixed precision under a budget in bits per parameter, all-in (codes, scales,
    /// zero points; every weight matrix, the embedding and the head included, norms
    /// excluded): each weight gets the bits (2/4/8) and block size (16..256), or
    /// float, that buy the most calibrated accuracy per byte; --algorithm
    /// rtn|hqq|gptq|awq then quantizes with those settings. Calibration as for gptq
    /// (--calib-text/--tokenizer, else seeded random inputs).
    #[arg(long, value_name = "BPW", conflicts_with = "max_size")]
    pub size_budget: Option<f64>,
    /// --algorithm fp16|bf16: graph inputs and outputs stay float32, with Casts at the
    /// boundary [default: true].
    #[arg(long, value_name = "BOOL")]
    pub keep_io_types: Option<bool>,
    /// --algorithm fp16|bf16: also leave this op type in float32 (besides the default
    /// block list: TopK, Range, CumSum, Min, Max, Upsample, NonMaxSuppression, ...).
    #[arg(long = "block-op", value_name = "OP")]
    pub block_op: Vec<String>,
    /// Like --size-budget, with the budget in MiB of those same weight bytes.
    #[arg(long, value_name = "MIB")]
    pub max_size: Option<f64>,
    /// Tune for accuracy (--algorithm rtn|hqq|gptq|awq): quantize, measure the
    /// perplexity on the held-back last ~15 % of --calib-text (never used for
    /// calibration) and promote the most sensitive weights to more bits until it is
    /// at most PCT % above the float model's; with --size-budget/--max-size only
    /// within the budget. Needs --calib-text and --tokenizer. Exit 3, nothing
    /// written, when even the most precise allowed settings miss it.
    #[arg(long, value_name = "PCT")]
    pub max_ppl_increase: Option<f64>,
    /// Tune for accuracy as --max-ppl-increase does, on the self-check's end-to-end
    /// error: the relative L2 error of every float output (the rel-L2 column of the
    /// verification table; what --max-rel-l2 gates) at most X.
    #[arg(long, value_name = "X")]
    pub max_error: Option<f64>,
    /// Tuning: at most N quantize-and-measure rounds, the first before any
    /// promotion [default: 8].
    #[arg(long, value_name = "N")]
    pub tune_rounds: Option<usize>,
    /// Tuning: whether a weight may stay float as its last promotion [default: true].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub tune_float: Option<bool>,
    /// --size-budget/--max-size: scale each weight's predicted errors by its measured
    /// effect on the model's output (KL of the next-token distribution, 4 calibration
    /// windows): `kind` probes each kind of weight (q_proj of every layer together,
    /// ...: a handful of model runs), `layer` each weight (a run per weight) [default:
    /// none].
    #[arg(long, value_enum, value_name = "none|kind|layer")]
    pub sensitivity: Option<SensitivityArg>,
    /// quarot,ALGORITHM: `all` rotates every projection (the paper); `measured` keeps
    /// the rotation only for the projections (and down_proj online Hadamards) whose
    /// calibrated error after rounding it lowers, the others reading the stream
    /// de-rotated online [default: measured with --calib-text or --calib, except for
    /// gptq; else all].
    #[arg(long, value_enum, value_name = "all|measured")]
    pub quarot_select: Option<QuarotSelectArg>,
    #[command(flatten)]
    pub pipeline: PipelineArgs,
}

impl QuantizeArgs {
    /// The shipped recipe for the algorithm with every flag applied, after the
    /// `quarot` pass for `quarot,ALGORITHM`.
    pub fn recipe(&self) -> Result<Recipe> {
        let a = self.resolved()?;
        let mut r = a.resolved_recipe()?;
        if a.quarot_select.is_some() && !a.algorithm.rotate {
            return Err(crate::Error::Usage(
                "--quarot-select applies to --algorithm quarot,ALGORITHM".into(),
            ));
        }
        if a.algorithm.rotate {
            r.passes.insert(0, a.quarot_pass()?);
            r.name = format!("quarot+{}", r.name);
            r.build()?;
        }
        if a.budgeted() {
            a.apply_budget(&mut r)?;
        } else if a.sensitivity.is_some() {
            return Err(crate::Error::Usage(
                "--sensitivity weighs the allocation of --size-budget/--max-size: give one".into(),
            ));
        }
        if a.scale_type == Some(ScaleTypeArg::F16) {
            a.apply_scale_type(&mut r)?;
        }
        Ok(r)
    }

    /// `--scale-type f16`: the `scale-type` pass after every quantizer (it retypes
    /// what they wrote), before a final dead-code sweep.
    fn apply_scale_type(&self, r: &mut Recipe) -> Result<()> {
        use toml::Value as V;
        let nbits = matches!(
            self.algorithm.base,
            AlgorithmArg::Rtn | AlgorithmArg::Hqq | AlgorithmArg::Gptq | AlgorithmArg::Awq
        );
        if !nbits || self.format == Some(FormatArg::Qdq) {
            return Err(crate::Error::Usage(
                "--scale-type applies to MatMulNBits (--algorithm rtn|hqq|gptq|awq, not --format \
                 qdq)"
                    .into(),
            ));
        }
        let mut t = toml::Table::new();
        t.insert("name".into(), V::String("scale-type".into()));
        t.insert("to".into(), V::String("f16".into()));
        let at = r
            .passes
            .iter()
            .position(|p| p.get("name").and_then(|v| v.as_str()) == Some("remove-dead"))
            .unwrap_or(r.passes.len());
        r.passes.insert(at, t);
        r.build()?;
        Ok(())
    }

    /// The `quarot` pass of `quarot,ALGORITHM`: with `measured`, the rounding it
    /// predicts is the quantizer's and its calibration the quantizer's.
    fn quarot_pass(&self) -> Result<toml::Table> {
        use toml::Value as V;
        let mut t = toml::Table::new();
        t.insert("name".into(), V::String("quarot".into()));
        let calibrated = self.calib.is_some() || self.calib_text.is_some();
        if self.algorithm.base == AlgorithmArg::Dynamic {
            // The choice predicts N-bit weight rounding, not int8 activations.
            if self.quarot_select == Some(QuarotSelectArg::Measured) {
                return Err(crate::Error::Usage(
                    "--quarot-select measured predicts N-bit weight rounding: quarot,dynamic \
                     rotates all"
                        .into(),
                ));
            }
            return Ok(t);
        }
        let measured = match self.quarot_select {
            Some(QuarotSelectArg::Measured) => true,
            Some(QuarotSelectArg::All) => false,
            // GPTQ compensates what the rotation spreads (SmolLM2-135M, sym b32:
            // quarot,gptq 18.40 rotating all, 18.51 measured by rounding error).
            None => calibrated && self.algorithm.base != AlgorithmArg::Gptq,
        };
        if !measured {
            return Ok(t);
        }
        t.insert("select".into(), V::String("measured".into()));
        t.insert("bits".into(), V::Integer(self.bits.unwrap_or(4) as i64));
        t.insert(
            "block-size".into(),
            V::Integer(self.block_size.unwrap_or(32) as i64),
        );
        t.insert(
            "symmetric".into(),
            V::Boolean(!(self.asymmetric || self.algorithm.base == AlgorithmArg::Hqq)),
        );
        self.calibration_keys(&mut t);
        Ok(t)
    }

    /// The calibration flags as a calibrated pass's keys (data, samples, memory and
    /// the runtime it runs on).
    fn calibration_keys(&self, t: &mut toml::Table) {
        use toml::Value as V;
        for (key, v) in [
            ("calib", &self.calib),
            ("calib-text", &self.calib_text),
            ("tokenizer", &self.tokenizer),
        ] {
            if let Some(v) = v {
                t.insert(key.into(), V::String(v.clone()));
            }
        }
        for (key, v) in [
            ("calib-samples", self.calib_samples.map(|n| n as i64)),
            ("calib-seqlen", self.calib_seqlen.map(|n| n as i64)),
            ("calib-memory-mb", self.calib_memory_mb.map(|n| n as i64)),
        ] {
            if let Some(v) = v {
                t.insert(key.into(), V::Integer(v));
            }
        }
        t.insert(
            "runtime".into(),
            V::String(self.pipeline.verify.rt.runtime.to_string()),
        );
    }

    pub(super) fn budgeted(&self) -> bool {
        self.size_budget.is_some() || self.max_size.is_some()
    }

    /// Whether the accuracy tuning loop runs (`--max-ppl-increase`, `--max-error`).
    pub fn tuned(&self) -> bool {
        self.max_ppl_increase.is_some() || self.max_error.is_some()
    }

    /// Whether a tuning flag is given (the loop refuses its own flags without a
    /// target).
    pub fn tuning(&self) -> bool {
        self.tuned() || self.tune_rounds.is_some() || self.tune_float.is_some()
    }

    /// `--size-budget`/`--max-size`: `mixed-precision` before the quantizer (after a
    /// rotation, which changes the weights it measures), and the embedding table at
    /// the setting it chooses.
    fn apply_budget(&self, r: &mut Recipe) -> Result<()> {
        use toml::Value as V;
        let usage = |m: &str| crate::Error::Usage(m.into());
        if !matches!(
            self.algorithm.base,
            AlgorithmArg::Rtn | AlgorithmArg::Hqq | AlgorithmArg::Gptq | AlgorithmArg::Awq
        ) {
            return Err(usage(
                "--size-budget/--max-size apply to --algorithm rtn|hqq|gptq|awq (MatMulNBits)",
            ));
        }
        if self.format == Some(FormatArg::Qdq) {
            return Err(usage(
                "--size-budget/--max-size write MatMulNBits, not --format qdq",
            ));
        }
        if self.tied_head == TiedHeadArg::Separate || self.tied_head_bits.is_some() {
            return Err(usage(
                "--size-budget/--max-size choose the tied table's bits themselves (--tied-head \
                 shared or calibrated, no --tied-head-bits)",
            ));
        }
        if self.bits.is_some() || self.block_size.is_some() || self.nodes_config.is_some() {
            return Err(usage(
                "--size-budget/--max-size choose bits and block sizes per weight: drop --bits, \
                 --block-size and --nodes-config",
            ));
        }
        let t = self.mixed_pass();
        let at = usize::from(self.algorithm.rotate);
        r.passes.insert(at, t);
        let has_gather = r
            .passes
            .iter()
            .any(|p| p.get("name").and_then(|v| v.as_str()) == Some("gather-block-quantized"));
        if !self.embeddings && !has_gather {
            let mut g = toml::Table::new();
            g.insert("name".into(), V::String("gather-block-quantized".into()));
            g.insert("symmetric".into(), V::Boolean(!self.asymmetric));
            r.passes.push(g);
        }
        r.name = format!("mixed+{}", r.name);
        r.build()?;
        Ok(())
    }

    /// The `mixed-precision` pass of the flags: the budget when one is given (the
    /// tuning loop without one reads only its table of settings), calibration and
    /// selection as the quantizer's.
    pub(super) fn mixed_pass(&self) -> toml::Table {
        use toml::Value as V;
        let hqq = self.algorithm.base == AlgorithmArg::Hqq;
        let mut t = toml::Table::new();
        t.insert("name".into(), V::String("mixed-precision".into()));
        match (self.size_budget, self.max_size) {
            (Some(b), _) => t.insert("budget-bpw".into(), V::Float(b)),
            (_, Some(m)) => t.insert("max-size-mb".into(), V::Float(m)),
            // More than float32 costs: every setting fits; the allocation is unused.
            _ => t.insert("budget-bpw".into(), V::Float(64.0)),
        };
        if self.tuned() {
            t.insert(
                "allow-float".into(),
                V::Boolean(self.tune_float.unwrap_or(true)),
            );
        }
        t.insert("symmetric".into(), V::Boolean(!(self.asymmetric || hqq)));
        if self.scale_type == Some(ScaleTypeArg::F16) {
            t.insert("scale-type".into(), V::String("f16".into()));
        }
        if let Some(sens) = self.sensitivity {
            let name = match sens {
                SensitivityArg::None => "none",
                SensitivityArg::Kind => "kind",
                SensitivityArg::Layer => "layer",
            };
            t.insert("sensitivity".into(), V::String(name.into()));
        }
        t.insert(
            "algorithm".into(),
            V::String(if hqq { "hqq" } else { "rtn" }.into()),
        );
        // The quantizer's calibration samples, so sensitivities are measured on them.
        self.calibration_keys(&mut t);
        for (key, v) in [
            ("exclude", &self.exclude),
            ("include-ops", &self.include_op),
        ] {
            if !v.is_empty() {
                t.insert(
                    key.into(),
                    V::Array(v.iter().cloned().map(V::String).collect()),
                );
            }
        }
        t
    }

    /// A copy with `--algorithm` (Olive's names included) and `--precision` turned
    /// into the flags they stand for.
    pub(super) fn resolved(&self) -> Result<QuantizeArgs> {
        let usage = |m: String| crate::Error::Usage(m);
        let mut a = self.clone();
        let explicit = self.algorithm_flag;
        a.algorithm = explicit.unwrap_or(a.algorithm);
        match a.algorithm.base {
            AlgorithmArg::Quarot => {
                return Err(usage(
                    "--algorithm quarot rotates, then quantizes: name the quantizer, \
                     quarot,rtn|quarot,gptq|quarot,awq|quarot,hqq|quarot,dynamic (`onnxq rotate` \
                     writes the rotated float model)"
                        .into(),
                ))
            }
            AlgorithmArg::Kquant => {
                return Err(usage(
                    "--algorithm kquant: k-quants are not built in this version of onnxq \
                     (built: rtn, hqq, bnb4, gptq, awq, dynamic, static, quarot,ALG)"
                        .into(),
                ))
            }
            _ => {}
        }
        if a.is_symmetric == Some(false) {
            if matches!(
                a.algorithm.base,
                AlgorithmArg::Dynamic | AlgorithmArg::Static
            ) {
                a.weight_type.get_or_insert(IntTypeArg::Uint8);
            } else {
                a.asymmetric = true;
            }
        } else if a.is_symmetric == Some(true)
            && matches!(
                a.algorithm.base,
                AlgorithmArg::Dynamic | AlgorithmArg::Static
            )
        {
            a.weight_type.get_or_insert(IntTypeArg::Int8);
        }
        let Some(p) = self.precision else {
            return Ok(a);
        };
        let int8 = matches!(
            a.algorithm.base,
            AlgorithmArg::Dynamic | AlgorithmArg::Static
        );
        let set_bits = |a: &mut QuantizeArgs, bits: u8| match a.bits {
            Some(b) if b != bits => Err(usage(format!(
                "--precision {} means {bits} bits; --bits {b} contradicts it",
                p.to_possible_value()
                    .map_or_else(String::new, |v| v.get_name().to_string())
            ))),
            _ => {
                a.bits = Some(bits);
                Ok(())
            }
        };
        match p {
            PrecisionArg::Fp16 | PrecisionArg::Bf16 => {
                let alg = if p == PrecisionArg::Fp16 {
                    AlgorithmArg::Fp16
                } else {
                    AlgorithmArg::Bf16
                };
                if explicit.is_some_and(|s| s.base != alg) {
                    return Err(usage(format!(
                        "--precision {} is a float conversion: --algorithm {} (or no --algorithm)",
                        if alg == AlgorithmArg::Fp16 {
                            "fp16"
                        } else {
                            "bf16"
                        },
                        if alg == AlgorithmArg::Fp16 {
                            "fp16"
                        } else {
                            "bf16"
                        },
                    )));
                }
                a.algorithm.base = alg;
            }
            PrecisionArg::Nf4 | PrecisionArg::Fp4 => {
                if !matches!(explicit.map(|s| s.base), None | Some(AlgorithmArg::Bnb4)) {
                    return Err(usage(format!(
                        "--precision {} is a bitsandbytes type: --algorithm bnb4 (or no \
                         --algorithm)",
                        if p == PrecisionArg::Nf4 { "nf4" } else { "fp4" }
                    )));
                }
                a.algorithm.base = AlgorithmArg::Bnb4;
                a.quant_type = if p == PrecisionArg::Nf4 {
                    QuantTypeArg::Nf4
                } else {
                    QuantTypeArg::Fp4
                };
            }
            PrecisionArg::Int4 => {
                if int8 || a.algorithm.base == AlgorithmArg::Bnb4 {
                    return Err(usage(
                        "--precision int4 applies to --algorithm rtn|hqq|gptq|awq (bnb4 takes \
                         nf4|fp4, dynamic/static int8|uint8)"
                            .into(),
                    ));
                }
                set_bits(&mut a, 4)?;
            }
            PrecisionArg::Int8 | PrecisionArg::Uint8 => {
                let unsigned = p == PrecisionArg::Uint8;
                if int8 {
                    a.weight_type = Some(if unsigned {
                        IntTypeArg::Uint8
                    } else {
                        IntTypeArg::Int8
                    });
                } else if a.algorithm.base == AlgorithmArg::Bnb4 {
                    return Err(usage("--algorithm bnb4 takes --precision nf4|fp4".into()));
                } else {
                    set_bits(&mut a, 8)?;
                    a.asymmetric |= unsigned;
                }
            }
        }
        Ok(a)
    }

    fn resolved_recipe(&self) -> Result<Recipe> {
        if matches!(self.algorithm.base, AlgorithmArg::Fp16 | AlgorithmArg::Bf16) {
            return self.float16_recipe();
        }
        if self.keep_io_types.is_some() || !self.block_op.is_empty() {
            return Err(crate::Error::invalid(
                "--keep-io-types and --block-op apply to --algorithm fp16|bf16",
            ));
        }
        if matches!(self.algorithm.base, AlgorithmArg::Gptq | AlgorithmArg::Awq) {
            return self.gptq_recipe();
        }
        if let Some(flag) = self.gptq_only_flag() {
            let text = matches!(flag, "--calib-text" | "--tokenizer" | "--calib-seqlen");
            return Err(crate::Error::invalid(format!(
                "{flag} applies to --algorithm gptq|awq{}",
                if text { "|static" } else { "" }
            )));
        }
        if self.algorithm.base == AlgorithmArg::Static {
            let mut r = self.int8_recipe()?;
            if let Some(n) = self.calib_samples {
                r.set("calib-samples", toml::Value::Integer(n as i64));
                r.build()?;
            }
            return Ok(r);
        }
        if matches!(self.algorithm.base, AlgorithmArg::Dynamic) {
            return self.int8_recipe();
        }
        if let Some(flag) = self.int8_only_flag() {
            return Err(crate::Error::invalid(format!(
                "{flag} applies to --algorithm dynamic|static"
            )));
        }
        let format = match self.format {
            None => FormatArg::Matmulnbits,
            Some(FormatArg::Qoperator) => {
                return Err(crate::Error::invalid(
                    "--format qoperator applies to --algorithm static (weight-only formats: \
                     matmulnbits, qdq)",
                ))
            }
            Some(f) => f,
        };
        let name = match (self.algorithm.base, format) {
            (AlgorithmArg::Rtn, FormatArg::Matmulnbits) => "int4-rtn",
            (AlgorithmArg::Rtn, _) => "int4-rtn-qdq",
            (AlgorithmArg::Hqq, _) => "int4-hqq",
            (_, _) => "bnb4-nf4",
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
        if self.algorithm.base != AlgorithmArg::Bnb4 {
            let f = match format {
                FormatArg::Matmulnbits => "matmulnbits",
                _ => "qdq",
            };
            r.set("format", V::String(f.into()));
        }
        if self.algorithm.base == AlgorithmArg::Bnb4 {
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
        self.apply_tied_head(&mut r, format == FormatArg::Qdq)?;
        // Validate everything (bits/block size combinations) before any work.
        r.build()?;
        Ok(r)
    }
}

impl QuantizeArgs {
    /// `--algorithm fp16|bf16`: the float16 recipe with --keep-io-types, --exclude
    /// (node-block-list) and --block-op (op-block-list, added to the default).
    fn float16_recipe(&self) -> Result<Recipe> {
        use toml::Value as V;
        let fp16 = self.algorithm.base == AlgorithmArg::Fp16;
        if self.algorithm.rotate || self.budgeted() {
            return Err(crate::Error::Usage(
                "--algorithm fp16|bf16 converts floats: no quarot, --size-budget or --max-size"
                    .into(),
            ));
        }
        if self.bits.is_some() || self.block_size.is_some() || self.embeddings {
            return Err(crate::Error::Usage(
                "--bits, --block-size and --embeddings apply to the N-bit algorithms, not \
                 --algorithm fp16|bf16"
                    .into(),
            ));
        }
        if let Some(flag) = self.gptq_only_flag().or(self.int8_only_flag()) {
            return Err(crate::Error::invalid(format!(
                "{flag} does not apply to --algorithm fp16|bf16"
            )));
        }
        let mut r = Recipe::load(if fp16 { "fp16" } else { "bf16" })?;
        if let Some(k) = self.keep_io_types {
            r.set("keep-io-types", V::Boolean(k));
        }
        if !self.exclude.is_empty() {
            r.set(
                "node-block-list",
                V::Array(self.exclude.iter().cloned().map(V::String).collect()),
            );
        }
        if !self.block_op.is_empty() {
            let mut ops: Vec<String> = crate::transforms::float16::DEFAULT_OP_BLOCK_LIST
                .iter()
                .map(|s| s.to_string())
                .collect();
            ops.extend(self.block_op.iter().cloned());
            r.set(
                "op-block-list",
                V::Array(ops.into_iter().map(V::String).collect()),
            );
        }
        r.build()?;
        Ok(r)
    }

    /// `--tied-head` and `--tied-head-bits` on a weight-only recipe. The QDQ format
    /// keeps to standard ops, so it never shares a table through GatherBlockQuantized.
    fn apply_tied_head(&self, r: &mut Recipe, qdq: bool) -> Result<()> {
        if self.tied_head == TiedHeadArg::Calibrated {
            if self.algorithm.base != AlgorithmArg::Gptq || qdq {
                return Err(crate::Error::Usage(
                    "--tied-head calibrated: the head's table quantized by GPTQ (--algorithm \
                     gptq or awq,gptq)"
                        .into(),
                ));
            }
            if self.tied_head_bits.is_some() {
                return Err(crate::Error::Usage(
                    "--tied-head calibrated stores the table at --bits (one table, the body's \
                     setting): drop --tied-head-bits"
                        .into(),
                ));
            }
            // The head quantized as any MatMul (GPTQ), then the embedding Gather reads
            // its rows (gather-block-quantized shares a MatMulNBits that holds the
            // table's quantized rows at the same bits and block size).
            r.passes
                .retain(|t| t.get("name").and_then(|v| v.as_str()) != Some("tied-embedding"));
            let mut t = toml::Table::new();
            t.insert(
                "name".into(),
                toml::Value::String("gather-block-quantized".into()),
            );
            t.insert(
                "bits".into(),
                toml::Value::Integer(self.bits.unwrap_or(4) as i64),
            );
            t.insert(
                "block-size".into(),
                toml::Value::Integer(self.block_size.unwrap_or(32) as i64),
            );
            t.insert("symmetric".into(), toml::Value::Boolean(!self.asymmetric));
            r.passes.push(t);
            return Ok(());
        }
        let separate = self.tied_head == TiedHeadArg::Separate || qdq;
        if separate {
            if self.tied_head_bits.is_some() {
                return Err(crate::Error::invalid(if qdq {
                    "--tied-head-bits: the qdq format does not share a tied table"
                } else {
                    "--tied-head-bits applies to --tied-head shared"
                }));
            }
            r.passes
                .retain(|t| t.get("name").and_then(|v| v.as_str()) != Some("tied-embedding"));
        } else if let Some(b) = self.tied_head_bits {
            r.set("head-bits", toml::Value::Integer(b as i64));
        }
        Ok(())
    }

    /// A flag only GPTQ/AWQ (and, for the text calibration ones, static) take, if
    /// given.
    fn gptq_only_flag(&self) -> Option<&'static str> {
        // A size budget and the tuning loop calibrate (mixed-precision) whatever the
        // algorithm.
        let calibrates = self.budgeted()
            || self.tuned()
            || (self.algorithm.rotate && self.algorithm.base != AlgorithmArg::Dynamic);
        let not_static = self.algorithm.base != AlgorithmArg::Static && !calibrates;
        [
            (self.calib_text.is_some() && not_static, "--calib-text"),
            (self.tokenizer.is_some() && not_static, "--tokenizer"),
            (
                self.calib_samples.is_some() && not_static,
                "--calib-samples",
            ),
            (self.calib_seqlen.is_some() && not_static, "--calib-seqlen"),
            (
                self.calib_memory_mb.is_some() && !calibrates,
                "--calib-memory-mb",
            ),
            (self.act_order.is_some(), "--act-order"),
            (self.damp.is_some(), "--damp"),
            (self.calib_sequential.is_some(), "--calib-sequential"),
        ]
        .into_iter()
        .find(|(set, _)| *set)
        .map(|(_, f)| f)
    }

    fn gptq_recipe(&self) -> Result<Recipe> {
        use toml::Value as V;
        let err = |m: String| crate::Error::invalid(m);
        for (set, flag) in [
            (
                self.calib_method != CalibMethodArg::Minmax,
                "--calib-method",
            ),
            (self.percentile.is_some(), "--percentile"),
            (self.per_channel.is_some(), "--per-channel"),
            (self.reduce_range, "--reduce-range"),
            (self.activation_type.is_some(), "--activation-type"),
            (self.weight_type.is_some(), "--weight-type"),
            (self.activations.is_some(), "--activations"),
            (self.smooth_quant.is_some(), "--smooth-quant"),
            (self.exclude_worst.is_some(), "--exclude-worst"),
            (self.embeddings, "--embeddings"),
            (self.nodes_config.is_some(), "--nodes-config"),
            (self.quant_type != QuantTypeArg::Nf4, "--quant-type"),
            (
                !matches!(self.format, None | Some(FormatArg::Matmulnbits)),
                "--format",
            ),
        ] {
            if set {
                return Err(err(format!(
                    "{flag} does not apply to --algorithm gptq|awq (they write MatMulNBits)"
                )));
            }
        }
        let awq = self.algorithm.base == AlgorithmArg::Awq;
        if awq {
            for (set, flag) in [
                (self.act_order.is_some(), "--act-order"),
                (self.damp.is_some(), "--damp"),
                (self.calib_sequential.is_some(), "--calib-sequential"),
            ] {
                if set {
                    return Err(err(format!("{flag} applies to --algorithm gptq")));
                }
            }
        }
        let mut r = Recipe::load(if awq { "awq-int4" } else { "gptq-int4" })?;
        if self.algorithm.awq_scales {
            // AWQ's pass as its shipped recipe configures it, just before GPTQ's.
            let scales = Recipe::load("awq-int4")?
                .passes
                .into_iter()
                .find(|t| t.get("name").and_then(|v| v.as_str()) == Some("awq"))
                .ok_or_else(|| err("the shipped awq-int4 recipe has no awq pass".into()))?;
            let at = r
                .passes
                .iter()
                .position(|t| t.get("name").and_then(|v| v.as_str()) == Some("gptq"))
                .ok_or_else(|| err("the shipped gptq-int4 recipe has no gptq pass".into()))?;
            r.passes.insert(at, scales);
            r.name = format!("awq+{}", r.name);
        }
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
        let strings = [
            ("calib", &self.calib),
            ("calib-text", &self.calib_text),
            ("tokenizer", &self.tokenizer),
        ];
        for (key, v) in strings {
            if let Some(v) = v {
                r.set(key, V::String(v.clone()));
            }
        }
        if let Some(n) = self.calib_samples {
            r.set("calib-samples", V::Integer(n as i64));
        }
        if let Some(n) = self.calib_seqlen {
            r.set("calib-seqlen", V::Integer(n as i64));
        }
        if let Some(n) = self.calib_memory_mb {
            r.set("calib-memory-mb", V::Integer(n as i64));
        }
        if let Some(a) = self.act_order {
            r.set("act-order", V::Boolean(a));
        }
        if let Some(s) = self.calib_sequential {
            r.set("calib-sequential", V::Boolean(s));
        }
        if let Some(d) = self.damp {
            r.set("damp", V::Float(d));
        }
        // Calibration runs on the runtime --runtime names (auto: ONNX Runtime when found).
        r.set(
            "runtime",
            V::String(self.pipeline.verify.rt.runtime.to_string()),
        );
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
        self.apply_tied_head(&mut r, false)?;
        // Validate everything (paths, tokenizer, combinations) before any work.
        r.build()?;
        Ok(r)
    }

    /// A flag only the int8 algorithms take, if given.
    fn int8_only_flag(&self) -> Option<&'static str> {
        [
            (self.calib.is_some(), "--calib"),
            (
                self.calib_method != CalibMethodArg::Minmax,
                "--calib-method",
            ),
            (self.percentile.is_some(), "--percentile"),
            (self.per_channel.is_some(), "--per-channel"),
            (self.reduce_range, "--reduce-range"),
            (self.activation_type.is_some(), "--activation-type"),
            (self.weight_type.is_some(), "--weight-type"),
            (self.activations.is_some(), "--activations"),
            (self.smooth_quant.is_some(), "--smooth-quant"),
            (self.exclude_worst.is_some(), "--exclude-worst"),
        ]
        .into_iter()
        .find(|(set, _)| *set)
        .map(|(_, f)| f)
    }

    /// A flag only the weight-only algorithms take, if given.
    fn weight_only_flag(&self) -> Option<&'static str> {
        [
            (self.bits.is_some(), "--bits"),
            (self.block_size.is_some(), "--block-size"),
            (self.asymmetric, "--asymmetric"),
            (self.accuracy_level.is_some(), "--accuracy-level"),
            (self.embeddings, "--embeddings"),
            (self.quant_type != QuantTypeArg::Nf4, "--quant-type"),
        ]
        .into_iter()
        .find(|(set, _)| *set)
        .map(|(_, f)| f)
    }

    fn int8_recipe(&self) -> Result<Recipe> {
        use toml::Value as V;
        let err = |m: String| crate::Error::invalid(m);
        if let Some(flag) = self.weight_only_flag() {
            return Err(err(format!(
                "{flag} applies to the weight-only algorithms (rtn, hqq, bnb4)"
            )));
        }
        let is_static = self.algorithm.base == AlgorithmArg::Static;
        let name =
            if is_static {
                match self.format {
                    None | Some(FormatArg::Qdq) => "int8-static-qdq",
                    Some(FormatArg::Qoperator) => "int8-static-qoperator",
                    Some(FormatArg::Matmulnbits) => return Err(err(
                        "--format matmulnbits is weight-only; --algorithm static writes qdq or \
                         qoperator"
                            .into(),
                    )),
                }
            } else {
                if matches!(self.format, Some(FormatArg::Qdq | FormatArg::Matmulnbits)) {
                    return Err(err(
                        "--algorithm dynamic writes integer operators (DynamicQuantizeLinear + \
                     MatMulInteger/ConvInteger); --format does not apply"
                            .into(),
                    ));
                }
                for (set, flag) in [
                    (self.calib.is_some(), "--calib"),
                    (
                        self.calib_method != CalibMethodArg::Minmax,
                        "--calib-method",
                    ),
                    (self.percentile.is_some(), "--percentile"),
                    (self.activation_type.is_some(), "--activation-type"),
                    (self.smooth_quant.is_some(), "--smooth-quant"),
                    (self.exclude_worst.is_some(), "--exclude-worst"),
                ] {
                    if set {
                        return Err(err(format!(
                            "{flag} applies to --algorithm static (dynamic quantization needs no \
                         calibration)"
                        )));
                    }
                }
                "int8-dynamic"
            };
        let mut r = Recipe::load(name)?;
        // SmoothQuant runs first and gets the same calibration and quantization
        // settings as the static pass (its auto-α search models that pass).
        if let Some(alpha) = &self.smooth_quant {
            let alpha = match alpha.as_str() {
                "auto" => V::String("auto".into()),
                a => V::Float(a.parse::<f64>().map_err(|_| {
                    err(format!(
                        "--smooth-quant takes an alpha in [0, 1] or auto, not '{a}'"
                    ))
                })?),
            };
            let mut t = toml::Table::new();
            t.insert("name".into(), V::String("smooth-quant".into()));
            t.insert("alpha".into(), alpha);
            r.passes.insert(0, t);
        }
        let type_name = |t: IntTypeArg| match t {
            IntTypeArg::Int8 => "int8",
            IntTypeArg::Uint8 => "uint8",
            IntTypeArg::Int16 => "int16",
            IntTypeArg::Float8e4m3fn => "float8e4m3fn",
        };
        if let Some(t) = self.weight_type {
            if matches!(t, IntTypeArg::Int16 | IntTypeArg::Float8e4m3fn) {
                return Err(err("--weight-type takes int8 or uint8".into()));
            }
            r.set("weight-type", V::String(type_name(t).into()));
        }
        if let Some(t) = self.activation_type {
            if t == IntTypeArg::Float8e4m3fn && self.format == Some(FormatArg::Qoperator) {
                return Err(err(
                    "float8 activations have no QOperator kernels; use --format qdq".into(),
                ));
            }
            r.set("activation-type", V::String(type_name(t).into()));
        }
        if let Some(a) = self.activations {
            if is_static {
                return Err(err(
                    "--activations applies to --algorithm dynamic (static scales are calibrated \
                     per tensor)"
                        .into(),
                ));
            }
            let a = match a {
                ActivationsArg::PerToken => "per-token",
                ActivationsArg::PerTensor => "per-tensor",
            };
            r.set("activations", V::String(a.into()));
        }
        if let Some(on) = self.per_channel {
            r.set("per-channel", V::Boolean(on));
        }
        if self.reduce_range {
            r.set("reduce-range", V::Boolean(true));
        }
        if let Some(c) = &self.calib {
            r.set("calib", V::String(c.clone()));
        }
        for (key, v) in [
            ("calib-text", &self.calib_text),
            ("tokenizer", &self.tokenizer),
        ] {
            if let Some(v) = v {
                r.set(key, V::String(v.clone()));
            }
        }
        if let Some(n) = self.calib_seqlen {
            r.set("calib-seqlen", V::Integer(n as i64));
        }
        if is_static {
            let m = match self.calib_method {
                CalibMethodArg::Minmax => "minmax",
                CalibMethodArg::Entropy => "entropy",
                CalibMethodArg::Percentile => "percentile",
                CalibMethodArg::Distribution => "distribution",
            };
            r.set("calib-method", V::String(m.into()));
        }
        if let Some(p) = self.percentile {
            r.set("percentile", V::Float(p));
        }
        if let Some(n) = &self.exclude_worst {
            let v = match n.as_str() {
                "auto" => V::String("auto".into()),
                n => V::Integer(n.parse::<i64>().map_err(|_| {
                    err(format!("--exclude-worst takes a count or auto, not '{n}'"))
                })?),
            };
            r.set("exclude-worst", v);
        }
        if let Some(f) = &self.nodes_config {
            r.set("nodes-config", V::String(f.clone()));
        }
        if !self.exclude.is_empty() {
            r.set(
                "exclude",
                V::Array(self.exclude.iter().cloned().map(V::String).collect()),
            );
        }
        if !self.include_op.is_empty() {
            r.set(
                "op-types",
                V::Array(self.include_op.iter().cloned().map(V::String).collect()),
            );
        }
        // Validate everything (paths, combinations) before any work.
        r.build()?;
        Ok(r)
    }
}

pub fn run(args: &QuantizeArgs) -> Result<i32> {
    let recipe = args.recipe().map_err(crate::Error::into_usage)?;
    pipeline::run(&recipe, &args.input, &args.output, &args.pipeline)
}
