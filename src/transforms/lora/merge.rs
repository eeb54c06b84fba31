//! Folding an adapter into the weights: W[k, n] += Σ_r A[k, r] · B[r, n] with the
//! adapter values `adapter_params` computes (scale already in B).
use super::place::Placement;
use crate::adapter::PeftAdapter;
use crate::error::{Error, Result};
use crate::ir::{float_tensor, DType, Graph};
use crate::llm::{WeightLayout, WeightSource};

/// Merges every placement into its float weight. Packed (MatMulNBits/Bnb4) weights
/// are refused with the node named: re-quantizing them is not built yet.
pub fn merge(g: &mut Graph, adapter: &PeftAdapter, placements: &[Placement]) -> Result<usize> {
    for p in placements {
        let w = &p.weight;
        let refuse =
            |why: &str| Error::Invalid(format!("cannot merge LoRA into node '{}': {why}", w.node));
        let transposed =
            match w.layout {
                WeightLayout::Kn => false,
                WeightLayout::NkTransposed | WeightLayout::NkGemmTransB => true,
                WeightLayout::MatMulNBits | WeightLayout::MatMulBnb4 => return Err(refuse(
                    "its weight is packed (MatMulNBits/MatMulBnb4); merge into the float model, \
                     then quantize",
                )),
            };
        if w.source != WeightSource::Initializer {
            return Err(refuse("its weight is a Constant node, not an initializer"));
        }
        if g.value(w.weight_id).uses().len() != 1 {
            return Err(refuse("its weight is shared with other nodes"));
        }
        let t = g
            .initializer(w.weight_id)
            .ok_or_else(|| refuse("its weight is not an initializer"))?;
        let dtype = t.dtype();
        let dims = t.dims.clone();
        let mut vals = t.to_f32()?;
        let (k, n) = (w.k, w.n);
        if vals.len() != k * n {
            return Err(refuse("its weight does not hold K×N values"));
        }
        let r = p.rank(adapter);
        let mut a = vec![0f32; k * r];
        let mut b = vec![0f32; r * n];
        fill(adapter, p, k, n, r, &mut a, &mut b);
        for kk in 0..k {
            for nn in 0..n {
                let d: f32 = (0..r).map(|j| a[kk * r + j] * b[j * n + nn]).sum();
                let i = if transposed { nn * k + kk } else { kk * n + nn };
                vals[i] += d;
            }
        }
        let name = g.value_name(w.weight_id).to_string();
        let new = float_tensor(&name, dtype_or_f32(dtype), dims, &vals)
            .stored_like(g.initializer(w.weight_id).expect("checked above"));
        g.set_initializer(w.weight_id, new);
    }
    Ok(placements.len())
}

fn dtype_or_f32(d: DType) -> DType {
    if d.is_float() {
        d
    } else {
        DType::F32
    }
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
