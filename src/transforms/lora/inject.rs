//! The switchable LoRA branch: y' = y + (x · A) · B, A and B graph inputs with
//! empty (rank-0) defaults, so the model runs unchanged when no adapter is bound.
use bytes::Bytes;

use super::place::Placement;
use crate::adapter::{AdapterParam, PeftAdapter};
use crate::error::{Error, Result};
use crate::ir::{
    DType, Dim, Graph, NodeSpec, ShapeDim, Tensor, TypeInfo, TypeKind, ValueId, ValueInfo,
};

/// The symbolic rank dimension, as Olive names it.
const RANK_DIM: &str = "lora_r";

#[derive(Clone, Debug, Default)]
pub struct InjectReport {
    /// (A input, B input, K, N) per adapted layer.
    pub inputs: Vec<(String, String, usize, usize)>,
}

fn compute_dtype(p: &Placement) -> Result<DType> {
    DType::from_name(&p.weight.dtype)
        .filter(|d| d.is_float())
        .ok_or_else(|| {
            Error::Invalid(format!(
                "node '{}': its weight computes in '{}', not a float type LoRA can add to",
                p.weight.node, p.weight.dtype
            ))
        })
}

pub(super) fn input_info(dtype: DType, dims: [Option<usize>; 2]) -> ValueInfo {
    let dim = |d: Option<usize>| ShapeDim {
        dim: d.map_or(Dim::Param(RANK_DIM.into()), |d| Dim::Value(d as i64)),
        denotation: None,
    };
    ValueInfo {
        ty: Some(TypeInfo {
            kind: TypeKind::Tensor {
                elem_type: Some(dtype.code()),
                shape: Some(dims.into_iter().map(dim).collect()),
            },
            denotation: None,
        }),
        ..ValueInfo::default()
    }
}

/// Olive-style node names: `/model/layers.0/self_attn/q_proj/lora_A/MatMul`.
fn node_name(base: &str, part: &str) -> String {
    let mut path: Vec<&str> = Vec::new();
    let mut rest = base;
    // Keep `layers.N` together as exporters do.
    while let Some((head, tail)) = rest.split_once('.') {
        if head == "layers" || head == "h" {
            match tail.split_once('.') {
                Some((idx, t)) => {
                    path.push(&rest[..head.len() + 1 + idx.len()]);
                    rest = t;
                }
                None => break,
            }
        } else {
            path.push(head);
            rest = tail;
        }
    }
    path.push(rest);
    format!("/{}/{part}", path.join("/"))
}

/// Adds the branch for every placement to `g`.
pub fn inject(g: &mut Graph, placements: &[Placement]) -> Result<InjectReport> {
    let mut report = InjectReport::default();
    for p in placements {
        let dtype = compute_dtype(p)?;
        let (k, n) = (p.weight.k, p.weight.n);
        let (a_name, b_name) = (p.a_name(), p.b_name());
        for name in [&a_name, &b_name] {
            if g.find(name).is_some() {
                return Err(Error::Invalid(format!(
                    "the model already has a value '{name}': is a LoRA adapter already injected?"
                )));
            }
        }
        let a = g.add_input(&a_name, input_info(dtype, [Some(k), None]))?;
        g.add_initializer(Tensor::from_raw(
            &a_name,
            dtype,
            vec![k as i64, 0],
            Bytes::new(),
        ))?;
        let b = g.add_input(&b_name, input_info(dtype, [None, Some(n)]))?;
        g.add_initializer(Tensor::from_raw(
            &b_name,
            dtype,
            vec![0, n as i64],
            Bytes::new(),
        ))?;
        let x = g
            .node(p.weight.node_id)
            .input(0)
            .ok_or_else(|| Error::Invalid(format!("node '{}' has no data input", p.weight.node)))?;
        let y = p.weight.output_id;
        let xa_name = g.fresh_name(&format!("{}.lora_A.output", p.base));
        let xa = g.add_node(
            NodeSpec::new("", "MatMul")
                .name(g.fresh_node_name(&node_name(&p.base, "lora_A/MatMul")))
                .input(x)
                .input(a)
                .output(xa_name),
        )?;
        let xa = g.node(xa).output(0).expect("MatMul has an output");
        let d_name = g.fresh_name(&format!("{}.lora_B.output", p.base));
        let d = g.add_node(
            NodeSpec::new("", "MatMul")
                .name(g.fresh_node_name(&node_name(&p.base, "lora_B/MatMul")))
                .input(xa)
                .input(b)
                .output(d_name),
        )?;
        let d = g.node(d).output(0).expect("MatMul has an output");
        if g.is_graph_output(y) {
            add_on_graph_output(g, y, d, &p.base)?;
        } else {
            let sum_name = g.fresh_name(&format!("{}.lora.output", p.base));
            // The Add reads `d` twice for now: `y`'s readers move to the sum first,
            // then the Add's own first input goes back to `y`.
            let add = g.add_node(
                NodeSpec::new("", "Add")
                    .name(g.fresh_node_name(&node_name(&p.base, "lora/Add")))
                    .input(d)
                    .input(d)
                    .output(sum_name),
            )?;
            let sum = g.node(add).output(0).expect("Add has an output");
            g.replace_all_uses(y, sum, false)?;
            g.set_input(add, 0, Some(y));
        }
        report.inputs.push((a_name, b_name, k, n));
    }
    Ok(report)
}

/// The layer's output `y` is a graph output (the lm_head's logits), whose name
/// callers bind to: the Add takes `y` over and the layer is rebuilt to produce a
/// fresh value.
fn add_on_graph_output(g: &mut Graph, y: ValueId, d: ValueId, base: &str) -> Result<()> {
    let layer = g.producer(y).ok_or_else(|| {
        Error::Invalid(format!(
            "graph output '{}' has no producing node to put LoRA after",
            g.value_name(y)
        ))
    })?;
    let old = g.node(layer);
    let name = old.name.clone();
    let spec = NodeSpec {
        op_type: old.op_type.clone(),
        domain: old.domain.clone(),
        name: None,
        inputs: old.inputs().to_vec(),
        outputs: vec![g.fresh_name(&format!("{base}.base.output"))],
        attributes: old.attributes.clone(),
        metadata_props: old.metadata_props.clone(),
    };
    let rebuilt = g.add_node(spec)?;
    let y0 = g.node(rebuilt).output(0).expect("one output");
    let add = g.swap_node(
        layer,
        NodeSpec::new("", "Add")
            .name(g.fresh_node_name(&node_name(base, "lora/Add")))
            .input(y0)
            .input(d),
    )?;
    g.node_extras(rebuilt).name = name;
    g.place_before(rebuilt, add);
    Ok(())
}

/// The adapter's values for the injected inputs, in the model's compute type:
/// A stored [K, R] (each part's Aᵀ side by side), B [R, N] (each part's scale·Bᵀ
/// in its own rows and output columns, zero elsewhere).
pub fn adapter_params(
    adapter: &PeftAdapter,
    placements: &[Placement],
) -> Result<Vec<AdapterParam>> {
    let mut out = Vec::new();
    for p in placements {
        let dtype = compute_dtype(p)?;
        let (k, n) = (p.weight.k, p.weight.n);
        let r = p.rank(adapter);
        let mut a = vec![0f32; k * r];
        let mut b = vec![0f32; r * n];
        super::merge::fill(adapter, p, k, n, r, &mut a, &mut b);
        out.push(AdapterParam {
            name: p.a_name(),
            dims: vec![k as i64, r as i64],
            dtype,
            raw: crate::ir::float_bytes(dtype, &a),
        });
        out.push(AdapterParam {
            name: p.b_name(),
            dims: vec![r as i64, n as i64],
            dtype,
            raw: crate::ir::float_bytes(dtype, &b),
        });
    }
    Ok(out)
}

/// The input of `node` at `slot` when it is a graph input whose name ends in `suffix`.
fn lora_input(g: &Graph, node: crate::ir::NodeId, slot: usize, suffix: &str) -> bool {
    g.node(node)
        .input(slot)
        .is_some_and(|v| g.is_graph_input(v) && g.value_name(v).ends_with(suffix))
}

/// Takes the injected branches out again (the A/B inputs stay), so the decoder map
/// reads an injected model as its base: `pack` places modules this way.
pub fn strip_branches(g: &mut Graph) -> Result<usize> {
    let mut found = Vec::new();
    for (id, n) in g.nodes() {
        if !n.is("", "Add") {
            continue;
        }
        for slot in [1, 0] {
            let Some(d) = n.input(slot) else { continue };
            let Some(mb) = g.producer(d) else { continue };
            if !g.node(mb).is("", "MatMul") || !lora_input(g, mb, 1, ".lora_B.weight") {
                continue;
            }
            let Some(ma) = g.node(mb).input(0).and_then(|t| g.producer(t)) else {
                continue;
            };
            if g.node(ma).is("", "MatMul") && lora_input(g, ma, 1, ".lora_A.weight") {
                found.push((id, 1 - slot, mb, ma));
                break;
            }
        }
    }
    for &(add, keep, mb, ma) in &found {
        let y = g.node(add).input(keep).expect("checked");
        let sum = g.node(add).output(0).expect("Add has an output");
        g.replace_all_uses(sum, y, true)?;
        g.remove_node(add)?;
        g.remove_node(mb)?;
        g.remove_node(ma)?;
    }
    Ok(found.len())
}
