//! The decoder map: where a decoder-only LLM's parts are in a graph (embedding,
//! per-layer norms, projections, rotary, attention, MLP, final norm, lm_head, KV
//! cache, position and mask inputs), found once so LLM passes (AWQ, GPTQ, mixed
//! precision, QuaRot, KV-cache, LoRA) share one reading of the structure.
//!
//! Layers are found by walking the residual stream from the embedding (Add chains or
//! Skip-norm sum outputs), never by node names, which differ per exporter. Building
//! reads the graph through shared borrows only.
//!
//! Layering: this module uses only error, ir and rewrite (matchers).
mod attention;
mod embedding;
mod io;
mod mlp;
mod norm;
mod roles;
mod text;
mod walk;
mod weights;

use serde::Serialize;

pub use attention::{AttentionKind, AttentionMap, LayerKv, RotaryKind, RotaryMap};
pub use embedding::Embedding;
pub use io::{DecoderIo, DimExpr, KvIo, TensorIo};
pub use mlp::{MlpKind, MlpMap};
pub use norm::{NormKind, NormMap};
pub use roles::{DecoderIoNames, KvPair};
pub use text::to_text;
pub use walk::label;
pub use weights::{linear_consumers, weight_ref, WeightLayout, WeightRef, WeightSource};

use crate::error::{Error, Result};
use crate::ir::{Graph, ValueId};

/// True when `v` is computed from the graph input `input` (within 16 nodes).
pub fn computed_from(g: &Graph, v: ValueId, input: ValueId) -> bool {
    walk::source_inputs(g, v, 16).contains(&input)
}

/// One decoder layer: input norm → attention → o_proj (+ residual) →
/// post-attention norm → MLP (+ residual).
#[derive(Serialize, Clone, Debug)]
pub struct LayerMap {
    pub index: usize,
    /// The residual stream value the layer starts from (after the input norm's add
    /// for Skip norms).
    pub residual_in: Option<String>,
    pub input_norm: NormMap,
    pub attention: AttentionMap,
    pub post_attention_norm: NormMap,
    pub mlp: MlpMap,
}

impl LayerMap {
    /// Every linear layer of this layer, in execution order.
    pub fn linears(&self) -> Vec<&WeightRef> {
        let a = &self.attention;
        let m = &self.mlp;
        [&a.q_proj, &a.k_proj, &a.v_proj, &a.qkv_proj]
            .into_iter()
            .flatten()
            .chain([&a.o_proj])
            .chain(
                [&m.gate_proj, &m.up_proj, &m.gate_up_proj]
                    .into_iter()
                    .flatten(),
            )
            .chain([&m.down_proj])
            .collect()
    }
}

#[derive(Serialize, Clone, Debug)]
pub struct DecoderMap {
    pub num_layers: usize,
    pub hidden_size: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_size: usize,
    pub intermediate_size: usize,
    pub vocab_size: usize,
    /// The lm_head multiplies by the embedding table itself.
    pub tied_lm_head: bool,
    pub embedding: Embedding,
    pub layers: Vec<LayerMap>,
    pub final_norm: NormMap,
    pub lm_head: WeightRef,
    pub io: DecoderIo,
}

fn step_err(at: impl Into<String>, (step, reason): (&str, String)) -> Error {
    Error::DecoderMap {
        at: at.into(),
        step: step.to_string(),
        reason,
    }
}

/// The lm_head when `normed` feeds only one linear layer whose output is a graph
/// output (directly or through a Reshape/Cast/scale): the final norm's reader, or
/// the reader of an online rotation (QuaRot's final norm scale) in between.
fn lm_head_of(g: &Graph, normed: ValueId) -> Option<WeightRef> {
    let mut readers = crate::rewrite::matchers::consumers(g, normed);
    if let [(n, 0)] = readers.as_slice() {
        if crate::rewrite::matchers::is_online_rotation(g, *n) {
            readers = crate::rewrite::matchers::consumers(g, g.node(*n).output(0)?);
        }
    }
    let [(node, 0)] = readers.as_slice() else {
        return None;
    };
    let w = weights::weight_ref(g, *node).ok()?;
    let mut v = w.output_id;
    for _ in 0..3 {
        if g.is_graph_output(v) {
            return Some(w);
        }
        let (n, _) = walk::sole_consumer(g, v)?;
        let node = g.node(n);
        if !matches!(
            node.op_type.as_str(),
            "Reshape" | "Cast" | "Identity" | "Mul" | "Div" | "Tanh"
        ) {
            return None;
        }
        v = node.output(0)?;
    }
    g.is_graph_output(v).then_some(w)
}

impl DecoderMap {
    /// Every linear layer of the decoder in execution order, lm_head last.
    pub fn linears(&self) -> Vec<&WeightRef> {
        self.layers
            .iter()
            .flat_map(LayerMap::linears)
            .chain([&self.lm_head])
            .collect()
    }

    /// The input activation of every linear layer, by the index of the layer that
    /// reads it (the lm_head's input counts as layer `num_layers`): where
    /// layer-by-layer (quantized-prefix) calibration cuts the model.
    pub fn layer_inputs(&self, g: &Graph) -> std::collections::BTreeMap<String, usize> {
        let input = |w: &WeightRef| {
            g.node(w.node_id)
                .input(0)
                .map(|x| g.value_name(x).to_string())
        };
        self.layers
            .iter()
            .flat_map(|l| l.linears().into_iter().map(move |w| (w, l.index)))
            .chain([(&self.lm_head, self.num_layers)])
            .filter_map(|(w, i)| Some((input(w)?, i)))
            .collect()
    }

    /// Maps `g` as a decoder, or says which layer and which step of the pattern
    /// failed ("not a decoder" when there is no embedding-fed norm at all).
    pub fn build(g: &Graph) -> Result<DecoderMap> {
        let cands = embedding::candidates(g);
        if cands.is_empty() {
            return Err(Error::NotDecoder(
                "no embedding: no Gather reads rows of a constant 2-D table by integer ids \
                 from a graph input"
                    .into(),
            ));
        }
        let fed: Vec<_> = cands
            .iter()
            .filter(|e| norm::norm_of(g, e.output_id).is_some())
            .collect();
        let emb = match fed.as_slice() {
            [one] => (*one).clone(),
            [] => {
                return Err(Error::NotDecoder(format!(
                    "no norm reads the output of {} (the table lookups found)",
                    cands
                        .iter()
                        .map(|e| format!("Gather '{}' of '{}'", e.node, e.table))
                        .collect::<Vec<_>>()
                        .join(", ")
                )))
            }
            many => {
                return Err(Error::NotDecoder(format!(
                    "{} embedding lookups feed a norm ({}); expected one",
                    many.len(),
                    many.iter()
                        .map(|e| format!("'{}'", e.node))
                        .collect::<Vec<_>>()
                        .join(", ")
                )))
            }
        };
        let mut layers = Vec::new();
        let mut resid = emb.output_id;
        let mut delta: Option<ValueId> = None;
        let (final_norm, lm_head) = loop {
            let i = layers.len();
            let at = format!("layer {i}");
            if i > g.node_count() {
                return Err(step_err(
                    at,
                    ("input norm", "the residual walk does not end".into()),
                ));
            }
            let (input_norm, r) =
                norm::norm_after(g, resid, delta).map_err(|e| step_err(&at, ("input norm", e)))?;
            if let Some(head) = lm_head_of(g, input_norm.output_id) {
                break (input_norm, head);
            }
            let r = r.ok_or_else(|| {
                step_err(
                    &at,
                    (
                        "input norm",
                        format!(
                            "Skip norm '{}' has no residual sum output for the layer to add to",
                            input_norm.node
                        ),
                    ),
                )
            })?;
            let attention = attention::match_attention(g, input_norm.output_id)
                .map_err(|e| step_err(&at, e))?;
            let (post_attention_norm, r2) =
                norm::norm_after(g, r, Some(attention.o_proj.output_id))
                    .map_err(|e| step_err(&at, ("post-attention norm", e)))?;
            let r2 = r2.ok_or_else(|| {
                step_err(
                    &at,
                    (
                        "post-attention norm",
                        format!(
                            "Skip norm '{}' has no residual sum output for the MLP to add to",
                            post_attention_norm.node
                        ),
                    ),
                )
            })?;
            let mlp =
                mlp::match_mlp(g, post_attention_norm.output_id).map_err(|e| step_err(&at, e))?;
            resid = r2;
            delta = Some(mlp.down_proj.output_id);
            layers.push(LayerMap {
                index: i,
                residual_in: Some(g.value_name(r).to_string()),
                input_norm,
                attention,
                post_attention_norm,
                mlp,
            });
        };
        let Some(first) = layers.first() else {
            return Err(Error::NotDecoder(format!(
                "no decoder layer: the norm '{}' after the embedding feeds the lm_head '{}' \
                 directly",
                final_norm.node, lm_head.node
            )));
        };
        let a = &first.attention;
        let tied_lm_head = lm_head.weight_id == emb.table_id;
        let io = decoder_io(g, &emb, &layers, &lm_head);
        Ok(DecoderMap {
            num_layers: layers.len(),
            hidden_size: emb.hidden_size,
            num_heads: a.num_heads,
            num_kv_heads: a.num_kv_heads,
            head_size: a.head_size,
            intermediate_size: first.mlp.intermediate_size,
            vocab_size: lm_head.n,
            tied_lm_head,
            embedding: emb,
            layers,
            final_norm,
            lm_head,
            io,
        })
    }
}

fn decoder_io(g: &Graph, emb: &Embedding, layers: &[LayerMap], lm_head: &WeightRef) -> DecoderIo {
    let ids = emb.ids_input;
    let position = layers
        .iter()
        .filter_map(|l| l.attention.rotary.as_ref()?.position_input)
        .find_map(|p| io::position_input(g, p, ids));
    let mut known = vec![ids];
    known.extend(position);
    let mask = layers
        .iter()
        .filter_map(|l| l.attention.mask_id)
        .find_map(|m| io::mask_input(g, m, &known));
    let pair = |k: &Option<String>, v: &Option<String>| -> Option<(ValueId, ValueId)> {
        Some((g.find(k.as_deref()?)?, g.find(v.as_deref()?)?))
    };
    let mut past = Vec::new();
    let mut present = Vec::new();
    for l in layers {
        let kv = &l.attention.kv;
        if let Some((k, v)) = pair(&kv.past_key, &kv.past_value) {
            past.push(KvIo {
                layer: l.index,
                key: io::tensor_io(g, k),
                value: io::tensor_io(g, v),
            });
        }
        if let Some((k, v)) = pair(&kv.present_key, &kv.present_value) {
            present.push(KvIo {
                layer: l.index,
                key: io::tensor_io(g, k),
                value: io::tensor_io(g, v),
            });
        }
    }
    let logits = std::iter::once(lm_head.output_id)
        .chain(g.outputs.iter().map(|o| o.value))
        .find(|v| g.is_graph_output(*v) && walk::reaches_back(g, *v, lm_head.output_id, 4));
    DecoderIo {
        input_ids: io::tensor_io(g, ids),
        position_ids: position.map(|p| io::tensor_io(g, p)),
        attention_mask: mask.map(|m| io::tensor_io(g, m)),
        past,
        present,
        logits: logits.map(|v| io::tensor_io(g, v)),
    }
}
