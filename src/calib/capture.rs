//! The calibration loop: runs the float model over the calibration samples with the
//! values to observe exposed, and hands each observed tensor to a visitor.
//!
//! A model whose weights plus the statistics of its observed values would not fit
//! the memory budget at once is cut into pieces along its topological order. Each
//! piece is extracted as a model of its own (the values crossing its cuts become its
//! inputs and outputs) and runs on every sample before the next piece opens, so one
//! session holds one piece's weights. Crossing values are kept per sample between
//! pieces: activations (samples × tokens × hidden), not weights. Cuts go where the
//! fewest values cross, which in a decoder is the residual stream between layers.
//! After each piece the caller learns which observed values are complete, so it can
//! consume and free their statistics before the next piece adds its own.
//!
//! Quantized-prefix calibration: observed values may be grouped into stages (a
//! decoder's layers); then a cut lies between every two stages, and after each piece
//! the observer may hand back weights (the piece's quantized weights, dequantized)
//! that replace initializers of the same name from then on. A piece whose own
//! weights were replaced runs again to carry its outputs forward, so stage i is
//! observed on the outputs of the already-replaced stages 0…i−1. Replacements are
//! dropped once no later piece reads them: at most one piece's weights are held.
use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::error::{Error, Result};
use crate::ir::{
    Dim, Graph, GraphIo, Model, Node, ShapeDim, Tensor, TypeInfo, TypeKind, Use, ValueDef, ValueId,
    ValueInfo,
};
use crate::runtime::{HostTensor, NamedTensors, Runtime};

/// What a calibration statistic does with the observed tensors.
pub trait Observer {
    /// One observed float tensor of one sample.
    fn observe(&mut self, name: &str, values: &[f32], shape: &[usize]);

    /// Every sample has been seen for the values `completed`; their statistics can
    /// be consumed and freed.
    fn piece_done(&mut self, completed: &[String]) -> Result<()>;

    /// Asked after each `piece_done`: weights that replace the initializers of their
    /// names for the rest of the calibration (none by default).
    fn replacements(&mut self) -> Vec<Tensor> {
        Vec::new()
    }
}

/// What a calibration run did.
#[derive(Debug, Default)]
pub struct Captured {
    /// Sessions the model was cut into (0 when only graph inputs were observed).
    pub pieces: usize,
    /// Pieces run a second time with their replaced weights.
    pub reruns: usize,
    /// Replacements that came after every reader of their initializer had run (a
    /// weight read in an earlier piece than the one completing its input): the rest of
    /// the calibration saw the original values there.
    pub too_late: Vec<String>,
}

/// What to observe and how much memory a piece may take.
pub struct Plan {
    /// Observed value name → bytes of the statistics kept for it.
    pub observed: BTreeMap<String, u64>,
    /// Budget of one piece: the bytes of the weights it reads plus the statistics of
    /// the values it observes. A single node over budget is a piece of its own.
    pub budget: u64,
    /// Observed value name → stage (a decoder layer): pieces never span two stages'
    /// observed values and their readers. Empty: no stage cuts.
    pub stages: BTreeMap<String, usize>,
}

/// One consecutive range of the topological order.
#[derive(Debug, Clone, PartialEq)]
struct Piece {
    /// Node positions `start..end`.
    start: usize,
    end: usize,
    /// Values produced before `start` that the piece reads (not graph inputs).
    inputs: Vec<String>,
    /// Values produced in the piece and read after `end`.
    outputs: Vec<String>,
    /// Carried values still read after `end` (the rest are dropped after the piece).
    keep: Vec<String>,
    /// Observed values this piece completes.
    observed: Vec<String>,
}

/// Where each node output is produced and read, by node position.
struct Lifetimes {
    /// Node output name → (producer position, sorted reader positions).
    spans: BTreeMap<String, (usize, Vec<usize>)>,
    n: usize,
}

/// Whether `node` computes the same values on every run from constants only:
/// initializers, empty optional inputs and values in `constant`. Random ops and nodes
/// with subgraphs (which may read outer values) never are.
fn is_constant_chain(g: &Graph, node: &Node, constant: &BTreeSet<ValueId>) -> bool {
    !node.op_type.starts_with("Random")
        && !matches!(node.op_type.as_str(), "Bernoulli" | "Multinomial")
        && node
            .attributes
            .iter()
            .all(|a| a.subgraphs().next().is_none())
        && node
            .inputs()
            .iter()
            .flatten()
            .all(|v| constant.contains(v) || g.initializer(*v).is_some())
}

impl Lifetimes {
    fn of(model: &Model) -> Result<Lifetimes> {
        let g = &model.graph;
        let order = g.sorted_node_ids()?;
        let pos: HashMap<_, _> = order.iter().enumerate().map(|(i, &n)| (n, i)).collect();
        let mut spans = BTreeMap::new();
        let mut constant: BTreeSet<ValueId> = BTreeSet::new();
        for (i, &id) in order.iter().enumerate() {
            let node = g.node(id);
            // A value computed from constants alone (a Constant node, a shape or
            // rotary-table chain) is recomputed in every piece that reads it rather
            // than carried: a runtime sees it as a constant there (tract needs that
            // for Split sizes, Unsqueeze axes, Reshape shapes), and it costs no memory
            // per sample.
            if is_constant_chain(g, node, &constant) {
                constant.extend(node.outputs().iter().flatten());
                continue;
            }
            for v in node.outputs().iter().flatten() {
                let mut readers: Vec<usize> = g
                    .value(*v)
                    .uses()
                    .iter()
                    .map(|u| match u {
                        Use::Input(n, _) | Use::Capture(n) => pos[n],
                    })
                    .collect();
                readers.sort_unstable();
                spans.insert(g.value_name(*v).to_string(), (i, readers));
            }
        }
        Ok(Lifetimes {
            spans,
            n: order.len(),
        })
    }

    /// Values produced in `from..to` and read at or after `after`.
    fn live(&self, from: usize, to: usize, after: usize) -> Vec<String> {
        self.spans
            .iter()
            .filter(|(_, (d, r))| (from..to).contains(d) && r.last().is_some_and(|&l| l >= after))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Values produced before `start` and read in `start..end`.
    fn read_in(&self, start: usize, end: usize) -> Vec<String> {
        self.spans
            .iter()
            .filter(|(_, (d, r))| *d < start && r.iter().any(|p| (start..end).contains(p)))
            .map(|(n, _)| n.clone())
            .collect()
    }
}

/// Cuts the graph into pieces within `plan.budget` (one piece when it all fits).
fn pieces(model: &Model, plan: &Plan) -> Result<Vec<Piece>> {
    let g = &model.graph;
    let order = g.sorted_node_ids()?;
    let life = Lifetimes::of(model)?;
    let n = life.n;
    // Cost of each position: initializers first read there, statistics of the
    // values produced there.
    let mut cost = vec![0u64; n];
    let mut seen = BTreeSet::new();
    for (i, &id) in order.iter().enumerate() {
        let node = g.node(id);
        for v in node.inputs().iter().flatten() {
            if let Some(t) = g.initializer(*v) {
                if seen.insert(*v) {
                    cost[i] += t.stored_len() as u64;
                }
            }
        }
        for v in node.outputs().iter().flatten() {
            cost[i] += plan.observed.get(g.value_name(*v)).copied().unwrap_or(0);
        }
    }
    // crossing[c] = how many values cross the cut before c.
    let mut diff = vec![0i64; n + 2];
    for (d, r) in life.spans.values() {
        let (d, l) = (*d, r.last().copied().unwrap_or(*d));
        if l > d {
            diff[d + 1] += 1;
            diff[l + 1] -= 1;
        }
    }
    let mut crossing = vec![0i64; n + 1];
    let mut run = 0;
    for c in 0..=n {
        run += diff[c];
        crossing[c] = run;
    }
    let mut forced = stage_cuts(&life, &plan.stages, &crossing)
        .into_iter()
        .peekable();
    let mut cuts = vec![0usize];
    let mut acc = 0u64;
    for i in 0..n {
        if forced.next_if_eq(&i).is_some() && i > *cuts.last().expect("starts with 0") {
            cuts.push(i);
            acc = 0;
        }
        acc += cost[i];
        let start = *cuts.last().expect("starts with 0");
        if acc > plan.budget && i > start {
            // The latest of the narrowest cuts in (start, i].
            let c = (start + 1..=i)
                .rev()
                .min_by_key(|&c| crossing[c])
                .expect("non-empty range");
            cuts.push(c);
            acc = cost[c..=i].iter().sum();
        }
    }
    cuts.push(n);
    let mut out: Vec<Piece> = Vec::with_capacity(cuts.len() - 1);
    for w in cuts.windows(2) {
        let (start, end) = (w[0], w[1]);
        let observed = order[start..end]
            .iter()
            .flat_map(|&id| g.node(id).outputs().iter().flatten())
            .map(|v| g.value_name(*v).to_string())
            .filter(|name| plan.observed.contains_key(name))
            .collect();
        out.push(Piece {
            start,
            end,
            inputs: life.read_in(start, end),
            outputs: life.live(start, end, end),
            keep: life.live(0, start, end),
            observed,
        });
    }
    // A piece whose values nobody reads need not run: what follows the last observed
    // value, or a stretch of constant chains (recomputed where they are read). The
    // next piece's carry still holds what it reads, since the piece before kept
    // every value read after its own end.
    out.retain(|p| !(p.outputs.is_empty() && p.observed.is_empty()));
    Ok(out)
}

/// Cut positions between consecutive stages: a cut `c` (positions `< c` before it)
/// after the last reader of one stage's observed values and at or before the first
/// of the next stage's, where the fewest values cross. Stages that overlap in the
/// order get no cut.
fn stage_cuts(life: &Lifetimes, stages: &BTreeMap<String, usize>, crossing: &[i64]) -> Vec<usize> {
    // stage → (first producer, last reader) of its observed values.
    let mut span: BTreeMap<usize, (usize, usize)> = BTreeMap::new();
    for (name, &stage) in stages {
        let Some((d, r)) = life.spans.get(name) else {
            continue;
        };
        let last = r.last().copied().unwrap_or(*d);
        let e = span.entry(stage).or_insert((*d, last));
        e.0 = e.0.min(*d);
        e.1 = e.1.max(last);
    }
    let spans: Vec<(usize, usize)> = span.into_values().collect();
    let mut cuts: Vec<usize> = spans
        .windows(2)
        .filter(|w| w[1].0 > w[0].1)
        .map(|w| {
            (w[0].1 + 1..=w[1].0)
                .rev()
                .min_by_key(|&c| crossing[c])
                .expect("non-empty range")
        })
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    cuts
}

/// A tensor type with the dtype of `t` and one named dimension per axis (samples
/// may differ in shape).
fn loose_type(name: &str, t: &HostTensor) -> ValueInfo {
    let shape = (0..t.shape.len())
        .map(|a| ShapeDim {
            dim: Dim::Param(format!("{name}_d{a}")),
            denotation: None,
        })
        .collect();
    ValueInfo {
        ty: Some(TypeInfo {
            kind: TypeKind::Tensor {
                elem_type: Some(t.dtype.code()),
                shape: Some(shape),
            },
            denotation: None,
        }),
        ..Default::default()
    }
}

/// The model computing `piece`'s outputs and observed values from its inputs and
/// the original graph inputs it reads. `types` gives each cut value's type;
/// initializers named in `swapped` take those values.
fn piece_model(
    model: &Model,
    piece: &Piece,
    types: &BTreeMap<String, ValueInfo>,
    swapped: &BTreeMap<String, (Tensor, usize)>,
) -> Result<Model> {
    let g = &model.graph;
    let io = |name: &String| -> Result<GraphIo> {
        let value = g
            .find(name)
            .ok_or_else(|| Error::tensor(name, "is not a value of the main graph"))?;
        let info = types
            .get(name)
            .cloned()
            .or_else(|| g.info(value).cloned())
            .unwrap_or_default();
        Ok(GraphIo { value, info })
    };
    let cut: Vec<GraphIo> = piece.inputs.iter().map(io).collect::<Result<_>>()?;
    let mut wanted: Vec<&String> = piece.outputs.iter().collect();
    wanted.extend(piece.observed.iter().filter(|o| !piece.outputs.contains(o)));
    let outputs: Vec<GraphIo> = wanted.into_iter().map(io).collect::<Result<_>>()?;
    let mut graph = g.extract(&cut, &outputs)?;
    for (name, (t, _)) in swapped {
        if let Some(v) = graph.find(name).filter(|&v| graph.initializer(v).is_some()) {
            graph.set_initializer(v, t.clone());
        }
    }
    Ok(Model {
        ir_version: model.ir_version,
        opset_import: model.opset_import.clone(),
        graph,
        has_graph: true,
        functions: model.functions.clone(),
        // Where its external data is, so a session can read it in place.
        source: model.source.clone(),
        ..Default::default()
    })
}

/// Runs `model` on `count` samples (`feeds(i)` builds sample `i`), handing every
/// observed float tensor to `observer` (graph inputs among them are observed from
/// the feeds), telling it after each piece what is complete, and running the rest
/// with the weights it hands back then (see the module comment).
pub fn capture(
    model: &Model,
    plan: &Plan,
    count: usize,
    feeds: &mut dyn FnMut(usize) -> Result<NamedTensors>,
    runtime: &dyn Runtime,
    progress: &indicatif::ProgressBar,
    observer: &mut dyn Observer,
) -> Result<Captured> {
    let g = &model.graph;
    let graph_inputs: BTreeSet<String> = g.input_specs().into_iter().map(|s| s.name).collect();
    for name in plan.observed.keys() {
        let v = g.find(name).ok_or_else(|| {
            Error::tensor(
                name,
                "is not a value of the main graph; it cannot be observed",
            )
        })?;
        if !graph_inputs.contains(name) && !matches!(g.value(v).def, ValueDef::Node(..)) {
            return Err(Error::tensor(
                name,
                "is a constant, not an activation; it cannot be observed",
            ));
        }
    }
    if count == 0 {
        return Err(Error::invalid("the calibration set is empty"));
    }
    let pieces = pieces(model, plan)?;
    let mut captured = Captured {
        pieces: pieces.len(),
        ..Default::default()
    };
    if pieces.is_empty() {
        // Only graph inputs are observed: the feeds are the statistics, nothing runs.
        progress.set_length(count as u64);
        for i in 0..count {
            for (name, t) in &feeds(i)? {
                if plan.observed.contains_key(name) && t.is_float() {
                    observer.observe(name, &t.to_f32_vec()?, &t.shape);
                }
            }
            progress.inc(1);
        }
        let completed: Vec<String> = plan
            .observed
            .keys()
            .filter(|n| graph_inputs.contains(*n))
            .cloned()
            .collect();
        observer.piece_done(&completed)?;
        return Ok(captured);
    }
    progress.set_length((count * pieces.len()) as u64);
    let pos: HashMap<_, _> = g
        .sorted_node_ids()?
        .into_iter()
        .enumerate()
        .map(|(i, n)| (n, i))
        .collect();
    // The last node position reading the value `name`.
    let last_reader = |name: &str| {
        g.find(name).and_then(|v| {
            g.value(v)
                .uses()
                .iter()
                .map(|u| match u {
                    Use::Input(n, _) | Use::Capture(n) => pos[n],
                })
                .max()
        })
    };
    let run = PieceRun {
        runtime,
        progress,
        pieces: pieces.len(),
    };
    // Values crossing the current cut, per sample.
    let mut carried: Vec<BTreeMap<String, HostTensor>> = vec![BTreeMap::new(); count];
    let mut types: BTreeMap<String, ValueInfo> = BTreeMap::new();
    // Replaced initializers (with their last reader's position) later pieces run with.
    let mut swapped: BTreeMap<String, (Tensor, usize)> = BTreeMap::new();
    for (pi, piece) in pieces.iter().enumerate() {
        let m = piece_model(model, piece, &types, &swapped)?;
        let mut next = run.piece(
            &m,
            piece,
            pi,
            &carried,
            feeds,
            Some((plan, &mut *observer)),
            &mut types,
        )?;
        drop(m);
        let mut completed: Vec<String> = piece.observed.clone();
        if pi == 0 {
            completed.extend(
                plan.observed
                    .keys()
                    .filter(|n| graph_inputs.contains(*n))
                    .cloned(),
            );
        }
        observer.piece_done(&completed)?;
        let mut rerun = false;
        for t in observer.replacements() {
            match last_reader(t.name()) {
                Some(last) if last >= piece.start => {
                    rerun |= last < piece.end;
                    swapped.insert(t.name().to_string(), (t, last));
                }
                _ => captured.too_late.push(t.name().to_string()),
            }
        }
        // Nothing to carry past the last piece.
        if rerun && !piece.outputs.is_empty() {
            // The piece's outputs as its replaced weights compute them.
            progress.inc_length(count as u64);
            let m = piece_model(model, piece, &types, &swapped)?;
            next = run.piece(&m, piece, pi, &carried, feeds, None, &mut types)?;
            captured.reruns += 1;
        }
        for (carry, out) in carried.iter_mut().zip(next) {
            carry.retain(|name, _| piece.keep.contains(name));
            carry.extend(out);
        }
        swapped.retain(|_, (_, last)| *last >= piece.end);
    }
    Ok(captured)
}

/// Runs pieces of one capture.
struct PieceRun<'a> {
    runtime: &'a dyn Runtime,
    progress: &'a indicatif::ProgressBar,
    pieces: usize,
}

impl PieceRun<'_> {
    /// Runs `m` (piece `pi`) on every sample, observing when `observe` is given,
    /// and returns each sample's piece outputs to carry.
    #[allow(clippy::too_many_arguments)]
    fn piece(
        &self,
        m: &Model,
        piece: &Piece,
        pi: usize,
        carried: &[BTreeMap<String, HostTensor>],
        feeds: &mut dyn FnMut(usize) -> Result<NamedTensors>,
        mut observe: Option<(&Plan, &mut dyn Observer)>,
        types: &mut BTreeMap<String, ValueInfo>,
    ) -> Result<Vec<Vec<(String, HostTensor)>>> {
        let mut session = crate::runtime::open_model(self.runtime, m, &[])?;
        let wanted: BTreeSet<String> = session.inputs().iter().map(|s| s.name.clone()).collect();
        let mut next = Vec::with_capacity(carried.len());
        for (i, carry) in carried.iter().enumerate() {
            let sample = feeds(i)?;
            if let (0, Some((plan, observer))) = (pi, observe.as_mut()) {
                for (name, t) in &sample {
                    if plan.observed.contains_key(name) && t.is_float() {
                        observer.observe(name, &t.to_f32_vec()?, &t.shape);
                    }
                }
            }
            let mut inputs: NamedTensors = sample
                .into_iter()
                .filter(|(n, _)| wanted.contains(n))
                .collect();
            for name in &piece.inputs {
                let t = carry.get(name).ok_or_else(|| {
                    Error::tensor(name, "was not carried over from the previous piece")
                })?;
                inputs.push((name.clone(), t.clone()));
            }
            let outputs = session.run(&inputs).map_err(|e| {
                Error::invalid(format!(
                    "calibration sample #{} does not run on {} (piece {} of {}): {e}",
                    i + 1,
                    self.runtime.name(),
                    pi + 1,
                    self.pieces
                ))
            })?;
            let mut out = Vec::new();
            for (name, t) in outputs {
                if let Some((plan, observer)) = observe.as_mut() {
                    if plan.observed.contains_key(&name) && t.is_float() {
                        observer.observe(&name, &t.to_f32_vec()?, &t.shape);
                    }
                }
                if piece.outputs.contains(&name) {
                    types
                        .entry(name.clone())
                        .or_insert_with(|| loose_type(&name, &t));
                    out.push((name, t));
                }
            }
            next.push(out);
            self.progress.inc(1);
        }
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_decoder() -> Model {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/llama-decomposed.onnx"
        );
        crate::io::load(std::path::Path::new(path)).expect("fixture loads")
    }

    /// Observes every MatMul's A input, at 1 byte each.
    fn plan(m: &Model, budget: u64) -> Plan {
        let g = &m.graph;
        let observed = g
            .nodes()
            .filter(|(_, n)| n.op_type == "MatMul")
            .filter_map(|(_, n)| Some((g.value_name(n.input(0)?).to_string(), 1)))
            .collect();
        Plan {
            observed,
            budget,
            stages: BTreeMap::new(),
        }
    }

    #[test]
    fn everything_fits_in_one_piece() {
        let m = tiny_decoder();
        let p = pieces(&m, &plan(&m, u64::MAX)).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].observed.len(), plan(&m, 0).observed.len());
        assert!(p[0].inputs.is_empty() && p[0].outputs.is_empty());
    }

    #[test]
    fn a_small_budget_cuts_where_little_crosses() {
        let m = tiny_decoder();
        let p = pieces(&m, &plan(&m, 1)).unwrap();
        assert!(p.len() > 2, "{} pieces", p.len());
        for w in p.windows(2) {
            assert_eq!(w[0].end, w[1].start);
            // What a piece reads was produced by an earlier piece and carried.
            for name in &w[1].inputs {
                assert!(
                    w[0].outputs.contains(name) || w[0].keep.contains(name),
                    "{name}"
                );
            }
        }
    }
}
