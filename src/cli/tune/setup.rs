//! What the tuning flags ask for: the recipe the loop runs (the quantizer's, with
//! `mixed-precision` where a size budget puts it) and the settings weights start at.
use crate::cli::quantize::{AlgorithmArg, FormatArg, QuantizeArgs};
use crate::error::Result;
use crate::pass::recipe::Recipe;
use crate::transforms::common::select::Precision;

/// Rounds when `--tune-rounds` is not given.
pub const DEFAULT_ROUNDS: usize = 8;

/// What the flags ask the loop for.
pub struct Setup {
    /// The quantizer's recipe with `mixed-precision` at `at`.
    pub recipe: Recipe,
    pub at: usize,
    pub budgeted: bool,
    /// The uniform setting a weight starts at without a budget.
    pub start: Precision,
    /// A shared tied table's setting (head bits, block size), when the recipe shares one.
    pub head: Option<Precision>,
    pub rounds: usize,
    /// Whether float is a setting a weight may be promoted to.
    pub float: bool,
    pub max_ppl_increase: Option<f64>,
    pub max_error: Option<f64>,
}

impl Setup {
    /// The tuning loop's recipe (the quantizer's with `mixed-precision` where a
    /// budget puts it) and the settings it starts from, read from that recipe.
    pub fn of(args: &QuantizeArgs) -> Result<Setup> {
        let usage = |m: &str| crate::Error::Usage(m.into());
        if !args.tuned() {
            return Err(usage(
                "--tune-rounds and --tune-float apply with --max-ppl-increase or --max-error",
            ));
        }
        let a = args.resolved()?;
        if !matches!(
            a.algorithm.base,
            AlgorithmArg::Rtn | AlgorithmArg::Hqq | AlgorithmArg::Gptq | AlgorithmArg::Awq
        ) {
            return Err(usage(
                "--max-ppl-increase/--max-error tune --algorithm rtn|hqq|gptq|awq (MatMulNBits)",
            ));
        }
        if a.format == Some(FormatArg::Qdq) {
            return Err(usage(
                "--max-ppl-increase/--max-error tune MatMulNBits settings, not --format qdq",
            ));
        }
        if a.nodes_config.is_some() {
            return Err(usage(
                "--max-ppl-increase/--max-error choose each weight's setting: drop                  --nodes-config",
            ));
        }
        if a.pipeline.stop_after.is_some() {
            return Err(usage(
                "--stop-after: the tuning loop measures whole pipelines",
            ));
        }
        for (v, flag) in [
            (a.max_ppl_increase, "--max-ppl-increase"),
            (a.max_error, "--max-error"),
        ] {
            if v.is_some_and(|v| !(v >= 0.0 && v.is_finite())) {
                return Err(crate::Error::Usage(format!("{flag} takes a number >= 0")));
            }
        }
        if a.max_ppl_increase.is_some() && (a.calib_text.is_none() || a.tokenizer.is_none()) {
            return Err(usage(
                "--max-ppl-increase measures perplexity on the held-back end of --calib-text: \
                 give --calib-text and --tokenizer",
            ));
        }
        if a.tune_rounds == Some(0) {
            return Err(usage("--tune-rounds takes at least 1"));
        }
        let mut recipe = args.recipe()?;
        let at = usize::from(a.algorithm.rotate);
        if !a.budgeted() {
            recipe.passes.insert(at, a.mixed_pass());
            recipe.build()?;
        }
        let int = |pass: &str, key: &str| {
            recipe
                .passes
                .iter()
                .find(|t| t.get("name").and_then(|v| v.as_str()) == Some(pass))
                .map(|t| t.get(key).and_then(|v| v.as_integer()))
        };
        // The quantizer that writes the weights: gptq, else matmul-nbits (after awq).
        let quantizer = if int("gptq", "bits").is_some() {
            "gptq"
        } else {
            "matmul-nbits"
        };
        let setting = |pass: &str, bits_key: &str, bits: i64| -> Option<Precision> {
            let b = int(pass, bits_key)?.unwrap_or(bits);
            let s = int(pass, "block-size")?.unwrap_or(32);
            Some(Precision::Nbits {
                bits: u8::try_from(b).ok()?,
                block_size: usize::try_from(s).ok()?,
            })
        };
        let start = setting(quantizer, "bits", 4)
            .ok_or_else(|| usage("tuning: the recipe has no matmul-nbits or gptq pass"))?;
        let head = setting("tied-embedding", "head-bits", 8);
        Ok(Setup {
            at,
            budgeted: a.budgeted(),
            start,
            head,
            rounds: a.tune_rounds.unwrap_or(DEFAULT_ROUNDS),
            float: a.tune_float.unwrap_or(true),
            max_ppl_increase: a.max_ppl_increase,
            max_error: a.max_error,
            recipe,
        })
    }
}
