//! Calibration groups read off the decoder map: which linear layers share an input,
//! in execution order, with report names ("layer 3 q_proj") and the place the map
//! says can absorb a per-channel input scale. Calibrated passes use this when a
//! model maps as a decoder and fall back to grouping MatMuls by input otherwise.
use std::collections::{BTreeMap, BTreeSet};

use super::scale_fold::{fold_site, Fold};
use crate::ir::{DType, Graph, NodeId, Use, ValueId};
use crate::llm::{DecoderMap, NormMap, WeightRef};
use crate::rewrite::matchers::constant;

/// What precedes a group's input, as the map knows it.
#[derive(Clone, Debug)]
pub(crate) enum Site {
    /// A norm (fused, Skip or decomposed): its gamma (and beta) absorb `1/s`.
    Norm(Box<NormMap>),
    /// The gated product before down_proj: the up projection's output columns.
    Up,
    /// The attention core sits between v and o_proj.
    Attention { heads: usize, kv_heads: usize },
}

/// Linear layers reading one activation.
#[derive(Clone, Debug)]
pub(crate) struct MapGroup {
    /// "layer 3 q,k,v", "lm_head", ...
    pub label: String,
    pub site: Site,
    /// (report name, node) in execution order.
    pub members: Vec<(String, NodeId)>,
}

/// A model's decoder map, or why it has none, and the groups read from it.
pub(crate) struct DecoderView {
    pub map: Option<DecoderMap>,
    /// The mapping error, when the model does not map as a decoder.
    pub unmapped: Option<String>,
    pub groups: Vec<MapGroup>,
    /// Every mapped linear node: (execution index, report name).
    names: BTreeMap<NodeId, (usize, String)>,
}

impl DecoderView {
    pub fn of(g: &Graph) -> DecoderView {
        match DecoderMap::build(g) {
            Ok(map) => {
                let groups = groups(&map);
                let names = groups
                    .iter()
                    .flat_map(|gr| gr.members.iter())
                    .enumerate()
                    .map(|(i, (name, id))| (*id, (i, name.clone())))
                    .collect();
                DecoderView {
                    map: Some(map),
                    unmapped: None,
                    groups,
                    names,
                }
            }
            Err(e) => DecoderView {
                map: None,
                unmapped: Some(e.to_string()),
                groups: Vec::new(),
                names: BTreeMap::new(),
            },
        }
    }

    /// One line for a pass's notes: how the groups were found.
    pub fn summary(&self) -> String {
        match (&self.map, &self.unmapped) {
            (Some(map), _) => format!(
                "decoder map: {} layers, {} groups{}",
                map.num_layers,
                self.groups.len(),
                if map.tied_lm_head {
                    ", tied lm_head"
                } else {
                    ""
                }
            ),
            (None, why) => format!(
                "not mapped as a decoder ({}): MatMuls grouped by shared input",
                why.as_deref().unwrap_or("no map")
            ),
        }
    }

    /// The report name of a mapped linear node ("layer 0 q_proj").
    pub fn name_of(&self, node: NodeId) -> Option<&str> {
        self.names.get(&node).map(|(_, n)| n.as_str())
    }

    /// Where a node comes in the map's execution order (unmapped nodes last).
    pub fn order_of(&self, node: NodeId) -> usize {
        self.names.get(&node).map_or(usize::MAX, |(i, _)| *i)
    }
}

fn member(layer: Option<usize>, what: &str, w: &WeightRef) -> (String, NodeId) {
    let name = match layer {
        Some(i) => format!("layer {i} {what}"),
        None => what.to_string(),
    };
    (name, w.node_id)
}

fn group(label: String, site: Site, members: Vec<(String, NodeId)>) -> MapGroup {
    MapGroup {
        label,
        site,
        members,
    }
}

/// Per layer: input norm → q,k,v (or qkv); v → o_proj; post-attention norm →
/// gate,up (or gate_up, or a plain MLP's up); up → down; then final norm → lm_head.
fn groups(map: &DecoderMap) -> Vec<MapGroup> {
    let mut out = Vec::new();
    for l in &map.layers {
        let i = Some(l.index);
        let a = &l.attention;
        let qkv: Vec<_> = [
            ("q_proj", &a.q_proj),
            ("k_proj", &a.k_proj),
            ("v_proj", &a.v_proj),
            ("qkv_proj", &a.qkv_proj),
        ]
        .into_iter()
        .filter_map(|(what, w)| w.as_ref().map(|w| member(i, what, w)))
        .collect();
        let label = if a.qkv_proj.is_some() {
            "qkv_proj"
        } else {
            "q,k,v"
        };
        out.push(group(
            format!("layer {} {label}", l.index),
            Site::Norm(Box::new(l.input_norm.clone())),
            qkv,
        ));
        out.push(group(
            format!("layer {} o_proj", l.index),
            Site::Attention {
                heads: a.num_heads,
                kv_heads: a.num_kv_heads,
            },
            vec![member(i, "o_proj", &a.o_proj)],
        ));
        let m = &l.mlp;
        let (label, ffn_in): (&str, Vec<_>) = match (&m.gate_up_proj, &m.gate_proj) {
            (Some(gu), _) => ("gate_up_proj", vec![member(i, "gate_up_proj", gu)]),
            (None, Some(gate)) => (
                "gate,up",
                std::iter::once(member(i, "gate_proj", gate))
                    .chain(m.up_proj.iter().map(|u| member(i, "up_proj", u)))
                    .collect(),
            ),
            (None, None) => (
                "up_proj",
                m.up_proj.iter().map(|u| member(i, "up_proj", u)).collect(),
            ),
        };
        out.push(group(
            format!("layer {} {label}", l.index),
            Site::Norm(Box::new(l.post_attention_norm.clone())),
            ffn_in,
        ));
        out.push(group(
            format!("layer {} down_proj", l.index),
            Site::Up,
            vec![member(i, "down_proj", &m.down_proj)],
        ));
    }
    out.push(group(
        "lm_head".into(),
        Site::Norm(Box::new(map.final_norm.clone())),
        vec![member(None, "lm_head", &map.lm_head)],
    ));
    out.retain(|g| !g.members.is_empty());
    out
}

/// Readers of `x` (nodes), and whether anything outside the graph's nodes reads it.
fn readers(g: &Graph, x: ValueId) -> BTreeSet<NodeId> {
    g.value(x)
        .uses()
        .iter()
        .map(|u| match u {
            Use::Input(n, _) | Use::Capture(n) => *n,
        })
        .collect()
}

/// Why the per-channel constant `name` (width `k`) cannot take `1/s`, if it cannot.
fn constant_blocker(g: &Graph, name: &str, k: usize) -> Option<String> {
    let Some(v) = g.find(name) else {
        return Some(format!("'{name}' is not a value of the graph"));
    };
    let Some((_, t)) = constant(g, v) else {
        return Some(format!("'{name}' is computed, not a constant"));
    };
    if t.dtype() != DType::F32 {
        return Some(format!("'{name}' is {:?}, not float32", t.dtype()));
    }
    if t.dims.iter().product::<i64>() != k as i64 || t.dims.last() != Some(&(k as i64)) {
        return Some(format!("'{name}' has shape {:?}, not [{k}]", t.dims));
    }
    let uses = g.value(v).uses().len();
    if uses != 1 || g.is_graph_output(v) || g.is_graph_input(v) {
        return Some(format!(
            "'{name}' is shared ({uses} readers): dividing it would change the others"
        ));
    }
    None
}

/// Where the group reading `x` (`members`, width `k`) folds `1/s`, or why nothing
/// the map knows can take it (then the caller inserts a Mul or skips).
pub(crate) fn fold_for(
    g: &Graph,
    site: &Site,
    x: ValueId,
    members: &BTreeSet<NodeId>,
    k: usize,
) -> Result<Fold, String> {
    if g.is_graph_output(x) {
        return Err("the input is also a graph output".into());
    }
    let others = readers(g, x).difference(members).count();
    if others > 0 {
        return Err(format!(
            "the input is also read by {others} node(s) outside the group"
        ));
    }
    match site {
        Site::Norm(norm) => {
            if norm.output_id != x {
                return Err(format!(
                    "nodes lie between the norm '{}' and the projections",
                    norm.node
                ));
            }
            let Some(w) = &norm.weight else {
                return Err(format!("the norm '{}' has no scale", norm.node));
            };
            let mut vals = Vec::new();
            for c in std::iter::once(w).chain(norm.bias.iter()) {
                if let Some(why) = constant_blocker(g, c, k) {
                    return Err(format!("the norm '{}': {why}", norm.node));
                }
                vals.extend(g.find(c));
            }
            Ok(Fold::Constants(vals))
        }
        Site::Up => fold_site(g, x, k).ok_or_else(|| {
            "the up projection cannot absorb the scales (packed gate_up, a bias, a shared or \
             non-float32 weight)"
                .to_string()
        }),
        Site::Attention { heads, kv_heads } if kv_heads < heads => Err(format!(
            "{kv_heads} v heads serve {heads} query heads, so one v_proj channel feeds \
             several o_proj inputs and cannot take their different scales"
        )),
        Site::Attention { .. } => {
            Err("the attention core lies between v_proj and o_proj (no fold into v_proj)".into())
        }
    }
}
