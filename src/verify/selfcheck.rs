//! The check a model-writing command runs on its own output, at a cost close to
//! the rewrite's: instead of holding both whole models in a runtime, it checks each
//! rewrite where it happened.
//!
//! 1. The original runs once, piece by piece (the calibration runner, one piece's
//!    weights at a time), on one short input. It records, for every rewritten
//!    MatMul/Gemm, a sample of rows of its input and of its float output, and the
//!    original's graph outputs.
//! 2. The rewritten ops alone (cut out of the output model at those inputs) run on
//!    the recorded rows: their outputs are compared with the float ones, layer by
//!    layer. A quantized Gather (GatherBlockQuantized) is fed row indices and
//!    compared with the rows of the float table.
//! 3. The output model runs once on the same input; its outputs are compared with
//!    the original's.
//!
//! A layer whose input the rewrite changed too (AWQ or SmoothQuant scales folded
//! into the op before it) cannot be compared on the original's activations; it is
//! listed as such and covered by step 3.
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Serialize;

use super::feeds::{self, FeedPlan};
use super::{metrics, Report, VerifyOptions};
use crate::calib::capture::{capture, Observer, Plan};
use crate::error::{Error, Result};
use crate::ir::{
    DType, Dim, Graph, GraphIo, Model, ShapeDim, TypeInfo, TypeKind, ValueDef, ValueInfo,
};
use crate::runtime::inputs::{random_inputs, InputHints};
use crate::runtime::{self, HostTensor, NamedTensors, Runtime, RuntimeOptions};

/// Rows of each layer's input kept for its check.
pub const SAMPLE_ROWS: usize = 32;
/// Memory of one piece of the original run (its weights).
const PIECE_BUDGET: u64 = 384 << 20;

/// The error of one rewritten layer on the original's activations.
#[derive(Clone, Debug, Serialize)]
pub struct LayerCheck {
    /// The original node (what `--exclude` takes).
    pub node: String,
    /// What it became (`MatMulNBits`, `MatMul` on dequantized weights, ...).
    pub op: String,
    pub rows: usize,
    /// ||y_q - y|| / ||y||.
    pub rel_l2: f64,
    pub max_abs: f64,
    pub cosine: f64,
}

/// What the self-check found.
#[derive(Clone, Debug, Serialize)]
pub struct SelfCheck {
    /// Every checked layer, in graph order.
    pub layers: Vec<LayerCheck>,
    /// The five layers with the largest relative error, worst first.
    pub worst: Vec<String>,
    /// What to do about the worst layer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// Rewritten layers not compared on their own, and why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unchecked: Vec<String>,
    /// The outputs of the whole rewritten model against the original's.
    pub end_to_end: Report,
    /// Seconds spent in each step (load, original run, layers, end to end), so
    /// the check's cost can be read from the report.
    pub seconds: BTreeMap<String, f64>,
}

/// One rewritten op: where its input and output are, in both models.
#[derive(Clone, Debug)]
struct Layer {
    node: String,
    op: String,
    /// The activation input (MatMul/Gemm) or the indices (Gather).
    input: String,
    output: String,
    /// For a Gather: the float table it read.
    table: Option<String>,
}

/// The initializer inputs of the node producing `v`, by slot, with their bytes.
fn producer_constants(g: &Graph, name: &str) -> Option<(String, Vec<Option<Vec<u8>>>)> {
    let v = g.find(name)?;
    let ValueDef::Node(n, _) = g.value(v).def else {
        return Some(("input".into(), Vec::new()));
    };
    let node = g.node(n);
    let consts = node
        .inputs()
        .iter()
        .map(|i| {
            i.and_then(|i| g.initializer(i))
                .and_then(|t| t.raw_bytes().ok().map(|b| b.into_owned()))
        })
        .collect();
    Some((node.op_type.clone(), consts))
}

/// Whether `v` is an initializer or computed from initializers only (a tied head's
/// Transpose of the embedding table), looking `depth` nodes up.
fn constant(g: &Graph, v: crate::ir::ValueId, depth: usize) -> bool {
    if g.initializer(v).is_some() {
        return true;
    }
    let Some(n) = g.producer(v) else {
        return false;
    };
    let node = g.node(n);
    depth > 0
        && (node.op_type == "Constant"
            || node
                .inputs()
                .iter()
                .flatten()
                .all(|&i| constant(g, i, depth - 1)))
}

/// Whether the rewrite changed the values of `name` itself: the op computing it
/// kept its type but not its constants (AWQ folds scales into a norm's weight), or
/// became a Mul/Div (SmoothQuant's inserted scale). Quantize/dequantize pairs a
/// static rewrite puts there do not count: they are part of the rewritten op.
fn rescaled(original: &Graph, rewritten: &Graph, name: &str) -> bool {
    match (
        producer_constants(original, name),
        producer_constants(rewritten, name),
    ) {
        (Some((a, ca)), Some((b, cb))) if a == b => ca != cb,
        (_, Some((b, _))) => matches!(b.as_str(), "Mul" | "Div"),
        _ => false,
    }
}

/// The rewritten MatMul/Gemm/Gather nodes of `original` found in `rewritten`
/// (their output keeps its name, but another op or a non-constant weight computes
/// it), and the ones whose input the rewrite changed as well.
fn rewritten_layers(original: &Graph, rewritten: &Graph) -> (Vec<Layer>, Vec<String>) {
    let mut layers = Vec::new();
    let mut changed_input = Vec::new();
    let Ok(order) = original.sorted_node_ids() else {
        return (layers, changed_input);
    };
    for id in order {
        let n = original.node(id);
        let (act_slot, weight_slot) = match n.op_type.as_str() {
            "MatMul" | "Gemm" => (0, 1),
            "Gather" if n.attr_int("axis").unwrap_or(0) == 0 => (1, 0),
            _ => continue,
        };
        let (Some(a), Some(w), Some(y)) = (n.input(act_slot), n.input(weight_slot), n.output(0))
        else {
            continue;
        };
        if !constant(original, w, 4) {
            continue;
        }
        let weight = original.initializer(w);
        let y_name = original.value_name(y);
        let Some(qy) = rewritten.find(y_name) else {
            changed_input.push(format!(
                "{}: its output '{y_name}' is gone from the rewritten model (fused with the \
                 op after it; checked end to end)",
                n.name()
            ));
            continue;
        };
        let Some(qn) = rewritten.producer(qy).map(|q| rewritten.node(q)) else {
            continue;
        };
        let same_op = qn.op_type == n.op_type;
        let weight_still_constant = qn
            .input(weight_slot)
            .is_some_and(|v| rewritten.initializer(v).is_some());
        if same_op && weight_still_constant {
            continue;
        }
        let a_name = original.value_name(a).to_string();
        let is_gather = n.op_type == "Gather";
        if is_gather && weight.is_none_or(|t| t.dtype() != DType::F32) {
            changed_input.push(format!(
                "{}: its table is not a float32 initializer (checked end to end)",
                n.name()
            ));
            continue;
        }
        if !is_gather && rescaled(original, rewritten, &a_name) {
            changed_input.push(format!(
                "{}: its input '{a_name}' was rescaled by the rewrite (checked end to end)",
                n.name()
            ));
            continue;
        }
        layers.push(Layer {
            node: n.name().to_string(),
            op: if same_op {
                format!("{} on dequantized weights", qn.op_type)
            } else {
                qn.op_type.clone()
            },
            input: a_name,
            output: y_name.to_string(),
            table: (is_gather && weight.is_some_and(|t| t.dtype() == DType::F32))
                .then(|| original.value_name(w).to_string()),
        });
    }
    (layers, changed_input)
}

/// Keeps up to [`SAMPLE_ROWS`] evenly spaced rows of each observed layer tensor,
/// and the original's graph outputs whole.
#[derive(Default)]
struct Recorder {
    rows_of: BTreeSet<String>,
    outputs: BTreeSet<String>,
    /// Name → rows `[r, last]` and the rank the value had.
    sampled: BTreeMap<String, (HostTensor, usize)>,
    whole: BTreeMap<String, HostTensor>,
}

/// Which of `n` rows to keep: all when few, else evenly spaced.
fn picked_rows(n: usize) -> Vec<usize> {
    if n <= SAMPLE_ROWS {
        (0..n).collect()
    } else {
        (0..SAMPLE_ROWS).map(|i| i * n / SAMPLE_ROWS).collect()
    }
}

impl Observer for Recorder {
    fn observe(&mut self, name: &str, values: &[f32], shape: &[usize]) {
        if self.outputs.contains(name) {
            if let Ok(t) = HostTensor::from_f32(shape.to_vec(), values) {
                self.whole.insert(name.to_string(), t);
            }
        }
        if self.rows_of.contains(name) && !self.sampled.contains_key(name) {
            let last = shape.last().copied().unwrap_or(1).max(1);
            let rows = values.len() / last;
            let picked = picked_rows(rows);
            let mut kept = Vec::with_capacity(picked.len() * last);
            for r in &picked {
                kept.extend_from_slice(&values[r * last..(r + 1) * last]);
            }
            if let Ok(t) = HostTensor::from_f32(vec![picked.len(), last], &kept) {
                self.sampled
                    .insert(name.to_string(), (t, shape.len().max(2)));
            }
        }
    }

    fn piece_done(&mut self, _completed: &[String]) -> Result<()> {
        Ok(())
    }
}

/// `[r, last]` as a tensor of `rank` axes (leading ones), as the graph declares it.
fn with_rank(t: &HostTensor, rank: usize) -> HostTensor {
    let mut shape = vec![1; rank.saturating_sub(2)];
    shape.extend_from_slice(&t.shape);
    HostTensor { shape, ..t.clone() }
}

/// A tensor type with `dtype` and `rank` named dims, so the cut graph takes any
/// row count.
fn loose(dtype: DType, rank: usize, tag: &str) -> ValueInfo {
    let shape = (0..rank)
        .map(|a| ShapeDim {
            dim: Dim::Param(format!("{tag}_d{a}")),
            denotation: None,
        })
        .collect();
    ValueInfo {
        ty: Some(TypeInfo {
            kind: TypeKind::Tensor {
                elem_type: Some(dtype.code()),
                shape: Some(shape),
            },
            denotation: None,
        }),
        ..Default::default()
    }
}

/// Relative L2, max |d| and cosine of `b` against `a`.
fn errors(a: &[f32], b: &[f32]) -> (f64, f64, f64) {
    let (mut d2, mut a2, mut b2, mut ab, mut max) = (0f64, 0f64, 0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x as f64, y as f64);
        d2 += (x - y) * (x - y);
        a2 += x * x;
        b2 += y * y;
        ab += x * y;
        max = max.max((x - y).abs());
    }
    let rel = if a2 > 0.0 {
        (d2 / a2).sqrt()
    } else {
        d2.sqrt()
    };
    let cos = if a2 > 0.0 && b2 > 0.0 {
        ab / (a2.sqrt() * b2.sqrt())
    } else {
        1.0
    };
    (rel, max, cos)
}

/// Rows `rows` of the float table `name` of `g` (an f32 initializer), read from
/// its bytes without converting the whole table.
fn table_rows(g: &Graph, name: &str, rows: &[i64]) -> Result<(Vec<f32>, usize)> {
    let t = g
        .find(name)
        .and_then(|v| g.initializer(v))
        .ok_or_else(|| Error::tensor(name, "is not an initializer of the original"))?;
    let width = t.dims.get(1..).map_or(1, |d| d.iter().product::<i64>()) as usize;
    let raw = t.raw_bytes()?;
    let mut out = Vec::with_capacity(rows.len() * width);
    for &r in rows {
        let start = r as usize * width * 4;
        let bytes = raw
            .get(start..start + width * 4)
            .ok_or_else(|| Error::tensor(name, format!("row {r} is out of the table")))?;
        out.extend(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        );
    }
    Ok((out, width))
}

/// The first input the original runs on, chosen as `compare` chooses (files,
/// calibration samples, a decoder prefill, random at dims that run), and a
/// description of it.
/// Input sets to try in order, each with the note saying how its dims were chosen.
type Tries = Vec<(NamedTensors, String)>;

fn first_feeds(model: &Model, opts: &VerifyOptions) -> Result<(Tries, Vec<String>)> {
    let chosen = feeds::choose(
        model,
        opts.inputs.as_ref(),
        opts.calib.as_ref(),
        &opts.dims,
        1,
    )?;
    let specs = model.graph.input_specs();
    let hints = InputHints::from_model(model);
    let sets = match &chosen.plan {
        FeedPlan::Files(sets) => {
            let first = sets
                .first()
                .ok_or_else(|| Error::invalid("no input sets were found"))?;
            vec![(
                crate::tensorfile::bind(crate::tensorfile::read_set(first)?, &specs)?,
                String::new(),
            )]
        }
        FeedPlan::Calib { source, .. } => vec![(source.sample(0, &specs, &hints)?, String::new())],
        FeedPlan::Decoder { names, seq, vocab } => {
            let mut rng = crate::runtime::inputs::Rng::new(opts.seed);
            let ids: Vec<i64> = (0..*seq).map(|_| rng.below(*vocab as u64) as i64).collect();
            vec![(
                feeds::decoder_step(&specs, names, &ids, 0, None)?,
                String::new(),
            )]
        }
        FeedPlan::Random { candidates } => candidates
            .iter()
            .map(|(dims, note)| {
                Ok((
                    random_inputs(&specs, dims, &hints, opts.seed)?,
                    note.clone(),
                ))
            })
            .collect::<Result<_>>()?,
    };
    let mut notes = chosen.notes;
    if let FeedPlan::Decoder { names, seq, .. } = &chosen.plan {
        // The self-check's end-to-end run is the prefill alone; `onnxq verify` adds a
        // decode step.
        notes = vec![format!(
            "decoder inputs ({}): prefill of {seq} tokens on an empty cache",
            names.source
        )];
    }
    Ok((sets, notes))
}

/// The rewritten ops cut out of the output model at their inputs.
struct CutRun<'a> {
    quant: &'a Model,
    cut: &'a [GraphIo],
    outs: &'a [GraphIo],
    feeds: &'a NamedTensors,
}

impl CutRun<'_> {
    fn run(&self, rt: &dyn Runtime) -> Result<NamedTensors> {
        let mut graph = self.quant.graph.extract(self.cut, self.outs)?;
        graph.value_info.clear();
        let extra: Vec<String> = graph
            .input_specs()
            .into_iter()
            .map(|s| s.name)
            .filter(|n| !self.feeds.iter().any(|(c, _)| c == n))
            .collect();
        if !extra.is_empty() {
            return Err(Error::invalid(format!(
                "they read more than their inputs ({})",
                extra.join(", ")
            )));
        }
        let cut_model = Model {
            ir_version: self.quant.ir_version,
            opset_import: self.quant.opset_import.clone(),
            graph,
            has_graph: true,
            functions: self.quant.functions.clone(),
            source: self.quant.source.clone(),
            ..Default::default()
        };
        let mut s = runtime::open_model(rt, &cut_model, &[])?;
        drop(cut_model);
        s.run(self.feeds)
    }
}

/// Each layer's output from the cut run against the float one.
fn compare_layers(
    layers: &[&Layer],
    got: &NamedTensors,
    expected: &BTreeMap<String, Vec<f32>>,
    checked: &mut Vec<LayerCheck>,
    unchecked: &mut Vec<String>,
) -> Result<()> {
    for l in layers {
        let Some((_, t)) = got.iter().find(|(n, _)| n == &l.output) else {
            continue;
        };
        let b = t.to_f32_vec()?;
        let a = &expected[&l.output];
        if a.len() != b.len() {
            unchecked.push(format!(
                "{}: {} values from the rewritten op, {} expected",
                l.node,
                b.len(),
                a.len()
            ));
            continue;
        }
        let (rel_l2, max_abs, cosine) = errors(a, &b);
        let last = t.shape.last().copied().unwrap_or(1).max(1);
        checked.push(LayerCheck {
            node: l.node.clone(),
            op: l.op.clone(),
            rows: b.len() / last,
            rel_l2,
            max_abs,
            cosine,
        });
    }
    Ok(())
}

/// Checks `rewritten` against `original` layer by layer and end to end (see the
/// module docs), on the runtime of `opts`, the other runtime when it fails.
pub fn self_check(original: &Path, rewritten: &Path, opts: &VerifyOptions) -> Result<SelfCheck> {
    let sel = runtime::select(&RuntimeOptions {
        kind: opts.runtime,
        threads: opts.threads,
        ort_config: opts.ort_config.clone(),
    })?;
    let first = match check_on(&*sel.runtime, original, rewritten, opts) {
        Ok(mut c) => {
            c.end_to_end.runtime_note = sel.fallback.map(|f| format!("ONNX Runtime not used: {f}"));
            return Ok(c);
        }
        Err(e @ (Error::Runtime { .. } | Error::Reference(_))) => e,
        Err(e) => return Err(e),
    };
    let Some(other) = super::other_runtime(sel.runtime.name(), opts) else {
        return Err(first);
    };
    match check_on(&*other, original, rewritten, opts) {
        Ok(mut c) => {
            c.end_to_end.runtime_note = Some(format!(
                "{} failed, so {} ran the check: {first}",
                sel.runtime.name(),
                other.name()
            ));
            Ok(c)
        }
        Err(e) => Err(Error::Reference(format!(
            "{first}; on {} too: {e}",
            other.name()
        ))),
    }
}

/// `rt` set up for sessions that run once (ONNX Runtime without graph optimizations
/// or prepacking: the original's pieces run on one input, and opening them is most
/// of their cost); `None` when `rt` has no such mode.
fn for_one_run(rt: &dyn Runtime, opts: &VerifyOptions) -> Option<Box<dyn Runtime>> {
    if rt.name() != runtime::ort::NAME {
        return None;
    }
    let ort = runtime::ort::OrtRuntime::new(opts.threads).ok()?;
    Some(Box::new(ort.with_config(&opts.ort_config).for_one_run()))
}

/// `rt` set up so that the sessions over the rewritten model (its layers cut out,
/// then the whole model) pack each weight once: ONNX Runtime's prepacked weights
/// shared between them. `None` when `rt` has no such mode.
fn sharing_packed_weights(rt: &dyn Runtime, opts: &VerifyOptions) -> Option<Box<dyn Runtime>> {
    if rt.name() != runtime::ort::NAME {
        return None;
    }
    let ort = runtime::ort::OrtRuntime::new(opts.threads).ok()?;
    Some(Box::new(
        ort.with_config(&opts.ort_config)
            .sharing_prepacked_weights(),
    ))
}

fn check_on(
    rt: &dyn Runtime,
    original: &Path,
    rewritten: &Path,
    opts: &VerifyOptions,
) -> Result<SelfCheck> {
    let mut seconds = BTreeMap::new();
    let mut clock = std::time::Instant::now();
    let mut lap = |step: &str| {
        seconds.insert(step.to_string(), clock.elapsed().as_secs_f64());
        clock = std::time::Instant::now();
    };
    let mut orig = crate::io::load(original)?;
    let quant = crate::io::load(rewritten)?;
    let (layers, mut unchecked) = rewritten_layers(&orig.graph, &quant.graph);
    let (candidates, mut notes) = first_feeds(&orig, opts)?;
    lap("load");
    let outputs: Vec<String> = orig
        .graph
        .outputs
        .iter()
        .map(|o| orig.graph.value_name(o.value).to_string())
        .collect();

    // 1. The original, piece by piece, on the first input that runs.
    let mut rec = Recorder {
        outputs: outputs.iter().cloned().collect(),
        ..Default::default()
    };
    let mut observed: BTreeMap<String, u64> = BTreeMap::new();
    for l in layers.iter().filter(|l| l.table.is_none()) {
        rec.rows_of.insert(l.input.clone());
        rec.rows_of.insert(l.output.clone());
        observed.insert(l.input.clone(), 1 << 20);
        observed.insert(l.output.clone(), 1 << 20);
    }
    for o in &outputs {
        observed.insert(o.clone(), 1 << 20);
    }
    let plan = Plan {
        observed,
        budget: PIECE_BUDGET,
        stages: Default::default(),
    };
    let hidden = indicatif::ProgressBar::hidden();
    let mut fed = None;
    let mut last_err = None;
    let once = for_one_run(rt, opts);
    let reference: &dyn Runtime = once.as_deref().unwrap_or(rt);
    if once.is_some() {
        // The layers were matched on the file's graph above; the run reads the
        // weights in place instead of transposing a copy of each.
        runtime::ort::read_transposed_weights_in_place(&mut orig);
    }
    for (feeds, note) in candidates {
        let mut one = |_| Ok(feeds.clone());
        match capture(&orig, &plan, 1, &mut one, reference, &hidden, &mut rec) {
            Ok(_) => {
                if !note.is_empty() {
                    notes.push(note);
                }
                fed = Some(feeds);
                break;
            }
            Err(e) => last_err = Some(e),
        }
    }
    let Some(feeds) = fed else {
        let why = last_err.map_or_else(String::new, |e| e.to_string());
        return Err(Error::Reference(format!(
            "the original does not run on {}: {why}",
            rt.name()
        )));
    };
    let shapes: Vec<String> = feeds
        .iter()
        .map(|(name, t)| format!("{name} {:?}", t.shape))
        .collect();
    // A decoder's dozens of cache inputs say nothing the first few do not.
    let more = shapes.len().saturating_sub(4);
    let listed = shapes.into_iter().take(4).collect::<Vec<_>>().join(", ");
    notes.push(if more > 0 {
        format!("inputs: {listed}, ... ({more} more)")
    } else {
        format!("inputs: {listed}")
    });

    lap("original");

    // 2. The rewritten ops on the recorded rows.
    let shared = sharing_packed_weights(rt, opts);
    let rt: &dyn Runtime = shared.as_deref().unwrap_or(rt);
    let mut checked = Vec::new();
    let mut cut_feeds: NamedTensors = Vec::new();
    let mut cut: Vec<GraphIo> = Vec::new();
    let mut outs: Vec<GraphIo> = Vec::new();
    let mut expected: BTreeMap<String, Vec<f32>> = BTreeMap::new();
    let mut runnable: Vec<&Layer> = Vec::new();
    for l in &layers {
        let (Some(qa), Some(qy)) = (quant.graph.find(&l.input), quant.graph.find(&l.output)) else {
            unchecked.push(format!("{}: not found in the output", l.node));
            continue;
        };
        let input = match &l.table {
            Some(table) => {
                let rows_total = orig
                    .graph
                    .find(table)
                    .and_then(|v| orig.graph.initializer(v))
                    .and_then(|t| t.dims.first().copied())
                    .unwrap_or(0)
                    .max(0) as usize;
                let ids: Vec<i64> = picked_rows(rows_total)
                    .into_iter()
                    .map(|r| r as i64)
                    .collect();
                let (rows, _) = table_rows(&orig.graph, table, &ids)?;
                expected.insert(l.output.clone(), rows);
                let dtype = quant
                    .graph
                    .info(qa)
                    .and_then(|i| i.ty.as_ref())
                    .and_then(|t| t.tensor_parts())
                    .and_then(|(d, _)| d)
                    .unwrap_or(DType::I64);
                let t = match dtype {
                    DType::I32 => {
                        let v: Vec<i32> = ids.iter().map(|&i| i as i32).collect();
                        HostTensor::from_i32(vec![1, ids.len()], &v)?
                    }
                    _ => HostTensor::from_i64(vec![1, ids.len()], &ids)?,
                };
                (t, dtype, 2)
            }
            None => {
                let (Some((x, rank)), Some((y, _))) =
                    (rec.sampled.get(&l.input), rec.sampled.get(&l.output))
                else {
                    unchecked.push(format!("{}: the original run did not reach it", l.node));
                    continue;
                };
                expected.insert(l.output.clone(), y.to_f32_vec()?);
                (with_rank(x, *rank), DType::F32, *rank)
            }
        };
        if !cut_feeds.iter().any(|(n, _)| n == &l.input) {
            let (t, dtype, rank) = input;
            cut.push(GraphIo {
                value: qa,
                info: loose(dtype, rank, &format!("in{}", cut.len())),
            });
            cut_feeds.push((l.input.clone(), t));
        }
        let elem = quant
            .graph
            .info(qy)
            .and_then(|i| i.ty.as_ref())
            .and_then(|t| t.tensor_parts())
            .and_then(|(d, _)| d)
            .unwrap_or(DType::F32);
        outs.push(GraphIo {
            value: qy,
            info: ValueInfo {
                ty: Some(TypeInfo {
                    kind: TypeKind::Tensor {
                        elem_type: Some(elem.code()),
                        shape: None,
                    },
                    denotation: None,
                }),
                ..Default::default()
            },
        });
        runnable.push(l);
    }
    if !outs.is_empty() {
        let cut_run = CutRun {
            quant: &quant,
            cut: &cut,
            outs: &outs,
            feeds: &cut_feeds,
        };
        match cut_run.run(rt) {
            Ok(got) => compare_layers(&runnable, &got, &expected, &mut checked, &mut unchecked)?,
            Err(e) => unchecked.push(format!("the rewritten layers did not run alone: {e}")),
        }
    }
    drop(cut_feeds);
    lap("layers");

    // 3. The whole rewritten model once, on the same input.
    let file = runtime::prepare(rewritten, rt.name(), &[])?;
    let mut s = rt.open(file.path())?;
    let wanted: NamedTensors = feeds
        .iter()
        .filter(|(n, _)| s.inputs().iter().any(|i| &i.name == n))
        .cloned()
        .collect();
    let got = s.run(&wanted)?;
    drop(s);
    lap("end_to_end");
    let mut acc: BTreeMap<String, metrics::Accumulator> = BTreeMap::new();
    let mut order = Vec::new();
    for name in &outputs {
        let (Some(a), Some((_, b))) = (rec.whole.get(name), got.iter().find(|(n, _)| n == name))
        else {
            continue;
        };
        let b = if b.is_float() {
            HostTensor::from_f32(b.shape.clone(), &b.to_f32_vec()?)?
        } else {
            b.clone()
        };
        acc.entry(name.clone()).or_default().add(name, a, &b)?;
        order.push(name.clone());
    }
    let mut worst: Vec<&LayerCheck> = checked.iter().collect();
    worst.sort_by(|a, b| b.rel_l2.total_cmp(&a.rel_l2));
    let hint = worst.first().map(|w| {
        format!(
            "the largest error is in '{}' (rel-L2 {:.2e}); --exclude {} keeps it float, or \
             give it more bits",
            w.node, w.rel_l2, w.node
        )
    });
    let worst: Vec<String> = worst.iter().take(5).map(|l| l.node.clone()).collect();
    Ok(SelfCheck {
        layers: checked,
        worst,
        hint,
        unchecked,
        seconds,
        end_to_end: Report {
            runtime: rt.name().to_string(),
            runtime_note: None,
            reference: original.to_path_buf(),
            candidate: rewritten.to_path_buf(),
            samples: 1,
            inputs: "the original's run, piece by piece".into(),
            lowered: file
                .lowered
                .as_ref()
                .map(|r| vec![format!("candidate: {r}")])
                .unwrap_or_default(),
            notes,
            outputs: order.iter().map(|n| acc[n].finish(n)).collect(),
            extra_outputs: Vec::new(),
        },
    })
}

impl SelfCheck {
    /// The per-layer summary for the terminal: count, mean and the worst five.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        if !self.layers.is_empty() {
            let n = self.layers.len() as f64;
            let mean = self.layers.iter().map(|l| l.rel_l2).sum::<f64>() / n;
            s.push_str(&format!(
                "layer check: {} rewritten layers on the original's activations, rel-L2 mean \
                 {mean:.2e}; worst:\n",
                self.layers.len()
            ));
            for name in &self.worst {
                if let Some(l) = self.layers.iter().find(|l| &l.node == name) {
                    s.push_str(&format!(
                        "  {:<48} {:<28} rel-L2 {:.2e}  max-abs {:.3e}  cosine {:.5}\n",
                        l.node, l.op, l.rel_l2, l.max_abs, l.cosine
                    ));
                }
            }
        }
        if let Some(h) = &self.hint {
            s.push_str(&format!("hint: {h}\n"));
        }
        for u in &self.unchecked {
            s.push_str(&format!("not checked alone: {u}\n"));
        }
        s
    }
}
