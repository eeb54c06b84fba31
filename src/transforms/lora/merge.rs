//! Folding an adapter into the weights: W[k, n] += Σ_r A[k, r] · B[r, n] with the
//! adapter values `adapter_params` computes (scale already in B). A float weight is
//! updated in place; a MatMulNBits weight is dequantized, updated and quantized again
//! (RTN) with its own bits, block size, symmetry and scale type. A weight other nodes
//! also read (a tied lm_head's embedding table) is left to them: the adapted layer
//! gets its own merged copy.
use bytes::Bytes;

use super::place::Placement;
use crate::adapter::PeftAdapter;
use crate::error::{Error, Result};
use crate::ir::{float_bytes, float_tensor, DType, Graph, NodeId, Tensor, ValueDef, ValueId};
use crate::llm::{WeightLayout, WeightRef, WeightSource};
use crate::quant::convert::FloatType;
use crate::quant::nbits::{quantize_kn_as, BlockQuant, QuantParams};
use crate::rewrite::matchers::constant;

fn refuse(w: &WeightRef, why: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("cannot merge LoRA into node '{}': {why}", w.node))
}

/// Merges every placement into its weight (float or MatMulNBits). MatMulBnb4
/// weights are refused with the node named.
pub fn merge(g: &mut Graph, adapter: &PeftAdapter, placements: &[Placement]) -> Result<usize> {
    for p in placements {
        let (k, n) = (p.weight.k, p.weight.n);
        let r = p.rank(adapter);
        let mut a = vec![0f32; k * r];
        let mut b = vec![0f32; r * n];
        fill(adapter, p, k, n, r, &mut a, &mut b);
        let delta = product_kn(&a, &b, k, n, r);
        match p.weight.layout {
            WeightLayout::Kn | WeightLayout::NkTransposed | WeightLayout::NkGemmTransB => {
                merge_float(g, p, &delta)?
            }
            WeightLayout::MatMulNBits => merge_nbits(g, p, &delta)?,
            WeightLayout::MatMulBnb4 => {
                return Err(refuse(
                    &p.weight,
                    "its weight is MatMulBnb4 (NF4/FP4); merge into the float model, then quantize",
                ))
            }
        }
    }
    Ok(placements.len())
}

/// A[K, R] · B[R, N] as [K, N].
fn product_kn(a: &[f32], b: &[f32], k: usize, n: usize, r: usize) -> Vec<f32> {
    let mut d = vec![0f32; k * n];
    for kk in 0..k {
        let row = &mut d[kk * n..(kk + 1) * n];
        for j in 0..r {
            let av = a[kk * r + j];
            if av == 0.0 {
                continue;
            }
            for (x, &bv) in row.iter_mut().zip(&b[j * n..(j + 1) * n]) {
                *x += av * bv;
            }
        }
    }
    d
}

fn merge_float(g: &mut Graph, p: &Placement, delta: &[f32]) -> Result<()> {
    let w = &p.weight;
    if w.source != WeightSource::Initializer {
        return Err(refuse(
            w,
            "its weight is a Constant node, not an initializer",
        ));
    }
    let t = g
        .initializer(w.weight_id)
        .ok_or_else(|| refuse(w, "its weight is not an initializer"))?;
    let (k, n) = (w.k, w.n);
    let mut vals = t.to_f32()?;
    if vals.len() != k * n {
        return Err(refuse(w, "its weight does not hold K×N values"));
    }
    let dtype = if t.dtype().is_float() {
        t.dtype()
    } else {
        DType::F32
    };
    let transposed = w.layout != WeightLayout::Kn;
    for kk in 0..k {
        for nn in 0..n {
            let i = if transposed { nn * k + kk } else { kk * n + nn };
            vals[i] += delta[kk * n + nn];
        }
    }
    if g.value(w.weight_id).uses().len() == 1 {
        let name = g.value_name(w.weight_id).to_string();
        let new = float_tensor(&name, dtype, t.dims.clone(), &vals).stored_like(t);
        g.set_initializer(w.weight_id, new);
        return Ok(());
    }
    // Shared (a tied head's table): the layer reads its own copy, [K, N] for a
    // MatMul (the Transpose in between goes), [N, K] for Gemm(transB=1).
    let (dims, vals) = match w.layout {
        WeightLayout::NkGemmTransB => (vec![n as i64, k as i64], vals),
        WeightLayout::NkTransposed => (
            vec![k as i64, n as i64],
            crate::quant::transpose(&vals, n, k),
        ),
        _ => (vec![k as i64, n as i64], vals),
    };
    let name = g.fresh_name(&format!("{}.weight", p.base));
    let new = g.add_initializer(float_tensor(&name, dtype, dims, &vals))?;
    let old = g.node(w.node_id).input(1);
    g.set_input(w.node_id, 1, Some(new));
    if let Some(old) = old {
        remove_if_dead(g, old)?;
    }
    Ok(())
}

/// Removes `v` (and the Transpose/Constant producing it) when nothing reads it now.
fn remove_if_dead(g: &mut Graph, v: ValueId) -> Result<()> {
    if !g.value(v).uses().is_empty() || g.is_graph_output(v) || g.is_graph_input(v) {
        return Ok(());
    }
    match g.value(v).def {
        ValueDef::Initializer => g.remove_initializer(v),
        ValueDef::Node(node, _) => {
            let inputs: Vec<ValueId> = g.node(node).inputs().iter().flatten().copied().collect();
            g.remove_node(node)?;
            for i in inputs {
                remove_if_dead(g, i)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The bytes of a constant input of `node`, with its tensor (for dtype and dims).
fn constant_input(g: &Graph, w: &WeightRef, node: NodeId, slot: usize) -> Result<Option<Tensor>> {
    let Some(v) = g.node(node).input(slot) else {
        return Ok(None);
    };
    let (_, t) = constant(g, v).ok_or_else(|| {
        refuse(
            w,
            format!(
                "MatMulNBits input {slot} ('{}') is not a constant",
                g.value_name(v)
            ),
        )
    })?;
    Ok(Some(t.clone()))
}

fn merge_nbits(g: &mut Graph, p: &Placement, delta: &[f32]) -> Result<()> {
    let w = &p.weight;
    let node = w.node_id;
    let (k, n) = (w.k, w.n);
    let nd = g.node(node);
    if nd.input(4).is_some() {
        return Err(refuse(
            w,
            "its MatMulNBits has a g_idx input (act-order); re-quantizing it is not supported",
        ));
    }
    let bits = nd.attr_int("bits").unwrap_or(4);
    let block_size = nd.attr_int("block_size").unwrap_or(0);
    let (Ok(bits), Ok(block_size)) = (u8::try_from(bits), usize::try_from(block_size)) else {
        return Err(refuse(w, format!("bits={bits}, block_size={block_size}")));
    };
    let data = constant_input(g, w, node, 1)?.ok_or_else(|| refuse(w, "no B input"))?;
    let scales = constant_input(g, w, node, 2)?.ok_or_else(|| refuse(w, "no scales input"))?;
    let zero_points = constant_input(g, w, node, 3)?;
    if let Some(z) = &zero_points {
        if z.dtype() != DType::U8 {
            return Err(refuse(
                w,
                format!(
                    "its zero points are {:?}; only packed uint8 zero points are re-quantized",
                    z.dtype()
                ),
            ));
        }
    }
    let scale_type = FloatType::from_dtype(scales.dtype())
        .ok_or_else(|| refuse(w, format!("its scales are {:?}", scales.dtype())))?;
    let params = QuantParams::new(bits, block_size, zero_points.is_none())
        .map_err(|e| refuse(w, e.to_string()))?;
    let zp_bytes = match &zero_points {
        Some(z) => Some(z.raw_bytes()?.into_owned()),
        None => None,
    };
    let mut q = BlockQuant::from_parts(
        params,
        n,
        k,
        data.raw_bytes()?.into_owned(),
        scales.to_f32()?,
        zp_bytes,
    )
    .map_err(|e| refuse(w, e.to_string()))?;
    q.scale_type = scale_type;
    let mut vals = q.dequantize_kn();
    for (v, d) in vals.iter_mut().zip(delta) {
        *v += d;
    }
    let q = quantize_kn_as(&vals, k, n, &params, scale_type)
        .map_err(|e| refuse(w, format!("re-quantizing the merged weight: {e}")))?;
    let stem = p.base.clone();
    let new_data = Tensor::from_raw("", DType::U8, data.dims.clone(), Bytes::from(q.packed));
    set_constant_input(g, node, 1, new_data, &format!("{stem}.weight_Q{bits}"))?;
    let new_scales = Tensor::from_raw(
        "",
        scales.dtype(),
        scales.dims.clone(),
        Bytes::from(float_bytes(scales.dtype(), &q.scales)),
    );
    set_constant_input(g, node, 2, new_scales, &format!("{stem}.weight_scales"))?;
    if let (Some(z), Some(zp)) = (&zero_points, q.zero_points) {
        let new_zp = Tensor::from_raw("", DType::U8, z.dims.clone(), Bytes::from(zp));
        set_constant_input(g, node, 3, new_zp, &format!("{stem}.weight_zp"))?;
    }
    Ok(())
}

/// Puts `t` into input `slot` of `node`: in place when that input is an initializer
/// only this node reads, else as a new initializer named after `fresh`.
fn set_constant_input(
    g: &mut Graph,
    node: NodeId,
    slot: usize,
    t: Tensor,
    fresh: &str,
) -> Result<()> {
    let old = g.node(node).input(slot).expect("checked by the caller");
    if g.value(old).def == ValueDef::Initializer && g.value(old).uses().len() == 1 {
        let t = t.stored_like(g.initializer(old).expect("an initializer"));
        g.set_initializer(old, t);
        return Ok(());
    }
    let mut t = t;
    t.name = Some(g.fresh_name(fresh));
    let new = g.add_initializer(t)?;
    g.set_input(node, slot, Some(new));
    remove_if_dead(g, old)
}

/// A [K, R] and B [R, N] of one placement in f32 (the layout `adapter_params` writes).
pub(super) fn fill(
    adapter: &PeftAdapter,
    p: &Placement,
    k: usize,
    n: usize,
    r: usize,
    a: &mut [f32],
    b: &mut [f32],
) {
    let mut r0 = 0;
    for part in &p.parts {
        let m = &adapter.modules[part.module];
        for j in 0..m.rank {
            for kk in 0..k {
                a[kk * r + r0 + j] = m.a[j * k + kk];
            }
            for nn in 0..m.n {
                b[(r0 + j) * n + part.offset + nn] = m.scale * m.b[nn * m.rank + j];
            }
        }
        r0 += m.rank;
    }
}
