//! Shared by `quantize` and `apply`: load → passes → save → verify, with a summary
//! and an optional JSON report.
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use super::convert::LayoutArgs;
use super::log::{self, Level};
use super::report::{self, NodeReport};
use crate::error::{Error, Result};
use crate::ir::Model;
use crate::pass::{recipe::Recipe, run_pipeline_with, CheckLevel, PassCx, PassOutcome, RunOptions};

/// Options every model-writing pipeline command takes.
#[derive(clap::Args, Debug, Clone)]
pub struct PipelineArgs {
    #[command(flatten)]
    pub layout: LayoutArgs,
    /// Write a JSON report (passes, per node: setting, bytes before/after, error;
    /// skipped nodes with reasons, totals, phase timings, peak memory,
    /// verification) to this file.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Print JSON lines on stdout: one per pass, one per node, then the report.
    #[arg(long)]
    pub json: bool,
    /// Print why each candidate node was skipped.
    #[arg(long)]
    pub explain: bool,
    /// The numerical check of the output against the input: on (a check that cannot
    /// run is skipped with a warning), off, or required (a check that cannot run is
    /// an error).
    #[arg(long = "verify", value_enum, default_value = "on", value_name = "MODE")]
    pub verify_mode: VerifyMode,
    /// Same as --verify off.
    #[arg(long)]
    pub no_verify: bool,
    /// When nothing matched, fail (exit 3) and write nothing, instead of writing an
    /// unchanged copy with a warning.
    #[arg(long)]
    pub fail_if_unchanged: bool,
    #[command(flatten)]
    pub verify: super::verify_gate::VerifyGate,
    /// Seed for anything random (verification inputs).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// What to check after each pass: `structural` (order, definitions, names,
    /// types; always on) or `full` (adds type and shape inference).
    #[arg(long, value_enum, default_value = "structural", value_name = "LEVEL")]
    pub check_passes: CheckLevel,
    /// Stop after this pass (a name from the recipe, or its 1-based position) and
    /// write the model as it is then: bisects a bad rewrite.
    #[arg(long, value_name = "PASS")]
    pub stop_after: Option<String>,
    /// Write the model as text before the first pass and after each pass
    /// (00-input.txt, 01-<pass>.txt, ...), for diffing.
    #[arg(long, value_name = "DIR")]
    pub dump_dir: Option<PathBuf>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum VerifyMode {
    On,
    Off,
    Required,
}

#[derive(Serialize, Debug)]
pub struct Report {
    pub onnxq_version: &'static str,
    pub recipe: String,
    pub input: PathBuf,
    pub output: Option<PathBuf>,
    /// Whether a pass changed the model (false: the output is an unchanged copy).
    pub changed: bool,
    pub passes: Vec<PassOutcome>,
    pub nodes: Vec<NodeReport>,
    pub totals: Totals,
    pub input_bytes: u64,
    pub output_bytes: u64,
    pub seconds: f64,
    /// Wall time by phase: load, passes, save, verify.
    pub phase_seconds: std::collections::BTreeMap<String, f64>,
    /// Peak resident memory of the process (VmHWM), when the OS tells.
    pub peak_rss_bytes: Option<u64>,
    pub verify: Option<serde_json::Value>,
    /// The accuracy tuning loop (`--max-ppl-increase`, `--max-error`): target,
    /// reference, each round's promotions and measurement.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tune: Option<serde_json::Value>,
}

/// Sums over `Report::nodes`.
#[derive(Serialize, Debug, Default)]
pub struct Totals {
    pub quantized_nodes: usize,
    pub skipped_nodes: usize,
    /// Bytes of the weights the quantized nodes replaced, and of their own.
    pub weight_bytes_before: u64,
    pub weight_bytes_after: u64,
}

impl Totals {
    fn of(nodes: &[NodeReport]) -> Totals {
        let mut t = Totals::default();
        for n in nodes {
            if n.status == "skipped" {
                t.skipped_nodes += 1;
            } else {
                t.quantized_nodes += 1;
                t.weight_bytes_before += n.bytes_before;
                t.weight_bytes_after += n.bytes_after;
            }
        }
        t
    }
}

fn file_bytes(model: &Path, data_files: impl Iterator<Item = String>) -> u64 {
    let dir = model.parent().unwrap_or(Path::new("."));
    std::fs::metadata(model).map(|m| m.len()).unwrap_or(0)
        + data_files
            .map(|f| std::fs::metadata(dir.join(f)).map(|m| m.len()).unwrap_or(0))
            .sum::<u64>()
}

/// Runs `recipe` on `input`, writes `output`; returns the exit code.
pub fn run(recipe: &Recipe, input: &Path, output: &Path, args: &PipelineArgs) -> Result<i32> {
    let (built, model) = build(recipe, input, args)?;
    finish(built, model, recipe, output, args, None)
}

/// What running the passes found, before anything is written.
pub struct Built {
    input: PathBuf,
    outcomes: Vec<PassOutcome>,
    nodes: Vec<NodeReport>,
    input_bytes: u64,
    /// Quantized ops the input already had (op type → count).
    already: std::collections::BTreeMap<String, usize>,
    phases: std::collections::BTreeMap<String, f64>,
    start: Instant,
}

/// Loads `input` and runs the passes of `recipe` on it: the rewritten model (not
/// saved) and what the passes reported.
pub fn build(recipe: &Recipe, input: &Path, args: &PipelineArgs) -> Result<(Built, Model)> {
    let passes = recipe.build()?;
    let start = Instant::now();
    let mut model = crate::io::load(input)?;
    let input_bytes = file_bytes(input, model.external_data_files().into_keys());
    let already = model.quantized_ops();
    let before = report::Before::of(&model);
    let mut cx = PassCx {
        progress: log::enabled(Level::Info),
        seed: args.seed,
    };
    let mut phases = std::collections::BTreeMap::new();
    phases.insert("load".to_string(), start.elapsed().as_secs_f64());
    let t = Instant::now();
    let run = RunOptions {
        check: args.check_passes,
        stop_after: args.stop_after.clone(),
        dump_dir: args.dump_dir.clone(),
    };
    let outcomes = run_pipeline_with(&mut model, &passes, &mut cx, &run)?;
    phases.insert("passes".to_string(), t.elapsed().as_secs_f64());
    let nodes = report::nodes(&before, &model, &outcomes);
    Ok((
        Built {
            input: input.to_path_buf(),
            outcomes,
            nodes,
            input_bytes,
            already,
            phases,
            start,
        },
        model,
    ))
}

/// Reports what `build` did, writes `model` to `output`, verifies it against the
/// input and writes the report (with `tune`, the tuning loop's log, when given);
/// returns the exit code.
pub fn finish(
    built: Built,
    model: Model,
    recipe: &Recipe,
    output: &Path,
    args: &PipelineArgs,
    tune: Option<serde_json::Value>,
) -> Result<i32> {
    let Built {
        input,
        outcomes,
        nodes,
        input_bytes,
        already,
        phases,
        start,
    } = built;
    let input = input.as_path();
    let changed = outcomes.iter().any(|o| o.changed);
    if args.json {
        for o in &outcomes {
            report::json_line(&serde_json::json!({ "event": "pass", "pass": o }));
        }
        for n in &nodes {
            report::json_line(&serde_json::json!({ "event": "node", "node": n }));
        }
    }
    for o in outcomes.iter().filter(|_| log::enabled(Level::Info)) {
        let counters: Vec<String> = o
            .counters
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        eprintln!(
            "{}: {}",
            o.pass,
            if counters.is_empty() {
                "nothing to do".into()
            } else {
                counters.join(", ")
            }
        );
        for n in &o.notes {
            eprintln!("  note: {n}");
        }
        let explain = args.explain || log::enabled(Level::Debug);
        print_layers(&o.layers, explain);
        print_precision(&o.precision);
        if explain {
            for s in &o.skipped {
                eprintln!("  skipped '{}': {}", s.node, s.reason);
            }
        } else if !o.skipped.is_empty() {
            eprintln!(
                "  {} candidates skipped (--explain lists why)",
                o.skipped.len()
            );
        }
    }
    let mut report = Report {
        onnxq_version: env!("CARGO_PKG_VERSION"),
        recipe: recipe.name.clone(),
        input: input.to_path_buf(),
        output: None,
        changed,
        passes: outcomes,
        totals: Totals::of(&nodes),
        nodes,
        input_bytes,
        output_bytes: 0,
        seconds: 0.0,
        phase_seconds: phases,
        peak_rss_bytes: None,
        verify: None,
        tune,
    };
    if !changed {
        if !already.is_empty() && log::enabled(Level::Warn) {
            let ops: Vec<String> = already.iter().map(|(k, v)| format!("{k} x{v}")).collect();
            eprintln!(
                "warning: the model is already quantized ({}); left as it is",
                ops.join(", ")
            );
        }
        let why = "nothing changed: no node matched (quantizable = MatMul/Gemm with a constant \
                   2-D float weight, not excluded)";
        if args.fail_if_unchanged {
            write_report(args, &mut report, start)?;
            return Err(Error::CheckFailed(format!(
                "{why}; --fail-if-unchanged: {} not written",
                output.display()
            )));
        }
        if log::enabled(Level::Warn) {
            eprintln!(
                "warning: {why}; writing an unchanged copy to {}",
                output.display()
            );
        }
    }
    let t = Instant::now();
    let saved = crate::io::save(&model, output, &args.layout.save_options())?;
    report
        .phase_seconds
        .insert("save".to_string(), t.elapsed().as_secs_f64());
    drop(model);
    report.output = Some(output.to_path_buf());
    report.output_bytes = file_bytes(output, saved.data_files.keys().cloned());
    let mut code = super::exit::SUCCESS;
    let mode = if args.no_verify {
        VerifyMode::Off
    } else {
        args.verify_mode
    };
    // An unchanged copy computes what the input computes: nothing to check.
    if mode != VerifyMode::Off && changed {
        let t = Instant::now();
        let calib = recipe
            .passes
            .iter()
            .find_map(|p| p.get("calib").and_then(|v| v.as_str()))
            .map(PathBuf::from);
        match args.verify.check(input, output, args.seed, calib) {
            Ok((summary, pass)) => {
                report.verify = Some(summary);
                if !pass {
                    code = super::exit::CHECK_FAILED;
                }
            }
            Err(e) if mode == VerifyMode::Required => return Err(e),
            Err(e) => {
                eprintln!(
                    "warning: verification skipped (--verify required makes this an error): {e}"
                );
                report.verify = Some(serde_json::json!({ "skipped": e.to_string() }));
            }
        }
        report
            .phase_seconds
            .insert("verify".to_string(), t.elapsed().as_secs_f64());
    }
    log::info(&format!(
        "wrote {}: {} -> {} ({:.1}% of the input) in {:.2}s",
        output.display(),
        human(report.input_bytes),
        human(report.output_bytes),
        100.0 * report.output_bytes as f64 / report.input_bytes.max(1) as f64,
        start.elapsed().as_secs_f64()
    ));
    write_report(args, &mut report, start)?;
    Ok(code)
}

fn write_report(args: &PipelineArgs, report: &mut Report, start: Instant) -> Result<()> {
    report.seconds = start.elapsed().as_secs_f64();
    report.peak_rss_bytes = report::peak_rss_bytes();
    if args.json {
        report::json_line(&serde_json::json!({ "event": "report", "report": report }));
    }
    if let Some(path) = &args.report {
        let text =
            serde_json::to_string_pretty(report).map_err(|e| Error::invalid(e.to_string()))?;
        let mut file = crate::io::AtomicFile::create(path)?;
        file.write_all(text.as_bytes())?;
        file.commit()?;
    }
    Ok(())
}

fn human(b: u64) -> String {
    if b >= 1 << 30 {
        format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
    } else if b >= 1 << 20 {
        format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
    } else {
        format!("{:.1} KiB", b as f64 / 1024.0)
    }
}

/// The per-layer error summary of a calibrated pass (every layer with --explain).
fn print_layers(layers: &[crate::pass::LayerError], all: bool) {
    if layers.is_empty() {
        return;
    }
    let n = layers.len() as f64;
    let mean = |f: fn(&crate::pass::LayerError) -> f64| layers.iter().map(f).sum::<f64>() / n;
    let better = layers.iter().filter(|l| l.after < l.rtn).count();
    eprintln!(
        "  layer output error on calibration data (relative, mean of {}): RTN {:.3e} -> {:.3e}, lower on {better} of {}",
        layers.len(),
        mean(|l| l.rtn),
        mean(|l| l.after),
        layers.len()
    );
    let mut order: Vec<&crate::pass::LayerError> = layers.iter().collect();
    order.sort_by(|a, b| b.after.total_cmp(&a.after));
    for l in order.iter().take(if all { usize::MAX } else { 3 }) {
        eprintln!("    {:<56} RTN {:.3e} -> {:.3e}", l.name, l.rtn, l.after);
    }
}

/// The mixed-precision table: each weight's chosen setting, bytes, predicted error
/// and the variance prior's bit width.
fn print_precision(rows: &[crate::pass::PrecisionRow]) {
    if rows.is_empty() {
        return;
    }
    eprintln!(
        "    {:<40} {:>10} {:>10} {:>8} {:>11} {:>7}",
        "weight", "params", "setting", "bpw", "pred. error", "prior b"
    );
    for r in rows {
        eprintln!(
            "    {:<40} {:>10} {:>10} {:>8.3} {:>11.3e} {:>7.2}",
            r.name,
            r.params,
            r.setting,
            r.bytes as f64 * 8.0 / r.params.max(1) as f64,
            r.error,
            r.prior_bits
        );
    }
}
