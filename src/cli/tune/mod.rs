//! `quantize --max-ppl-increase PCT` / `--max-error X`: the accuracy tuning loop, as
//! Intel Neural Compressor's. Quantize, measure, promote the most sensitive weights
//! to a more precise setting, repeat until the target holds.
//!
//! - Sensitivity: `mixed-precision`'s table (each weight's settings with their
//!   stored bytes and calibrated predicted error), computed once.
//! - Start: with a size budget, the allocation under it; without one, the
//!   algorithm's uniform setting (e.g. int4/b32, a shared tied table at its head
//!   bits; an untied embedding table is not tuned).
//! - Each round re-runs the recipe on the input file with the plan as a
//!   `precision-plan` pass in place of `mixed-precision`, writes the candidate to a
//!   temporary directory next to the output and measures it there (only the runtime
//!   holds it while it is measured).
//! - Promotion: the steps removing the most predicted error (× parameters) per
//!   byte first, at least 1, 2, 4, ... per round and as many as the measured miss
//!   suggests (the predicted error scaled by target / measured); within the budget
//!   when there is one.
//! - Perplexity is measured on the held-back end of the calibration text
//!   ([`split_text`]), which calibration never sees.
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::log::{self, Level};
use super::pipeline;
use super::quantize::QuantizeArgs;
use crate::error::{Error, Result};
use crate::eval::{evaluate, EvalOptions};
use crate::ir::Model;
use crate::pass::recipe::Recipe;
use crate::pass::{run_pipeline_with, PassCx, PrecisionRow, RunOptions};
use crate::quant::mixed::Candidate;
use crate::quant::promote::{any_step_left, promote};
use crate::runtime::RuntimeOptions;
use crate::transforms::common::select::Precision;
use setup::Setup;

mod setup;

/// Percent of the calibration text (by characters) held back for perplexity.
pub const HELD_BACK_PCT: usize = 15;

/// Splits a calibration text into (calibration, held back): the held-back part
/// starts at the first whitespace at or after 85 % of the characters, so no word is
/// cut.
pub fn split_text(text: &str) -> (&str, &str) {
    let chars = text.chars().count();
    let mark = chars * (100 - HELD_BACK_PCT) / 100;
    let at = text.char_indices().nth(mark).map_or(text.len(), |(i, _)| i);
    let cut = text[at..]
        .char_indices()
        .find(|(_, c)| c.is_whitespace())
        .map_or(text.len(), |(i, c)| at + i + c.len_utf8());
    text.split_at(cut)
}

/// One weight the loop chooses a setting for.
struct Weight {
    name: String,
    nodes: Vec<String>,
    params: u64,
    /// Allowed settings: (precision, stored bytes, predicted relative error).
    options: Vec<(Precision, u64, f64)>,
    choice: usize,
}

impl Weight {
    fn setting(&self) -> Precision {
        self.options[self.choice].0
    }
}

#[derive(Serialize, Debug, Clone)]
struct Promotion {
    weight: String,
    from: String,
    to: String,
    /// Predicted relative output error before and after.
    predicted_error_from: f64,
    predicted_error_to: f64,
    bytes_added: i64,
}

#[derive(Serialize, Debug, Clone, Default)]
struct Measured {
    #[serde(skip_serializing_if = "Option::is_none")]
    perplexity: Option<f64>,
    /// Perplexity above the float model's, in percent.
    #[serde(skip_serializing_if = "Option::is_none")]
    ppl_increase_pct: Option<f64>,
    /// Worst end-to-end relative L2 error of the float outputs.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<f64>,
}

#[derive(Serialize, Debug, Clone)]
struct Round {
    round: usize,
    /// Promotions made before this round's quantization.
    promotions: Vec<Promotion>,
    /// Bytes of the tuned weights at this round's settings.
    weight_bytes: u64,
    measured: Measured,
    met: bool,
}

/// The perplexity measurement: the held-back tokens and the float model's score.
struct HeldBack {
    ids: Vec<i64>,
    calibration_chars: usize,
    held_back_chars: usize,
    float_perplexity: f64,
}

struct Loop<'a> {
    args: &'a QuantizeArgs,
    setup: &'a Setup,
    held: Option<HeldBack>,
    eval: EvalOptions,
    calib_dir: Option<PathBuf>,
}

pub fn run(args: &QuantizeArgs) -> Result<i32> {
    let mut setup = Setup::of(args).map_err(Error::into_usage)?;
    let dir = args
        .output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // Candidates live next to the output (same disk as the result); removed on
    // every exit, so a failed target leaves nothing behind.
    let tmp = tempfile::Builder::new()
        .prefix(".onnxq-tune-")
        .tempdir_in(dir)
        .map_err(|e| Error::io(dir, e))?;
    let rt = &args.pipeline.verify.rt;
    let eval = EvalOptions {
        runtime: RuntimeOptions {
            kind: rt.runtime,
            threads: rt.threads,
            ort_config: super::verify_gate::parse_config(&rt.ort_config)?,
        },
        ..Default::default()
    };
    let held = match setup.max_ppl_increase {
        Some(_) => Some(hold_back(args, &mut setup.recipe, tmp.path(), &eval)?),
        None => None,
    };
    let calib_dir = setup
        .recipe
        .passes
        .iter()
        .find_map(|p| p.get("calib").and_then(|v| v.as_str()))
        .map(PathBuf::from);
    let lp = Loop {
        args,
        setup: &setup,
        held,
        eval,
        calib_dir,
    };
    lp.run(tmp.path())
}

/// Writes the calibration part of --calib-text to `dir`, points the recipe at it,
/// and scores the float model on the held-back part.
fn hold_back(
    args: &QuantizeArgs,
    recipe: &mut Recipe,
    dir: &Path,
    eval: &EvalOptions,
) -> Result<HeldBack> {
    let (Some(text_path), Some(tok_path)) = (&args.calib_text, &args.tokenizer) else {
        return Err(Error::Usage(
            "--max-ppl-increase measures perplexity on held-back --calib-text: give \
             --calib-text and --tokenizer"
                .into(),
        ));
    };
    let text = crate::calib::text::read_text(Path::new(text_path))?;
    let (calib, held) = split_text(&text);
    let tok = crate::calib::tokenizer::Tokenizer::from_file(Path::new(tok_path))?;
    let ids = tok.input_ids(held)?;
    // The tokenizer may prepend a start token: it is context, not text.
    if ids.len() < 8 || calib.trim().is_empty() {
        return Err(Error::Usage(format!(
            "{text_path}: too short to hold back its last {HELD_BACK_PCT} % for perplexity \
             ({} tokens held back; give a longer --calib-text)",
            ids.len()
        )));
    }
    let calib_path = dir.join("calibration.txt");
    std::fs::write(&calib_path, calib).map_err(|e| Error::io(&calib_path, e))?;
    recipe.set(
        "calib-text",
        toml::Value::String(calib_path.to_string_lossy().into_owned()),
    );
    let hidden = indicatif::ProgressBar::hidden();
    let float = evaluate(&args.input, None, &ids, eval, &hidden)?;
    log::info(&format!(
        "tune: held back the last {} of {} characters of {text_path} ({} tokens): float \
         perplexity {:.4}",
        held.chars().count(),
        text.chars().count(),
        ids.len(),
        float.perplexity
    ));
    Ok(HeldBack {
        ids,
        calibration_chars: calib.chars().count(),
        held_back_chars: held.chars().count(),
        float_perplexity: float.perplexity,
    })
}

impl Loop<'_> {
    fn run(&self, tmp: &Path) -> Result<i32> {
        let (mut weights, budget) = self.table()?;
        if weights.is_empty() {
            return Err(Error::invalid(
                "tuning: no weight to tune (no MatMul/Gemm with a constant 2-D float weight \
                 matched)",
            ));
        }
        let mut rounds: Vec<Round> = Vec::new();
        let mut promotions: Vec<Promotion> = Vec::new();
        let candidate = tmp.join("candidate.onnx");
        for round in 0..self.setup.rounds {
            let recipe = self.round_recipe(&weights);
            let (built, model) = pipeline::build(&recipe, &self.args.input, &self.args.pipeline)?;
            crate::io::save(&model, &candidate, &Default::default())?;
            drop(model);
            let measured = self.measure(&candidate)?;
            let (met, fraction) = self.judge(&measured);
            let weight_bytes = weights.iter().map(|w| w.options[w.choice].1).sum();
            let r = Round {
                round,
                promotions: std::mem::take(&mut promotions),
                weight_bytes,
                measured,
                met,
            };
            self.print_round(&r, &weights);
            rounds.push(r);
            if met {
                let model = crate::io::load(&candidate)?;
                let tune = self.log(&rounds, &weights, budget);
                return pipeline::finish(
                    built,
                    model,
                    &recipe,
                    &self.args.output,
                    &self.args.pipeline,
                    Some(tune),
                );
            }
            drop(built);
            let last = rounds.last().map(|r| self.describe(&r.measured));
            let last = last.unwrap_or_default();
            if round + 1 == self.setup.rounds {
                return Err(Error::CheckFailed(format!(
                    "{}: not met after {} rounds (--tune-rounds): {last}; {} not written",
                    self.target(),
                    self.setup.rounds,
                    self.args.output.display()
                )));
            }
            promotions = self.promote(&mut weights, round, fraction, budget);
            if promotions.is_empty() {
                return Err(self.stuck(&weights, budget, &last));
            }
        }
        unreachable!("the last round returns")
    }

    /// The target as the flags spell it.
    fn target(&self) -> String {
        let mut t = Vec::new();
        if let Some(p) = self.setup.max_ppl_increase {
            t.push(format!("--max-ppl-increase {p}"));
        }
        if let Some(x) = self.setup.max_error {
            t.push(format!("--max-error {x}"));
        }
        t.join(" and ")
    }

    /// The error when no promotion is left: every weight at its most precise
    /// allowed setting, or a budget with no room.
    fn stuck(&self, weights: &[Weight], budget: Option<u64>, last: &str) -> Error {
        let output = self.args.output.display();
        let (layers, choice) = ladders(weights);
        if let (Some(b), true) = (budget, any_step_left(&layers, &choice)) {
            return Error::CheckFailed(format!(
                "{}: the size budget ({b} bytes of weights) and the accuracy target conflict: \
                 no promotion fits within it ({last}); raise --size-budget/--max-size or \
                 loosen the target; {output} not written",
                self.target()
            ));
        }
        let float = if self.setup.float {
            ""
        } else {
            " (float not allowed: --tune-float false)"
        };
        Error::CheckFailed(format!(
            "{}: cannot be met: with every weight at its most precise allowed setting{float}, \
             {last}; {output} not written",
            self.target()
        ))
    }

    /// `mixed-precision`'s table on the input (after any rotation before it): the
    /// weights with their allowed settings and starting choice, and the byte budget
    /// left for them when there is one.
    fn table(&self) -> Result<(Vec<Weight>, Option<u64>)> {
        let setup = self.setup;
        let prefix = Recipe {
            passes: setup.recipe.passes[..=setup.at].to_vec(),
            ..setup.recipe.clone()
        };
        let passes = prefix.build()?;
        let mut model = crate::io::load(&self.args.input)?;
        let mut cx = PassCx {
            progress: log::enabled(Level::Info),
            seed: self.args.pipeline.seed,
        };
        let run = RunOptions {
            check: self.args.pipeline.check_passes,
            ..Default::default()
        };
        let outcomes = run_pipeline_with(&mut model, &passes, &mut cx, &run)?;
        let mixed = outcomes
            .into_iter()
            .find(|o| o.pass == "mixed-precision")
            .ok_or_else(|| Error::invalid("tuning: the recipe has no mixed-precision pass"))?;
        let roles = Roles::of(&model);
        drop(model);
        let mut weights = Vec::new();
        for row in &mixed.precision {
            if let Some(w) = self.weight(row, &roles)? {
                weights.push(w);
            }
        }
        let budget = if setup.budgeted {
            let c = |k: &str| mixed.counters.get(k).copied().unwrap_or(0);
            // The tables the allocation does not choose count against the budget too.
            let tuned: u64 = weights.iter().map(|w| w.options[w.choice].1).sum();
            let fixed = c("weight bytes").saturating_sub(tuned);
            Some(c("budget bytes").saturating_sub(fixed))
        } else {
            None
        };
        Ok((weights, budget))
    }

    /// The weight of one table row with its starting setting, or none when the loop
    /// leaves it alone (an untied embedding table without a budget).
    fn weight(&self, row: &PrecisionRow, roles: &Roles) -> Result<Option<Weight>> {
        let setup = self.setup;
        let reads = |node: &Option<String>| {
            node.as_ref()
                .is_some_and(|n| row.nodes.iter().any(|r| r == n))
        };
        let start = if setup.budgeted {
            parse(&row.name, &row.setting)?
        } else if reads(&roles.embedding) {
            return Ok(None);
        } else if let (Some(head), true) = (setup.head, reads(&roles.tied_head)) {
            head
        } else {
            setup.start
        };
        let mut options = Vec::new();
        for (s, bytes, error) in &row.candidates {
            let p = parse(&row.name, s)?;
            if p == Precision::Float && !setup.float && p != start {
                continue;
            }
            options.push((p, *bytes, *error));
        }
        let choice = options.iter().position(|o| o.0 == start).ok_or_else(|| {
            Error::Usage(format!(
                "tuning: '{}' starts at {start}, a setting mixed-precision does not \
                     measure (bits 2/4/8, blocks 16..256)",
                row.name
            ))
        })?;
        Ok(Some(Weight {
            name: row.name.clone(),
            nodes: row.nodes.clone(),
            params: row.params,
            options,
            choice,
        }))
    }

    /// The recipe of one round: `mixed-precision` replaced by the plan.
    fn round_recipe(&self, weights: &[Weight]) -> Recipe {
        let mut settings = toml::Table::new();
        for w in weights {
            for n in &w.nodes {
                settings.insert(n.clone(), toml::Value::String(w.setting().to_string()));
            }
        }
        let mut plan = toml::Table::new();
        plan.insert("name".into(), toml::Value::String("precision-plan".into()));
        plan.insert("settings".into(), toml::Value::Table(settings));
        let mut r = self.setup.recipe.clone();
        r.passes[self.setup.at] = plan;
        r.name = format!("tuned+{}", r.name);
        r
    }

    fn measure(&self, candidate: &Path) -> Result<Measured> {
        let mut m = Measured::default();
        if let Some(h) = &self.held {
            let hidden = indicatif::ProgressBar::hidden();
            let r = evaluate(candidate, None, &h.ids, &self.eval, &hidden)?;
            m.perplexity = Some(r.perplexity);
            m.ppl_increase_pct = Some(100.0 * (r.perplexity / h.float_perplexity - 1.0));
        }
        if self.setup.max_error.is_some() {
            let opts = crate::verify::VerifyOptions {
                calib: self.calib_dir.clone(),
                ..self.args.pipeline.verify.options(self.args.pipeline.seed)?
            };
            let check = crate::verify::selfcheck::self_check(&self.args.input, candidate, &opts)?;
            let worst = check
                .end_to_end
                .outputs
                .iter()
                .filter(|o| o.is_float())
                .map(|o| {
                    if o.rel_l2.is_nan() {
                        f64::INFINITY
                    } else {
                        o.rel_l2
                    }
                })
                .fold(None, |a: Option<f64>, e| Some(a.map_or(e, |a| a.max(e))));
            m.error = Some(worst.ok_or_else(|| {
                Error::Usage(
                    "--max-error: the model has no float output to measure the error on".into(),
                )
            })?);
        }
        Ok(m)
    }

    /// Whether the targets hold, and the share of the predicted error the next plan
    /// should keep (target / measured, in the units the error adds up in).
    fn judge(&self, m: &Measured) -> (bool, f64) {
        let mut met = true;
        let mut fraction: f64 = 1.0;
        if let (Some(limit), Some(h), Some(ppl)) =
            (self.setup.max_ppl_increase, &self.held, m.perplexity)
        {
            // Perplexity is exp(mean NLL): the NLL added is what adds up over weights.
            let added = (ppl / h.float_perplexity).ln();
            let allowed = (1.0 + limit / 100.0).ln();
            if ppl.is_nan() || added > allowed {
                met = false;
                fraction = fraction.min(if added > 0.0 { allowed / added } else { 0.0 });
            }
        }
        if let (Some(limit), Some(e)) = (self.setup.max_error, m.error) {
            if e.is_nan() || e > limit {
                met = false;
                // A relative L2 error grows as the square root of the squared errors
                // the prediction adds up.
                let f = if e.is_finite() && e > 0.0 {
                    (limit / e).powi(2)
                } else {
                    0.0
                };
                fraction = fraction.min(f);
            }
        }
        (met, fraction.clamp(0.0, 1.0))
    }

    /// Promotes in place for the round after `round`; returns what moved.
    fn promote(
        &self,
        weights: &mut [Weight],
        round: usize,
        fraction: f64,
        budget: Option<u64>,
    ) -> Vec<Promotion> {
        let (layers, mut choice) = ladders(weights);
        let total: f64 = choice.iter().zip(&layers).map(|(&c, l)| l[c].error).sum();
        let min_steps = 1usize << round.min(20);
        let steps = promote(&layers, &mut choice, min_steps, total * fraction, budget);
        // A weight promoted several steps in one round is one decision: from its
        // setting before the round to its setting after, in the order first taken.
        let mut order: Vec<usize> = Vec::new();
        for s in &steps {
            if !order.contains(&s.layer) {
                order.push(s.layer);
            }
        }
        order
            .into_iter()
            .map(|i| {
                let w = &mut weights[i];
                let (from, to) = (w.options[w.choice], w.options[choice[i]]);
                w.choice = choice[i];
                Promotion {
                    weight: w.name.clone(),
                    from: from.0.to_string(),
                    to: to.0.to_string(),
                    predicted_error_from: from.2,
                    predicted_error_to: to.2,
                    bytes_added: to.1 as i64 - from.1 as i64,
                }
            })
            .collect()
    }

    fn describe(&self, m: &Measured) -> String {
        let mut parts = Vec::new();
        if let (Some(ppl), Some(pct), Some(h)) = (m.perplexity, m.ppl_increase_pct, &self.held) {
            parts.push(format!(
                "held-back perplexity {ppl:.4} vs float {:.4} ({pct:+.3} %)",
                h.float_perplexity
            ));
        }
        if let Some(e) = m.error {
            parts.push(format!("end-to-end rel-L2 {e:.4e}"));
        }
        parts.join(", ")
    }

    fn print_round(&self, r: &Round, weights: &[Weight]) {
        if self.args.pipeline.json {
            super::report::json_line(&serde_json::json!({ "event": "tune-round", "round": r }));
        }
        if !log::enabled(Level::Info) {
            return;
        }
        for p in &r.promotions {
            eprintln!(
                "tune: promote {:<40} {} -> {} (predicted error {:.3e} -> {:.3e}, {:+} bytes)",
                p.weight, p.from, p.to, p.predicted_error_from, p.predicted_error_to, p.bytes_added
            );
        }
        let mut count: std::collections::BTreeMap<String, usize> = Default::default();
        for w in weights {
            *count.entry(w.setting().to_string()).or_default() += 1;
        }
        let settings: Vec<String> = count.iter().map(|(s, n)| format!("{s} x{n}")).collect();
        eprintln!(
            "tune round {}: {} ({} bytes of tuned weights): {}: {}",
            r.round,
            settings.join(", "),
            r.weight_bytes,
            self.describe(&r.measured),
            if r.met { "met" } else { "not met" }
        );
    }

    /// The report's `tune` section.
    fn log(&self, rounds: &[Round], weights: &[Weight], budget: Option<u64>) -> serde_json::Value {
        let plan: std::collections::BTreeMap<&str, String> = weights
            .iter()
            .flat_map(|w| {
                w.nodes
                    .iter()
                    .map(|n| (n.as_str(), w.setting().to_string()))
            })
            .collect();
        serde_json::json!({
            "target": {
                "max_ppl_increase_pct": self.setup.max_ppl_increase,
                "max_error": self.setup.max_error,
                "error_metric": "end-to-end relative L2 error, worst float output",
            },
            "held_back": self.held.as_ref().map(|h| serde_json::json!({
                "calibration_chars": h.calibration_chars,
                "held_back_chars": h.held_back_chars,
                "tokens": h.ids.len(),
                "float_perplexity": h.float_perplexity,
            })),
            "budget_bytes": budget,
            "float_allowed": self.setup.float,
            "rounds": rounds,
            "plan": plan,
        })
    }
}

/// Each weight's options as the promotion sees them (error × parameters, the
/// objective `mixed-precision` minimises) and the current choices.
fn ladders(weights: &[Weight]) -> (Vec<Vec<Candidate>>, Vec<usize>) {
    let layers = weights
        .iter()
        .map(|w| {
            w.options
                .iter()
                .map(|&(_, bytes, error)| Candidate {
                    bytes,
                    error: error * w.params as f64,
                })
                .collect()
        })
        .collect();
    (layers, weights.iter().map(|w| w.choice).collect())
}

fn parse(weight: &str, setting: &str) -> Result<Precision> {
    setting
        .parse()
        .map_err(|e: String| Error::tensor(weight, format!("mixed-precision table: {e}")))
}

/// The decoder nodes whose weights start elsewhere than the uniform setting.
struct Roles {
    /// The embedding Gather (untied table).
    embedding: Option<String>,
    /// The lm_head reading the embedding table (tied).
    tied_head: Option<String>,
}

impl Roles {
    fn of(model: &Model) -> Roles {
        match crate::llm::DecoderMap::build(&model.graph) {
            Ok(map) => Roles {
                embedding: Some(map.embedding.node.clone()),
                tied_head: map.tied_lm_head.then(|| map.lm_head.node.clone()),
            },
            Err(_) => Roles {
                embedding: None,
                tied_head: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::split_text;

    #[test]
    fn the_held_back_part_is_the_end_and_starts_at_a_word() {
        let text = "one two three four five six seven eight nine ten eleven twelve\nthirteen";
        let (calib, held) = split_text(text);
        assert_eq!(format!("{calib}{held}"), text);
        assert!(calib.ends_with(char::is_whitespace), "{calib:?}");
        assert!(!held.is_empty() && held.len() < text.len() / 4, "{held:?}");
        assert!(!held.starts_with(char::is_whitespace));
        let (c, h) = split_text("");
        assert!(c.is_empty() && h.is_empty());
    }
}
