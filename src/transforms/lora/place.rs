//! Which linear layer each PEFT module adapts, and where in its output columns.
use std::collections::BTreeMap;

use crate::adapter::{LoraModule, PeftAdapter};
use crate::error::{Error, Result};
use crate::ir::Graph;
use crate::llm::{DecoderMap, LayerMap, WeightRef};

/// One PEFT module on a linear layer: its output lands in columns
/// `offset..offset + module.n` (non-zero offsets only in packed q|k|v).
#[derive(Clone, Debug)]
pub struct PlacedPart {
    pub module: usize,
    pub offset: usize,
}

/// A linear layer carrying LoRA: the graph inputs it reads are
/// `{base}.lora_A.weight` [K, lora_r] and `{base}.lora_B.weight` [lora_r, N].
#[derive(Clone, Debug)]
pub struct Placement {
    pub base: String,
    pub weight: WeightRef,
    pub parts: Vec<PlacedPart>,
}

impl Placement {
    pub fn a_name(&self) -> String {
        format!("{}.lora_A.weight", self.base)
    }
    pub fn b_name(&self) -> String {
        format!("{}.lora_B.weight", self.base)
    }
    /// The rank of the combined update: packed parts stack their ranks.
    pub fn rank(&self, adapter: &PeftAdapter) -> usize {
        self.parts
            .iter()
            .map(|p| adapter.modules[p.module].rank)
            .sum()
    }
}

fn unmatched(m: &LoraModule, why: impl Into<String>) -> Error {
    Error::Invalid(format!(
        "LoRA module '{}' matches no linear layer of the model: {}",
        m.name,
        why.into()
    ))
}

/// The layer's linear for a projection name, and the column offset within it.
fn in_layer(l: &LayerMap, proj: &str) -> Option<(WeightRef, usize, &'static str)> {
    let a = &l.attention;
    let m = &l.mlp;
    let single = |w: &Option<WeightRef>| w.clone().map(|w| (w, 0, ""));
    let packed = |i: usize| {
        let split = a.qkv_split?;
        Some((a.qkv_proj.clone()?, split[..i].iter().sum(), "qkv_proj"))
    };
    match proj {
        "q_proj" => single(&a.q_proj).or_else(|| packed(0)),
        "k_proj" => single(&a.k_proj).or_else(|| packed(1)),
        "v_proj" => single(&a.v_proj).or_else(|| packed(2)),
        "qkv_proj" => single(&a.qkv_proj),
        "o_proj" | "dense" => Some((a.o_proj.clone(), 0, "")),
        "gate_proj" => single(&m.gate_proj),
        "up_proj" => single(&m.up_proj),
        "gate_up_proj" => single(&m.gate_up_proj),
        "down_proj" => Some((m.down_proj.clone(), 0, "")),
        _ => None,
    }
}

/// The module's A [r, K] and B [N, r] fit the layer (at `offset` of a packed one).
fn check_dims(m: &LoraModule, w: &WeightRef, offset: usize, packed: &str) -> Result<()> {
    if w.k != m.k || offset + m.n > w.n {
        return Err(Error::Invalid(format!(
            "LoRA module '{}': lora_A is [{}, {}] and lora_B [{}, {}], but node '{}' multiplies \
             [*, {}] by [{}, {}]{}",
            m.name,
            m.rank,
            m.k,
            m.n,
            m.rank,
            w.node,
            w.k,
            w.k,
            w.n,
            if packed.is_empty() {
                String::new()
            } else {
                format!(" (packed {packed}, this part at column {offset})")
            }
        )));
    }
    if packed.is_empty() && m.n != w.n {
        return Err(Error::Invalid(format!(
            "LoRA module '{}': lora_B has {} outputs, node '{}' has {}",
            m.name, m.n, w.node, w.n
        )));
    }
    Ok(())
}

/// Places every module of `adapter`. `mapping` (module name → node name) covers
/// layouts the decoder map does not know; it is consulted first.
pub fn place(
    g: &Graph,
    map: Option<&DecoderMap>,
    adapter: &PeftAdapter,
    mapping: &BTreeMap<String, String>,
) -> Result<Vec<Placement>> {
    let mut out: Vec<Placement> = Vec::new();
    for (i, m) in adapter.modules.iter().enumerate() {
        let (w, offset, packed) = if let Some(node) = mapping.get(&m.name) {
            let id = g
                .nodes()
                .find(|(_, n)| n.name() == node)
                .map(|(id, _)| id)
                .ok_or_else(|| {
                    unmatched(
                        m,
                        format!("the mapping names node '{node}', which the graph lacks"),
                    )
                })?;
            let w = crate::llm::weight_ref(g, id).map_err(|e| {
                unmatched(m, format!("mapped node '{node}' is no linear layer: {e}"))
            })?;
            (w, 0, "")
        } else {
            let map = map.ok_or_else(|| {
                unmatched(
                    m,
                    "the model is not a decoder the map reads; give a mapping file",
                )
            })?;
            if m.is_lm_head() {
                (map.lm_head.clone(), 0, "")
            } else {
                let (layer, proj) = m.layer_and_proj().ok_or_else(|| {
                    unmatched(
                        m,
                        "its name has no 'layers.N.' part and it is not 'lm_head'",
                    )
                })?;
                let l = map.layers.get(layer).ok_or_else(|| {
                    unmatched(
                        m,
                        format!("layer {layer}; the model has {} layers", map.layers.len()),
                    )
                })?;
                in_layer(l, proj).ok_or_else(|| {
                unmatched(m, format!("layer {layer} has no '{proj}' (known: q/k/v/o_proj, gate/up/down_proj, qkv_proj)"))
            })?
            }
        };
        check_dims(m, &w, offset, packed)?;
        let base = if packed.is_empty() {
            m.name.clone()
        } else {
            let stem = m.name.rsplit_once('.').map_or("", |(s, _)| s);
            format!("{stem}.{packed}")
        };
        match out.iter_mut().find(|p| p.weight.node_id == w.node_id) {
            Some(p) => p.parts.push(PlacedPart { module: i, offset }),
            None => out.push(Placement {
                base,
                weight: w,
                parts: vec![PlacedPart { module: i, offset }],
            }),
        }
    }
    Ok(out)
}
