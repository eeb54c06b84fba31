//! QuaRot on a decoder mapped by `crate::llm` (float weights, RMS norms):
//!
//! 1. every RMS norm's scale γ is fused into the rows of the projections reading it
//!    (`W ← diag(γ)·W`) and set to 1, except on the channels kept out of the
//!    rotation (below), where it stays in the norm — fused (RMSNormalization,
//!    SimplifiedLayerNormalization, SkipSimplifiedLayerNormalization) and decomposed
//!    norms; LayerNorm (mean-centering) is refused: it does not commute with Q;
//! 2. the residual stream is rotated by a seeded randomized Hadamard Q
//!    (`H·diag(±1)/√d`): embedding rows `E·Q`; q/k/v/gate/up and lm_head `Qᵀ·W`;
//!    o_proj and down_proj (and their biases) `W·Q`. RMS norms of `x·Q` are the norms
//!    of x rotated, so the float function is unchanged. A tied lm_head whose final
//!    norm has a scale stays tied: the scale is applied in the rotated basis by a
//!    float [d, d] MatMul `Qᵀ·diag(γ)·Q` before the head (marked like the online
//!    rotations), so quantizers still share one table (the note says the bytes).
//!    Channels an RMS norm damps to ≈0 (massive activations) stay out of Q;
//! 3. before each down_proj, the activations are multiplied online by a Hadamard
//!    rotation H (a MatMul by a constant, marked so quantizers leave it float) and
//!    `Hᵀ` is folded into down_proj's rows.
//!
//! Orders that are not powers of two use a Paley matrix ⊗ a Sylvester matrix
//! (`crate::quant::hadamard`); where none is constructed, a seeded random orthogonal
//! matrix, and the notes say which. Rotation products run in f64.
use std::collections::BTreeMap;

use serde::Deserialize;

use super::select;
use super::tensors::{self, Edit};
use crate::error::{Error, Result};
use crate::ir::{Graph, Model, NodeId, NodeSpec, ValueId};
use crate::llm::{DecoderMap, LayerMap, NormKind, NormMap, WeightLayout, WeightRef};
use crate::quant::hadamard::Rotation;
use crate::quant::hadamard::{
    embed_rotation, kronecker_split, largest_hadamard_order, normalized_hadamard,
    randomized_hadamard, rotate_cols, rotate_rows,
};
use crate::rewrite::matchers::{constant, weight_matmul, WeightMatMul, ONLINE_ROTATION_KEY};
use crate::rewrite::{Pass, PassCx, PassOutcome, PASS_KEY};
use crate::transforms::common::scale_fold::weight_private;

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct QuarotConfig {
    /// Seed of the rotation's random signs (default: the pipeline seed).
    pub seed: Option<u64>,
    /// Insert the online Hadamard rotation before each down_proj.
    pub online_hadamard: bool,
    /// Residual channels whose scale in some RMS norm is below this fraction of that
    /// norm's median |scale| stay out of the residual rotation (0: rotate them all).
    pub damped_channel_ratio: f64,
    /// Which projections take the rotation: `all` (the paper), or `measured`: each
    /// norm reader and down_proj whose calibrated error after round-to-nearest at
    /// `bits`/`block-size` the rotation lowers; the others read the stream de-rotated
    /// online (see `select`).
    pub select: Select,
    /// `measured`: the rounding it predicts.
    pub bits: u8,
    pub block_size: usize,
    pub symmetric: bool,
    /// `measured`: calibration, as for gptq.
    pub calib: Option<String>,
    pub calib_text: Option<String>,
    pub tokenizer: Option<String>,
    pub calib_samples: usize,
    pub calib_seqlen: usize,
    pub runtime: String,
    pub calib_memory_mb: u64,
}

#[derive(Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Select {
    #[default]
    All,
    Measured,
}

impl Default for QuarotConfig {
    fn default() -> Self {
        QuarotConfig {
            seed: None,
            online_hadamard: true,
            damped_channel_ratio: DAMPED_CHANNEL_RATIO,
            select: Select::All,
            bits: 4,
            block_size: 32,
            symmetric: true,
            calib: None,
            calib_text: None,
            tokenizer: None,
            calib_samples: 16,
            calib_seqlen: 128,
            runtime: "auto".into(),
            calib_memory_mb: crate::transforms::calibrated::gptq::CALIB_MEMORY_MB,
        }
    }
}

pub const QUAROT_KEYS: &[&str] = &[
    "seed",
    "online-hadamard",
    "damped-channel-ratio",
    "select",
    "bits",
    "block-size",
    "symmetric",
    "calib",
    "calib-text",
    "tokenizer",
    "calib-samples",
    "calib-seqlen",
    "runtime",
    "calib-memory-mb",
];

/// A norm scale below 1% of its median marks a channel the model damps: trained
/// decoders carry massive activations there (SmolLM2-135M: channels 247 and 507, 300×
/// the mean energy of the normalized stream, scale ≈ 0), used only through the RMS.
/// Rotated, that energy lands on every input channel of the quantized projections and
/// multiplies their rounding error (RTN sym b32 output error of gate_proj 0.07 → 0.13);
/// kept out of the rotation, the norm's zero scale still removes it exactly.
const DAMPED_CHANNEL_RATIO: f64 = 0.01;

const NAME: &str = "quarot";

/// Largest rotation order (a 16384² f64 matrix is 2 GiB).
const MAX_ORDER: usize = 16384;

pub struct Quarot {
    pub config: QuarotConfig,
}

fn refuse(reason: impl Into<String>) -> Error {
    Error::invalid(format!("quarot: {}", reason.into()))
}

/// The norm's scale γ as a [d] vector (ones when it has none), after checking the
/// norm is an RMS norm over the last axis.
fn norm_scale(g: &Graph, norm: &NormMap, d: usize) -> Result<Vec<f64>> {
    match norm.kind {
        NormKind::LayerNormalization | NormKind::SkipLayerNormalization => {
            return Err(refuse(format!(
                "norm '{}' is a {:?} (it subtracts the mean): a rotated residual stream \
                 needs RMS norms, whose output commutes with the rotation",
                norm.node, norm.kind
            )))
        }
        NormKind::SkipSimplifiedLayerNormalization => {
            let node = g.node(norm.node_id);
            if node.input(3).is_some() {
                return Err(refuse(format!(
                    "Skip norm '{}' adds a bias to the residual stream (not rotated)",
                    norm.node
                )));
            }
        }
        NormKind::RmsNormalization
        | NormKind::SimplifiedLayerNormalization
        | NormKind::DecomposedRms => {}
    }
    let node = g.node(norm.node_id);
    if norm.kind != NormKind::DecomposedRms && node.attr_int("axis").is_some_and(|a| a != -1) {
        return Err(refuse(format!(
            "norm '{}' normalizes over axis {:?}, not the last one",
            norm.node,
            node.attr_int("axis")
        )));
    }
    let Some(w) = &norm.weight else {
        return Ok(vec![1.0; d]);
    };
    let v = g
        .find(w)
        .ok_or_else(|| refuse(format!("norm '{}': no value '{w}'", norm.node)))?;
    let gamma =
        tensors::read(g, v).map_err(|e| refuse(format!("norm '{}' scale: {e}", norm.node)))?;
    if gamma.len() != d {
        return Err(refuse(format!(
            "norm '{}' scale '{w}' has {} elements, not the hidden size {d}",
            norm.node,
            gamma.len()
        )));
    }
    Ok(gamma)
}

/// For each residual channel, the smallest |scale| / median |scale| over the decoder's
/// RMS norms (1 where no norm has a scale).
fn channel_damping(g: &Graph, map: &DecoderMap, d: usize) -> Result<Vec<f64>> {
    let norms = map
        .layers
        .iter()
        .flat_map(|l| [&l.input_norm, &l.post_attention_norm])
        .chain([&map.final_norm]);
    let mut damping = vec![1f64; d];
    for norm in norms {
        let gamma = norm_scale(g, norm, d)?;
        let mut abs: Vec<f64> = gamma.iter().map(|x| x.abs()).collect();
        abs.sort_by(f64::total_cmp);
        let median = abs[abs.len() / 2];
        if median > 0.0 {
            for (r, x) in damping.iter_mut().zip(&gamma) {
                *r = r.min(x.abs() / median);
            }
        }
    }
    Ok(damping)
}

/// The residual rotation: a randomized Hadamard on every channel, or, when some
/// channels are damped below `ratio`, on the largest constructed order among the
/// others, the most damped channels left in place.
fn residual_rotation(
    damping: &[f64],
    ratio: f64,
    seed: u64,
) -> (Rotation, Option<String>, Vec<bool>) {
    let d = damping.len();
    let damped = damping.iter().filter(|&&r| r < ratio).count();
    if damped == 0 {
        return (randomized_hadamard(d, seed), None, vec![false; d]);
    }
    let s = largest_hadamard_order(d - damped);
    let mut order: Vec<usize> = (0..d).collect();
    order.sort_by(|&a, &b| damping[a].total_cmp(&damping[b]).then(a.cmp(&b)));
    let (fixed, rest) = order.split_at(d - s);
    let mut rotated = rest.to_vec();
    rotated.sort_unstable();
    let mut fixed = fixed.to_vec();
    fixed.sort_unstable();
    let q = embed_rotation(d, &rotated, &randomized_hadamard(s, seed));
    let note = format!(
        "{} residual channels kept out of the rotation ({damped} with a norm scale below \
         {ratio} of its median, which carry massive activations the norm damps): {fixed:?}",
        fixed.len()
    );
    let mut kept = vec![false; d];
    fixed.iter().for_each(|&i| kept[i] = true);
    (q, Some(note), kept)
}

/// A norm's scale γ split around the rotation: `fused` (γ on rotated channels, 1 on
/// kept ones) goes into the projections reading it; `left` (γ on kept channels, 1 on
/// rotated ones) stays in the norm. Q never mixes a kept channel, so diag(left)
/// commutes with it, and the damped channels' massive activations stay damped at
/// the projections' inputs, where 8-bit activation quantization would see them.
fn split_scale(gamma: &[f64], kept: &[bool]) -> (Vec<f64>, Vec<f64>) {
    gamma
        .iter()
        .zip(kept)
        .map(|(&g, &k)| if k { (1.0, g) } else { (g, 1.0) })
        .unzip()
}

/// The norm's scale constant set to `left` (see [`split_scale`]).
fn left_scale(g: &Graph, norm: &NormMap, left: &[f64]) -> Result<Option<Edit>> {
    let Some(w) = &norm.weight else {
        return Ok(None);
    };
    let v = g
        .find(w)
        .ok_or_else(|| refuse(format!("norm '{}': no value '{w}'", norm.node)))?;
    tensors::replace(g, v, left).map(Some)
}

/// A linear layer as a float weight MatMul this pass can rewrite, whose K (or N)
/// is the size of the rotation applied on that side.
fn sized(
    g: &Graph,
    w: &WeightRef,
    what: &str,
    k: Option<usize>,
    n: Option<usize>,
) -> Result<WeightMatMul> {
    let m = linear(g, w, what)?;
    for (side, want, got) in [("K", k, m.k), ("N", n, m.n)] {
        if want.is_some_and(|want| want != got) {
            return Err(refuse(format!(
                "{what} '{}' has {side} = {got}, not the rotated size {}",
                w.node,
                want.unwrap_or(0)
            )));
        }
    }
    Ok(m)
}

/// A linear layer as a float weight MatMul this pass can rewrite.
fn linear(g: &Graph, w: &WeightRef, what: &str) -> Result<WeightMatMul> {
    if matches!(
        w.layout,
        WeightLayout::MatMulNBits | WeightLayout::MatMulBnb4
    ) {
        return Err(refuse(format!(
            "{what} '{}' is already quantized ({}): rotate the float model",
            w.node, w.op
        )));
    }
    weight_matmul(g, w.node_id).map_err(|why| refuse(format!("{what} '{}': {why}", w.node)))
}

fn private(g: &Graph, m: &WeightMatMul, what: &str, node: &str) -> Result<()> {
    if weight_private(g, m) {
        Ok(())
    } else {
        Err(refuse(format!(
            "{what} '{node}' shares its weight '{}' with other nodes",
            g.value_name(m.weight)
        )))
    }
}

/// A layer's two RMS norms with the projections reading each (q/k/v, gate/up).
fn norm_readers(l: &LayerMap) -> [(&NormMap, Vec<(&'static str, &WeightRef)>); 2] {
    fn present<'a>(
        ws: Vec<(&'static str, &'a Option<WeightRef>)>,
    ) -> Vec<(&'static str, &'a WeightRef)> {
        ws.into_iter()
            .filter_map(|(what, w)| w.as_ref().map(|w| (what, w)))
            .collect()
    }
    let (a, mlp) = (&l.attention, &l.mlp);
    [
        (
            &l.input_norm,
            present(vec![
                ("q_proj", &a.q_proj),
                ("k_proj", &a.k_proj),
                ("v_proj", &a.v_proj),
                ("qkv_proj", &a.qkv_proj),
            ]),
        ),
        (
            &l.post_attention_norm,
            present(vec![
                ("gate_proj", &mlp.gate_proj),
                ("up_proj", &mlp.up_proj),
                ("gate_up_proj", &mlp.gate_up_proj),
            ]),
        ),
    ]
}

fn scale_rows(w: &mut [f64], n: usize, gamma: &[f64]) {
    for (row, s) in w.chunks_mut(n.max(1)).zip(gamma) {
        row.iter_mut().for_each(|x| *x *= s);
    }
}

/// Everything the pass computes before it changes the graph.
struct Plan {
    edits: Vec<Edit>,
    /// down_proj nodes that get `MatMul(x, H)` in front.
    online: Vec<NodeId>,
    /// Norm readers left out of the rotation: (reader, norm, the norm's γ).
    derotated: Vec<(NodeId, String, Vec<f64>)>,
    /// Tied lm_head kept: the final norm's scale in the rotated basis, [d, d].
    head_scale: Option<crate::ir::Tensor>,
    notes: Vec<String>,
    norms: u64,
    linears: u64,
}

impl Quarot {
    pub fn new(config: QuarotConfig) -> Result<Self> {
        let r = config.damped_channel_ratio;
        if !(0.0..1.0).contains(&r) {
            return Err(refuse(format!("damped-channel-ratio {r} is not in [0, 1)")));
        }
        Ok(Quarot { config })
    }

    fn plan(
        &self,
        g: &Graph,
        map: &DecoderMap,
        q: &Rotation,
        h: Option<&Rotation>,
        kept: &[bool],
        choice: Option<&select::Choice>,
    ) -> Result<Plan> {
        let d = map.hidden_size;
        let rotated = |n: NodeId| choice.is_none_or(|c| c.rotated.contains(&n));
        let mut plan = Plan {
            edits: Vec::new(),
            online: Vec::new(),
            derotated: Vec::new(),
            head_scale: None,
            notes: Vec::new(),
            norms: 0,
            linears: 0,
        };
        let emb = &map.embedding;
        // The residual stream is rotated: a model that also outputs it would change.
        let stream = std::iter::once(emb.output_id).chain(
            map.layers
                .iter()
                .filter_map(|l| g.find(l.residual_in.as_deref()?)),
        );
        for v in stream {
            if g.is_graph_output(v) {
                return Err(refuse(format!(
                    "the residual stream value '{}' is a graph output: it would come out rotated",
                    g.value_name(v)
                )));
            }
        }
        if emb.op != "Gather" {
            return Err(refuse(format!(
                "embedding '{}' is {}: rotate the float model",
                emb.node, emb.op
            )));
        }
        // Input side: q/k/v, gate/up read a norm's output; a reader left out of the
        // rotation reads it de-rotated online, with its own weight.
        let input_side =
            |norm: &NormMap, ws: Vec<(&'static str, &WeightRef)>, plan: &mut Plan| -> Result<()> {
                let (gamma, left) = split_scale(&norm_scale(g, norm, d)?, kept);
                for (what, w) in ws {
                    let m = linear(g, w, what)?;
                    private(g, &m, what, &w.node)?;
                    if !rotated(w.node_id) {
                        plan.derotated
                            .push((w.node_id, norm.node.clone(), gamma.clone()));
                        continue;
                    }
                    let mut kn = tensors::read_kn(g, &m)?;
                    scale_rows(&mut kn, m.n, &gamma);
                    let r = rotate_rows(&kn, m.k, m.n, q);
                    plan.edits.push(tensors::replace_kn(g, &m, &r)?);
                    plan.linears += 1;
                }
                plan.edits.extend(left_scale(g, norm, &left)?);
                plan.norms += 1;
                Ok(())
            };
        for l in &map.layers {
            for (norm, readers) in norm_readers(l) {
                input_side(norm, readers, &mut plan)?;
            }
            let (a, mlp) = (&l.attention, &l.mlp);
            // Output side: o_proj and down_proj write into the residual stream.
            for (what, w, rows) in [
                ("o_proj", &a.o_proj, None),
                ("down_proj", &mlp.down_proj, h),
            ] {
                let m = sized(g, w, what, rows.map(|h| h.n), Some(d))?;
                private(g, &m, what, &w.node)?;
                let mut kn = tensors::read_kn(g, &m)?;
                if let Some(h) = rows.filter(|_| rotated(w.node_id)) {
                    kn = rotate_rows(&kn, m.k, m.n, h);
                    plan.online.push(w.node_id);
                }
                let r = rotate_cols(&kn, m.k, m.n, q);
                plan.edits.push(tensors::replace_kn(g, &m, &r)?);
                plan.linears += 1;
                if let Some(b) = &w.bias {
                    let v = g
                        .find(b)
                        .ok_or_else(|| refuse(format!("{what} '{}': no bias '{b}'", w.node)))?;
                    let bias = tensors::read(g, v)?;
                    if bias.len() != d || g.value(v).uses().len() != 1 {
                        return Err(refuse(format!(
                            "{what} '{}': bias '{b}' is not a private [{d}] constant",
                            w.node
                        )));
                    }
                    plan.edits
                        .push(tensors::replace(g, v, &rotate_cols(&bias, 1, d, q))?);
                }
            }
        }
        // The embedding rows, then the head (which may read the same table).
        let table = tensors::read(g, emb.table_id)?;
        if table.len() != emb.vocab_size * d {
            return Err(refuse(format!(
                "embedding table '{}' has {} elements, not {} x {d}",
                emb.table,
                table.len(),
                emb.vocab_size
            )));
        }
        let rotated = rotate_cols(&table, emb.vocab_size, d, q);
        let table_readers = g.value(emb.table_id).uses().len();
        let head = &map.lm_head;
        let m = sized(g, head, "lm_head", Some(d), None)?;
        let (gamma, left) = split_scale(&norm_scale(g, &map.final_norm, d)?, kept);
        if map.tied_lm_head {
            // Rotated rows read back as Qᵀ·Eᵀ: the tie survives only without a scale.
            if gamma.iter().all(|&x| x == 1.0) {
                plan.notes.push(format!(
                    "tied lm_head kept: the final norm has no scale, so the head reads the \
                     rotated table '{}'",
                    emb.table
                ));
            } else {
                // diag(γ) does not commute with Q, but Qᵀ·diag(γ)·Q applied to the
                // rotated stream does: the head keeps reading the rotated table, so the
                // tie (and one shared quantized table) survives for a [d, d] MatMul.
                let mut scaled = q.m.clone();
                scale_rows(&mut scaled, d, &gamma);
                let r = rotate_rows(&scaled, d, d, q);
                let (_, like) = constant(g, emb.table_id).ok_or_else(|| {
                    refuse(format!("embedding table '{}' is not a constant", emb.table))
                })?;
                let name = g.fresh_name(&format!("{}.quarot_final_norm_scale", emb.table));
                let t = tensors::new_tensor(&name, like, vec![d as i64, d as i64], &r);
                plan.notes.push(format!(
                    "tied lm_head kept: the final norm's scale is applied in the rotated basis \
                     as a float [{d}, {d}] {} MatMul '{name}' before lm_head '{}' (+{} bytes), \
                     which reads the rotated table '{}'",
                    like.dtype(),
                    head.node,
                    t.stored_len(),
                    emb.table
                ));
                plan.head_scale = Some(t);
            }
            plan.linears += 1;
        } else {
            private(g, &m, "lm_head", &head.node)?;
            let mut kn = tensors::read_kn(g, &m)?;
            scale_rows(&mut kn, m.n, &gamma);
            let r = rotate_rows(&kn, m.k, m.n, q);
            plan.edits.push(tensors::replace_kn(g, &m, &r)?);
            plan.linears += 1;
        }
        if table_readers != 1 && !map.tied_lm_head {
            return Err(refuse(format!(
                "embedding table '{}' is read by {table_readers} nodes",
                emb.table
            )));
        }
        plan.edits
            .push(tensors::replace(g, emb.table_id, &rotated)?);
        plan.edits.extend(left_scale(g, &map.final_norm, &left)?);
        plan.norms += 1;
        Ok(plan)
    }
}

/// An online rotation's constants, added once and shared by every site: one n×n
/// matrix, or the Kronecker factors of `x·(A ⊗ B) = Aᵀ·X·B` (X = x as [.., a, b]).
enum OnlineOp {
    Dense(ValueId),
    Kronecker {
        shape: ValueId,
        a_t: ValueId,
        b: ValueId,
    },
}

impl OnlineOp {
    fn new(
        g: &mut Graph,
        h: &Rotation,
        split: Option<(usize, Vec<f64>, usize, Vec<f64>)>,
        like: &crate::ir::Tensor,
    ) -> Result<Self> {
        let n = h.n;
        let base = format!("quarot.online_hadamard.{n}");
        Ok(match split {
            None => {
                let name = g.fresh_name(&base);
                let t = tensors::new_tensor(&name, like, vec![n as i64; 2], &h.m);
                OnlineOp::Dense(g.add_initializer(t)?)
            }
            Some((a, at, b, bt)) => {
                let shape = crate::ir::Tensor::from_i64(
                    g.fresh_name(&format!("{base}.shape")),
                    vec![3],
                    &[-1, a as i64, b as i64],
                );
                let a_t = tensors::new_tensor(
                    &g.fresh_name(&format!("{base}.a_t")),
                    like,
                    vec![a as i64; 2],
                    &tensors::transpose(&at, a, a),
                );
                let bm = tensors::new_tensor(
                    &g.fresh_name(&format!("{base}.b")),
                    like,
                    vec![b as i64; 2],
                    &bt,
                );
                OnlineOp::Kronecker {
                    shape: g.add_initializer(shape)?,
                    a_t: g.add_initializer(a_t)?,
                    b: g.add_initializer(bm)?,
                }
            }
        })
    }

    /// The rotation in front of `down`'s input.
    fn insert(&self, g: &mut Graph, down: NodeId, kind: &str) -> Result<()> {
        let (shape, a_t, b) = match *self {
            OnlineOp::Dense(hv) => return insert_online(g, down, kind, hv),
            OnlineOp::Kronecker { shape, a_t, b } => (shape, a_t, b),
        };
        let x = g
            .node(down)
            .input(0)
            .ok_or_else(|| refuse(format!("'{}' has no input", g.node(down).name())))?;
        let base = site_name(g, down);
        let add = |g: &mut Graph, op: &str, what: &str, inputs: &[ValueId], online: bool| {
            let mut spec = NodeSpec::new("", op)
                .name(g.fresh_node_name(&format!("{base}/online_hadamard_{what}")))
                .output(g.fresh_name(&format!("{base}/online_hadamard_{what}_output")))
                .meta(PASS_KEY, NAME);
            for &i in inputs {
                spec = spec.input(i);
            }
            if online {
                spec = spec.meta(ONLINE_ROTATION_KEY, kind);
            }
            let id = g.add_node(spec)?;
            g.node(id)
                .output(0)
                .ok_or_else(|| refuse("online rotation without output"))
        };
        let x_shape = add(g, "Shape", "shape", &[x], false)?;
        let grid = add(g, "Reshape", "split", &[x, shape], false)?;
        let right = add(g, "MatMul", "b", &[grid, b], true)?;
        let left = add(g, "MatMul", "a", &[a_t, right], true)?;
        let y = add(g, "Reshape", "join", &[left, x_shape], false)?;
        g.set_input(down, 0, Some(y));
        Ok(())
    }
}

/// The name an online rotation in front of `node` is named after.
fn site_name(g: &Graph, node: NodeId) -> String {
    match g.node(node).name() {
        "" => "linear".to_string(),
        name => name.to_string(),
    }
}

/// `MatMul(x, H)` in front of `down` (a down_proj, or the lm_head), with H shared
/// per size; `kind` says what H is.
fn insert_online(g: &mut Graph, down: crate::ir::NodeId, kind: &str, hv: ValueId) -> Result<()> {
    let x = g
        .node(down)
        .input(0)
        .ok_or_else(|| refuse(format!("'{}' has no input", g.node(down).name())))?;
    let base = site_name(g, down);
    let name = g.fresh_node_name(&format!("{base}/online_hadamard"));
    let out = g.fresh_name(&format!("{base}/online_hadamard_output"));
    let id = g.add_node(
        NodeSpec::new("", "MatMul")
            .name(name)
            .input(x)
            .input(hv)
            .output(out)
            .meta(PASS_KEY, NAME)
            .meta(ONLINE_ROTATION_KEY, kind),
    )?;
    let y = g
        .node(id)
        .output(0)
        .ok_or_else(|| refuse("online rotation without output"))?;
    g.set_input(down, 0, Some(y));
    Ok(())
}

impl Quarot {
    /// `select = "measured"`: which norm readers and down_projs take the rotation.
    #[allow(clippy::too_many_arguments)]
    fn measure(
        &self,
        model: &Model,
        map: &DecoderMap,
        (q, kept): (&Rotation, &[bool]),
        h: Option<&Rotation>,
        seed: u64,
        cx: &PassCx,
        outcome: &mut PassOutcome,
    ) -> Result<select::Choice> {
        let c = &self.config;
        let g = &model.graph;
        let params = crate::quant::QuantParams::new(c.bits, c.block_size, c.symmetric)
            .map_err(|e| refuse(e.to_string()))?;
        let data = crate::calib::CalibData::open(
            c.calib.as_deref(),
            c.calib_text.as_deref(),
            c.tokenizer.as_deref(),
        )?;
        let mut candidates = Vec::new();
        for l in &map.layers {
            for (norm, readers) in norm_readers(l) {
                let (gamma, _) = split_scale(&norm_scale(g, norm, map.hidden_size)?, kept);
                for (what, w) in readers {
                    candidates.push(select::Candidate {
                        node: w.node_id,
                        what,
                        side: select::Side::Norm {
                            gamma: gamma.clone(),
                        },
                    });
                }
            }
            if h.is_some() {
                candidates.push(select::Candidate {
                    node: l.mlp.down_proj.node_id,
                    what: "down_proj",
                    side: select::Side::Down,
                });
            }
        }
        let how = select::Measure {
            params,
            data: &data,
            samples: c.calib_samples,
            seqlen: c.calib_seqlen,
            runtime: &c.runtime,
            memory_mb: c.calib_memory_mb,
            seed,
        };
        let choice = select::choose(model, &candidates, q, h, &how, cx, outcome)?;
        let kinds: Vec<String> = choice
            .by_kind
            .iter()
            .map(|(what, (r, n, kept, plain, rot))| {
                format!(
                    "{what} {r}/{n} (mean error {:.4}; unrotated {:.4}, rotated {:.4})",
                    kept / *n as f64,
                    plain / *n as f64,
                    rot / *n as f64
                )
            })
            .collect();
        outcome.notes.push(format!(
            "measured choice (RTN {} bits, block {}, {}): rotated {}",
            c.bits,
            c.block_size,
            if c.symmetric {
                "symmetric"
            } else {
                "asymmetric"
            },
            kinds.join(", ")
        ));
        Ok(choice)
    }
}

/// Each reader in `readers` (reader, norm, γ) reads `MatMul(x, Qᵀ)·γ` in place of
/// its rotated input x: one de-rotation per distinct input, Qᵀ shared. Returns how
/// many were inserted.
fn derotate(g: &mut Graph, readers: &[(NodeId, String, Vec<f64>)], q: &Rotation) -> Result<u64> {
    let d = q.n;
    // The constants take the readers' float type.
    let like = {
        let m = weight_matmul(g, readers[0].0)
            .map_err(|why| refuse(format!("'{}': {why}", g.node(readers[0].0).name())))?;
        let (_, t) = constant(g, m.weight).ok_or_else(|| refuse("reader weight"))?;
        t.clone()
    };
    let qt_name = g.fresh_name(&format!("quarot.derotation.{d}"));
    let qt = tensors::new_tensor(
        &qt_name,
        &like,
        vec![d as i64, d as i64],
        &tensors::transpose(&q.m, d, d),
    );
    let qt = g.add_initializer(qt)?;
    let mut done: BTreeMap<ValueId, ValueId> = BTreeMap::new();
    for (reader, norm, gamma) in readers {
        let x = g
            .node(*reader)
            .input(0)
            .ok_or_else(|| refuse(format!("'{}' has no input", g.node(*reader).name())))?;
        if let Some(&y) = done.get(&x) {
            g.set_input(*reader, 0, Some(y));
            continue;
        }
        let base = format!("{norm}/quarot_derotate");
        let node = g.fresh_node_name(&base);
        let out = g.fresh_name(&format!("{base}_output"));
        let id = g.add_node(
            NodeSpec::new("", "MatMul")
                .name(node)
                .input(x)
                .input(qt)
                .output(out)
                .meta(PASS_KEY, NAME)
                .meta(ONLINE_ROTATION_KEY, "de-rotation"),
        )?;
        let mut y = g
            .node(id)
            .output(0)
            .ok_or_else(|| refuse("de-rotation without output"))?;
        if gamma.iter().any(|&s| s != 1.0) {
            let name = g.fresh_name(&format!("{norm}.quarot_scale"));
            let t = tensors::new_tensor(&name, &like, vec![d as i64], gamma);
            let sv = g.add_initializer(t)?;
            let out = g.fresh_name(&format!("{base}_scaled"));
            let id = g.add_node(
                NodeSpec::new("", "Mul")
                    .name(g.fresh_node_name(&format!("{base}_scale")))
                    .input(y)
                    .input(sv)
                    .output(out)
                    .meta(PASS_KEY, NAME)
                    .meta(ONLINE_ROTATION_KEY, "de-rotation scale"),
            )?;
            y = g
                .node(id)
                .output(0)
                .ok_or_else(|| refuse("de-rotation scale without output"))?;
        }
        done.insert(x, y);
        g.set_input(*reader, 0, Some(y));
    }
    Ok(done.len() as u64)
}

impl Pass for Quarot {
    fn name(&self) -> &'static str {
        NAME
    }

    fn run(&self, model: &mut Model, cx: &mut PassCx) -> Result<PassOutcome> {
        let mut outcome = PassOutcome::new(NAME);
        let g = &model.graph;
        let map = DecoderMap::build(g)
            .map_err(|e| refuse(format!("not a decoder the map reads: {e}")))?;
        let seed = self.config.seed.unwrap_or(cx.seed);
        let d = map.hidden_size;
        for (what, n) in [("hidden", d), ("intermediate", map.intermediate_size)] {
            // Rotations are dense n×n f64 matrices (and the online one a dense
            // constant in the model).
            if n > MAX_ORDER {
                return Err(refuse(format!(
                    "the {what} size {n} is above {MAX_ORDER}, the largest dense rotation \
                     this pass builds"
                )));
            }
        }
        let ratio = self.config.damped_channel_ratio;
        let (q, kept_note, kept) = if ratio > 0.0 {
            residual_rotation(&channel_damping(g, &map, d)?, ratio, seed)
        } else {
            (randomized_hadamard(d, seed), None, vec![false; d])
        };
        let inter = map.intermediate_size;
        let h = self
            .config
            .online_hadamard
            .then(|| normalized_hadamard(inter, seed ^ 0x4f4e_4c49_4e45));
        let choice = match self.config.select {
            Select::All => None,
            Select::Measured => {
                Some(self.measure(model, &map, (&q, &kept), h.as_ref(), seed, cx, &mut outcome)?)
            }
        };
        let g = &model.graph;
        let plan = self.plan(g, &map, &q, h.as_ref(), &kept, choice.as_ref())?;
        // The online rotation's constants have the down projections' float type.
        let h_like = match plan.online.first() {
            Some(&down) => {
                let m =
                    weight_matmul(g, down).map_err(|why| refuse(format!("down_proj: {why}")))?;
                let (_, like) = constant(g, m.weight).ok_or_else(|| refuse("down_proj weight"))?;
                Some(like.clone())
            }
            None => None,
        };
        outcome
            .notes
            .push(format!("residual rotation ({d}): {} (seed {seed})", q.kind));
        outcome.notes.extend(kept_note);
        let split = h.as_ref().and_then(kronecker_split);
        if let Some(h) = &h {
            outcome.notes.push(format!(
                "online rotation before down_proj ({inter}): {}{}",
                h.kind,
                match &split {
                    Some((a, _, b, _)) => format!(", applied as [{a}, {a}] ⊗ [{b}, {b}] MatMuls"),
                    None => format!(", applied as one [{inter}, {inter}] MatMul"),
                }
            ));
        }
        outcome.notes.extend(plan.notes);
        let g = &mut model.graph;
        tensors::apply(g, plan.edits);
        if let Some(t) = plan.head_scale {
            let v = g.add_initializer(t)?;
            insert_online(g, map.lm_head.node_id, "final norm scale", v)?;
            outcome.count("tied heads kept", 1);
        }
        if let (Some(h), Some(like)) = (&h, h_like) {
            let op = OnlineOp::new(g, h, split, &like)?;
            for &down in &plan.online {
                op.insert(g, down, &h.kind)?;
            }
            outcome.count("online hadamards", plan.online.len() as u64);
        }
        if !plan.derotated.is_empty() {
            let n = derotate(g, &plan.derotated, &q)?;
            outcome.count("norm outputs de-rotated online", n);
            outcome.notes.push(format!(
                "{} projections read their norm's output de-rotated online ({n} float [{d}, {d}] \
                 MatMuls by Qᵀ, then the norm's scale), with their own weights",
                plan.derotated.len()
            ));
        }
        outcome.count("norms fused", plan.norms);
        outcome.count("linears rotated", plan.linears);
        outcome.count("embeddings rotated", 1);
        outcome.changed = true;
        Ok(outcome)
    }
}
