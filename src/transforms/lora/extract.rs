//! The reverse of baking an adapter in: LoRA branches y + (x·A)·B [· s] whose A and B
//! are initializers (an unmerged PEFT export, or an injected model with its adapter
//! written in) become the graph inputs `inject` declares, with empty defaults, and
//! their values an adapter (Olive's ExtractAdapters). A constant scalar scale after B
//! is folded into B, so the result reads exactly like `inject`'s output.
//!
//! Branches are found by structure: an Add of a linear layer's output and a chain of
//! two MatMuls by constant 2-D weights that reads the same input as the layer.
use bytes::Bytes;

use super::inject::input_info;
use crate::adapter::AdapterParam;
use crate::error::{Error, Result};
use crate::ir::{float_bytes, DType, Graph, NodeId, Tensor, ValueDef, ValueId};
use crate::llm::{linear_consumers, WeightRef};
use crate::rewrite::matchers::{const_scalar, consumers};

/// One branch found: the MatMuls by A and by B, the optional scale Mul, and the
/// layer it adds to.
struct Branch {
    add: NodeId,
    add_slot: usize,
    mul: Option<NodeId>,
    scale: f32,
    mm_a: NodeId,
    mm_b: NodeId,
    a: ValueId,
    b: ValueId,
    layer: WeightRef,
}

/// A plain initializer (not an overridable graph input) read by nobody else.
fn own_initializer(g: &Graph, v: ValueId) -> Option<&Tensor> {
    let val = g.value(v);
    (val.def == ValueDef::Initializer && val.uses().len() == 1)
        .then(|| g.initializer(v))
        .flatten()
        .filter(|t| t.dims.len() == 2 && t.dtype().is_float())
}

fn only_reader(g: &Graph, v: ValueId, node: NodeId) -> bool {
    !g.is_graph_output(v) && consumers(g, v).iter().all(|&(n, _)| n == node)
}

fn branch_at(g: &Graph, add: NodeId, slot: usize) -> Option<Branch> {
    let n = g.node(add);
    let (d, y) = (n.input(slot)?, n.input(1 - slot)?);
    let mut v = d;
    let (mut mul, mut scale) = (None, 1.0);
    let p = g.producer(v)?;
    if g.node(p).is("", "Mul") {
        let pn = g.node(p);
        let (s, rest) = match (pn.input(0), pn.input(1)) {
            (Some(a), Some(b)) if const_scalar(g, b).is_some() => (const_scalar(g, b)?, a),
            (Some(a), Some(b)) if const_scalar(g, a).is_some() => (const_scalar(g, a)?, b),
            _ => return None,
        };
        if !only_reader(g, d, add) {
            return None;
        }
        mul = Some(p);
        scale = s;
        v = rest;
    }
    let mm_b = g.producer(v)?;
    let nb = g.node(mm_b);
    if !nb.is("", "MatMul") || !only_reader(g, v, mul.unwrap_or(add)) {
        return None;
    }
    let (xa, b) = (nb.input(0)?, nb.input(1)?);
    let mm_a = g.producer(xa)?;
    let na = g.node(mm_a);
    if !na.is("", "MatMul") || !only_reader(g, xa, mm_b) {
        return None;
    }
    let (x, a) = (na.input(0)?, na.input(1)?);
    let (ta, tb) = (own_initializer(g, a)?, own_initializer(g, b)?);
    let layer = linear_consumers(g, x)
        .into_iter()
        .find(|w| w.output_id == y && w.node_id != mm_a)?;
    let (k, r, rb, nn) = (ta.dims[0], ta.dims[1], tb.dims[0], tb.dims[1]);
    let fits = k == layer.k as i64 && nn == layer.n as i64 && r == rb && ta.dtype() == tb.dtype();
    fits.then_some(Branch {
        add,
        add_slot: slot,
        mul,
        scale,
        mm_a,
        mm_b,
        a,
        b,
        layer,
    })
}

/// The adapter name stem of a branch: the PEFT module in A's name when it has one
/// (`base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight`), else
/// the layer's weight name without its `.weight`-style suffix.
fn stem_of(g: &Graph, br: &Branch) -> String {
    let a = g.value_name(br.a);
    if let Some((module, _)) = a.split_once(".lora_A") {
        return module
            .strip_prefix("base_model.model.")
            .unwrap_or(module)
            .to_string();
    }
    let w = br.layer.initializer.as_str();
    [".MatMul.weight", ".weight_t", ".weight"]
        .iter()
        .find_map(|s| w.strip_suffix(s))
        .unwrap_or(w)
        .to_string()
}

/// Turns initializer `old` (read by `node` at `slot`) into the graph input `name`
/// of `dims` (None: the rank, `lora_r`) with an empty default.
fn to_input(
    g: &mut Graph,
    (node, slot): (NodeId, usize),
    old: ValueId,
    name: &str,
    dtype: DType,
    dims: [Option<usize>; 2],
) -> Result<()> {
    let empty_dims = dims.iter().map(|d| d.unwrap_or(0) as i64).collect();
    let empty = Tensor::from_raw(name, dtype, empty_dims, Bytes::new());
    let info = input_info(dtype, dims);
    if g.value_name(old) == name {
        let v = g.add_input(name, info)?;
        g.set_initializer(v, empty);
        return Ok(());
    }
    if g.find(name).is_some() {
        return Err(Error::Invalid(format!(
            "cannot extract the LoRA weight '{}' as input '{name}': the name is taken",
            g.value_name(old)
        )));
    }
    let v = g.add_input(name, info)?;
    g.add_initializer(empty)?;
    g.set_input(node, slot, Some(v));
    g.remove_initializer(old)
}

/// Removes the scale Mul; its constant goes too when nothing else reads it.
fn remove_scale(g: &mut Graph, br: &Branch, mul: NodeId) -> Result<()> {
    let out = g.node(br.mm_b).output(0).expect("MatMul has an output");
    g.set_input(br.add, br.add_slot, Some(out));
    let inputs: Vec<ValueId> = g.node(mul).inputs().iter().flatten().copied().collect();
    g.remove_node(mul)?;
    for v in inputs {
        if !g.value(v).uses().is_empty() || g.is_graph_output(v) || g.is_graph_input(v) {
            continue;
        }
        match g.value(v).def {
            ValueDef::Initializer => g.remove_initializer(v)?,
            ValueDef::Node(c, _) if g.node(c).is("", "Constant") => g.remove_node(c)?,
            _ => {}
        }
    }
    Ok(())
}

/// Extracts every LoRA branch with constant weights; returns the adapter values
/// (A [K, r], B [r, N] with the scale folded in), in graph order.
pub fn extract(g: &mut Graph) -> Result<Vec<AdapterParam>> {
    let mut branches = Vec::new();
    for id in g.sorted_node_ids()? {
        if !g.node(id).is("", "Add") {
            continue;
        }
        if let Some(br) = branch_at(g, id, 1).or_else(|| branch_at(g, id, 0)) {
            branches.push(br);
        }
    }
    let mut params = Vec::new();
    let mut stems: Vec<String> = Vec::new();
    for br in branches {
        let mut stem = stem_of(g, &br);
        if stems.contains(&stem) {
            stem = format!("{stem}.{}", stems.len());
        }
        stems.push(stem.clone());
        let ta = g.initializer(br.a).expect("checked").clone();
        let tb = g.initializer(br.b).expect("checked").clone();
        let dtype = ta.dtype();
        let (k, r, n) = (
            ta.dims[0] as usize,
            ta.dims[1] as usize,
            tb.dims[1] as usize,
        );
        let b_raw = if br.scale == 1.0 {
            tb.raw_bytes()?.into_owned()
        } else {
            let b: Vec<f32> = tb.to_f32()?.iter().map(|v| v * br.scale).collect();
            float_bytes(dtype, &b)
        };
        let (a_name, b_name) = (
            format!("{stem}.lora_A.weight"),
            format!("{stem}.lora_B.weight"),
        );
        params.push(AdapterParam {
            name: a_name.clone(),
            dims: vec![k as i64, r as i64],
            dtype,
            raw: ta.raw_bytes()?.into_owned(),
        });
        params.push(AdapterParam {
            name: b_name.clone(),
            dims: vec![r as i64, n as i64],
            dtype,
            raw: b_raw,
        });
        if let Some(mul) = br.mul {
            remove_scale(g, &br, mul)?;
        }
        to_input(g, (br.mm_a, 1), br.a, &a_name, dtype, [Some(k), None])?;
        to_input(g, (br.mm_b, 1), br.b, &b_name, dtype, [None, Some(n)])?;
    }
    Ok(params)
}
