//! `onnxq inspect`: what a model is, at a glance or as JSON.
use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use crate::error::Result;
use crate::ir::{print, Graph, Model, Storage};

#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    /// The model to describe.
    pub model: PathBuf,
    /// Print machine-readable JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// How many of the largest tensors to list.
    #[arg(long, default_value_t = 10)]
    pub top: usize,
    /// Print the decoder map (embedding, layers, norms, projections, attention, MLP,
    /// lm_head, KV cache and position/mask inputs) instead of the summary.
    #[arg(long)]
    pub decoder: bool,
}

#[derive(Serialize, Debug)]
pub struct Io {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: String,
}

#[derive(Serialize, Debug)]
pub struct LargeTensor {
    pub name: String,
    pub dtype: String,
    pub dims: Vec<i64>,
    pub bytes: u64,
    pub external: Option<String>,
}

/// The inspect report (also what `--json` prints).
#[derive(Serialize, Debug)]
pub struct Inspection {
    pub ir_version: i64,
    pub opsets: BTreeMap<String, i64>,
    pub producer: String,
    pub inputs: Vec<Io>,
    pub outputs: Vec<Io>,
    pub nodes: usize,
    pub op_histogram: BTreeMap<String, usize>,
    pub parameters: u64,
    pub parameter_bytes_by_dtype: BTreeMap<String, u64>,
    pub largest_tensors: Vec<LargeTensor>,
    pub external_data_files: BTreeMap<String, u64>,
    pub quantized_ops: BTreeMap<String, usize>,
    pub functions: Vec<String>,
}

pub fn inspect(m: &Model, top: usize) -> Inspection {
    let mut hist = BTreeMap::new();
    let mut tensors = Vec::new();
    let mut nodes = 0;
    walk(&m.graph, &mut hist, &mut tensors, &mut nodes);
    for f in &m.functions {
        walk(&f.body, &mut hist, &mut tensors, &mut nodes);
    }
    let mut by_dtype = BTreeMap::new();
    let mut params = 0u64;
    let mut files = BTreeMap::new();
    for t in &tensors {
        *by_dtype.entry(t.dtype.clone()).or_insert(0) += t.bytes;
        if let Some(f) = &t.external {
            *files.entry(f.clone()).or_insert(0) += t.bytes;
        }
    }
    for (_, n) in tensors
        .iter()
        .map(|t| (t, t.dims.iter().product::<i64>().max(0) as u64))
    {
        params += n;
    }
    tensors.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.name.cmp(&b.name)));
    tensors.truncate(top);
    let quantized = hist
        .iter()
        .filter(|(k, _)| {
            crate::ir::QUANTIZED_OPS
                .iter()
                .any(|q| k.rsplit("::").next() == Some(*q))
        })
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    let io = |specs: &[crate::ir::GraphIo]| {
        specs
            .iter()
            .map(|io| Io {
                name: m.graph.value_name(io.value).to_string(),
                ty: io
                    .info
                    .ty
                    .as_ref()
                    .map_or("?".into(), print::type_to_string),
            })
            .collect()
    };
    Inspection {
        ir_version: m.ir_version.unwrap_or(0),
        opsets: m
            .opset_import
            .iter()
            .map(|o| {
                (
                    if o.domain().is_empty() {
                        "ai.onnx".into()
                    } else {
                        o.domain().to_string()
                    },
                    o.version.unwrap_or(0),
                )
            })
            .collect(),
        producer: format!(
            "{} {}",
            m.producer_name.as_deref().unwrap_or(""),
            m.producer_version.as_deref().unwrap_or("")
        )
        .trim()
        .to_string(),
        inputs: io(&m
            .graph
            .inputs
            .iter()
            .filter(|i| m.graph.value(i.value).init.is_none())
            .cloned()
            .collect::<Vec<_>>()),
        outputs: io(&m.graph.outputs),
        nodes,
        op_histogram: hist,
        parameters: params,
        parameter_bytes_by_dtype: by_dtype,
        largest_tensors: tensors,
        external_data_files: files,
        quantized_ops: quantized,
        functions: m
            .functions
            .iter()
            .map(|f| f.name.clone().unwrap_or_default())
            .collect(),
    }
}

fn walk(
    g: &Graph,
    hist: &mut BTreeMap<String, usize>,
    tensors: &mut Vec<LargeTensor>,
    nodes: &mut usize,
) {
    let mut add = |t: &crate::ir::Tensor| {
        tensors.push(LargeTensor {
            name: t.name().to_string(),
            dtype: t.dtype().to_string(),
            dims: t.dims.clone(),
            bytes: t.stored_len() as u64,
            external: match &t.storage {
                Storage::External { origin, .. } => Some(origin.location.clone()),
                _ => None,
            },
        })
    };
    for (_, t) in g.initializers() {
        add(t);
    }
    for (_, n) in g.nodes() {
        *nodes += 1;
        *hist
            .entry(crate::ir::op_key(n.domain(), &n.op_type))
            .or_insert(0) += 1;
        for a in &n.attributes {
            if let Some(t) = &a.t {
                add(t);
            }
        }
    }
    for s in g.subgraphs() {
        walk(s, hist, tensors, nodes);
    }
}

fn human(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.2} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1} kB", b / 1e3)
    } else {
        format!("{bytes} B")
    }
}

pub fn to_text(i: &Inspection) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let opsets: Vec<String> = i.opsets.iter().map(|(d, v)| format!("{d} {v}")).collect();
    let _ = writeln!(
        s,
        "IR version {}   opsets: {}   producer: {}",
        i.ir_version,
        opsets.join(", "),
        i.producer
    );
    let _ = writeln!(s, "inputs:");
    for io in &i.inputs {
        let _ = writeln!(s, "  {}: {}", io.name, io.ty);
    }
    let _ = writeln!(s, "outputs:");
    for io in &i.outputs {
        let _ = writeln!(s, "  {}: {}", io.name, io.ty);
    }
    let _ = writeln!(s, "nodes: {}", i.nodes);
    let mut ops: Vec<(&String, &usize)> = i.op_histogram.iter().collect();
    ops.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    for (op, n) in ops {
        let _ = writeln!(s, "  {n:6}  {op}");
    }
    let total: u64 = i.parameter_bytes_by_dtype.values().sum();
    let _ = writeln!(s, "parameters: {} in {}", i.parameters, human(total));
    for (d, b) in &i.parameter_bytes_by_dtype {
        let _ = writeln!(s, "  {d:10} {}", human(*b));
    }
    let _ = writeln!(s, "largest tensors:");
    for t in &i.largest_tensors {
        let ext = t
            .external
            .as_ref()
            .map(|f| format!("  (external: {f})"))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "  {:>10}  {}{:?}  {}{ext}",
            human(t.bytes),
            t.dtype,
            t.dims,
            t.name
        );
    }
    if !i.external_data_files.is_empty() {
        let _ = writeln!(s, "external data:");
        for (f, b) in &i.external_data_files {
            let _ = writeln!(s, "  {f}: {}", human(*b));
        }
    }
    if i.quantized_ops.is_empty() {
        let _ = writeln!(s, "quantized ops: none");
    } else {
        let q: Vec<String> = i
            .quantized_ops
            .iter()
            .map(|(k, v)| format!("{k} x{v}"))
            .collect();
        let _ = writeln!(s, "quantized ops: {}", q.join(", "));
    }
    if !i.functions.is_empty() {
        let _ = writeln!(s, "functions: {}", i.functions.join(", "));
    }
    s
}

pub fn run(args: &InspectArgs) -> Result<i32> {
    let m = crate::io::load(&args.model)?;
    if args.decoder {
        let map = crate::llm::DecoderMap::build(&m.graph)?;
        if args.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&map)
                    .map_err(|e| crate::Error::invalid(e.to_string()))?
            );
        } else {
            print!("{}", crate::llm::to_text(&map));
        }
        return Ok(0);
    }
    let i = inspect(&m, args.top);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&i).map_err(|e| crate::Error::invalid(e.to_string()))?
        );
    } else {
        print!("{}", to_text(&i));
    }
    Ok(0)
}
