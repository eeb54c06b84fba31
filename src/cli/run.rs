//! `onnxq run`: run a model on given (or seeded random) inputs, print a summary of
//! its outputs and optionally write them as .npy/.npz/.pb files.
use std::path::PathBuf;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::runtime::{self, HostTensor, RuntimeOptions};
use crate::tensorfile::{self, Format};
use crate::verify::{random_inputs, InputHints};

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// The model to run.
    pub model: PathBuf,
    /// Input values: a .npy/.npz/.pb file or a directory of them. Default: seeded
    /// random inputs shaped like the declared inputs.
    #[arg(long, value_name = "DIR|FILE")]
    pub inputs: Option<PathBuf>,
    /// Write the outputs here: a directory (one file per output) or a .npz file.
    #[arg(long, value_name = "DIR|FILE.npz")]
    pub out: Option<PathBuf>,
    /// File format in an --out directory: npy (<name>.npy) or pb (output_N.pb TensorProtos).
    #[arg(long, default_value = "npy", value_name = "npy|pb")]
    pub format: Format,
    #[command(flatten)]
    pub rt: super::verify_gate::RuntimeArgs,
    /// Seed of the random inputs.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also return this intermediate value (repeatable).
    #[arg(long = "output", value_name = "NAME")]
    pub outputs: Vec<String>,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Summary {
    name: String,
    dtype: String,
    shape: Vec<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    min: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mean: Option<f64>,
}

fn summarize(name: &str, t: &HostTensor) -> Summary {
    let v = t.to_f64_vec().ok().filter(|v| !v.is_empty());
    let finite = |f: fn(f64, f64) -> f64| {
        v.as_ref()
            .map(|v| v.iter().copied().filter(|x| !x.is_nan()).fold(f64::NAN, f))
    };
    Summary {
        name: name.to_string(),
        dtype: t.dtype.to_string(),
        shape: t.shape.clone(),
        min: finite(f64::min),
        max: finite(f64::max),
        mean: v.as_ref().map(|v| v.iter().sum::<f64>() / v.len() as f64),
    }
}

pub fn run(args: &RunArgs) -> Result<i32> {
    let sel = runtime::select(&RuntimeOptions {
        kind: args.rt.runtime,
        threads: args.rt.threads,
        ort_config: super::verify_gate::parse_config(&args.rt.ort_config)?,
    })?;
    if let Some(why) = &sel.fallback {
        eprintln!("note: running on tract; ONNX Runtime not used: {why}");
    }
    let model = crate::io::load(&args.model)?;
    let specs = model.graph.input_specs();
    let hints = InputHints::from_model(&model);
    drop(model);
    let feeds = match &args.inputs {
        Some(p) => tensorfile::bind(tensorfile::read_set(p)?, &specs)?,
        None => random_inputs(
            &specs,
            &super::verify_gate::parse_dims(&args.rt.dims)?,
            &hints,
            args.seed,
        )?,
    };
    let prepared = runtime::prepare(&args.model, sel.runtime.name(), &args.outputs)?;
    if let Some(r) = &prepared.lowered {
        eprintln!("note: lowered for tract: {r}");
    }
    let mut session = sel.runtime.open(prepared.path())?;
    let outputs = session.run(&feeds)?;
    let summaries: Vec<Summary> = outputs.iter().map(|(n, t)| summarize(n, t)).collect();
    if args.json {
        let json = serde_json::json!({ "runtime": sel.runtime.name(), "outputs": summaries });
        println!(
            "{}",
            serde_json::to_string_pretty(&json).map_err(|e| Error::invalid(e.to_string()))?
        );
    } else {
        let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.6}"));
        println!("{} on {}", args.model.display(), sel.runtime.name());
        for s in &summaries {
            println!(
                "{}  {}{:?}  min {}  max {}  mean {}",
                s.name,
                s.dtype,
                s.shape,
                fmt(s.min),
                fmt(s.max),
                fmt(s.mean)
            );
        }
    }
    if let Some(out) = &args.out {
        let files = tensorfile::write_set(out, &outputs, args.format)?;
        if !args.json {
            println!("wrote {} file(s) to {}", files.len(), out.display());
        }
    }
    Ok(0)
}
