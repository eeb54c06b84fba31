//! The decoder map as text, for `onnxq inspect --decoder`.
use std::fmt::Write;

use super::io::{DimExpr, TensorIo};
use super::{DecoderMap, NormMap, WeightRef};

fn dims(t: &TensorIo) -> String {
    let Some(ds) = &t.dims else {
        return format!("{} ?", t.name);
    };
    let parts: Vec<String> = ds
        .iter()
        .map(|d| match d {
            DimExpr::Fixed(n) => n.to_string(),
            DimExpr::Param(p) => p.clone(),
            DimExpr::Unknown => "?".into(),
        })
        .collect();
    format!(
        "{} {}[{}]",
        t.name,
        t.dtype.as_deref().unwrap_or("?"),
        parts.join(", ")
    )
}

fn weight(s: &mut String, role: &str, w: &WeightRef) {
    let packed = match (w.bits, w.block_size) {
        (Some(b), Some(bs)) => format!(" {b}-bit b{bs}"),
        _ => String::new(),
    };
    let _ = writeln!(
        s,
        "    {role:<8} K={:<5} N={:<5} {:<8} {:?}{packed}  {}  ({})",
        w.k, w.n, w.dtype, w.layout, w.node, w.initializer
    );
}

fn norm(s: &mut String, role: &str, n: &NormMap) {
    let eps = n.epsilon.map(|e| format!(" eps={e:e}")).unwrap_or_default();
    let _ = writeln!(
        s,
        "  {role:<20} {:?}{eps}  {}  (weight {})",
        n.kind,
        n.node,
        n.weight.as_deref().unwrap_or("none")
    );
}

pub fn to_text(m: &DecoderMap) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "decoder: {} layers, hidden {}, {} heads / {} kv heads of {}, intermediate {}, vocab {}, lm_head {}",
        m.num_layers,
        m.hidden_size,
        m.num_heads,
        m.num_kv_heads,
        m.head_size,
        m.intermediate_size,
        m.vocab_size,
        if m.tied_lm_head { "tied to the embedding" } else { "untied" }
    );
    let e = &m.embedding;
    let _ = writeln!(
        s,
        "embedding: {} '{}' table {} [{}, {}] {}",
        e.op, e.node, e.table, e.vocab_size, e.hidden_size, e.dtype
    );
    for l in &m.layers {
        let _ = writeln!(s, "layer {}:", l.index);
        norm(&mut s, "input norm", &l.input_norm);
        let a = &l.attention;
        let rotary = a
            .rotary
            .as_ref()
            .map(|r| format!("{:?}", r.kind))
            .unwrap_or_else(|| "none".into());
        let _ = writeln!(
            s,
            "  attention            {:?} '{}', {} heads / {} kv heads of {}, rotary {rotary}",
            a.kind, a.node, a.num_heads, a.num_kv_heads, a.head_size
        );
        for (role, w) in [
            ("q", &a.q_proj),
            ("k", &a.k_proj),
            ("v", &a.v_proj),
            ("qkv", &a.qkv_proj),
        ] {
            if let Some(w) = w {
                weight(&mut s, role, w);
            }
        }
        weight(&mut s, "o", &a.o_proj);
        norm(&mut s, "post-attention norm", &l.post_attention_norm);
        let p = &l.mlp;
        let _ = writeln!(s, "  mlp                  {:?}, {}", p.kind, p.activation);
        for (role, w) in [
            ("gate", &p.gate_proj),
            ("up", &p.up_proj),
            ("gate_up", &p.gate_up_proj),
        ] {
            if let Some(w) = w {
                weight(&mut s, role, w);
            }
        }
        weight(&mut s, "down", &p.down_proj);
    }
    let _ = writeln!(s, "head:");
    norm(&mut s, "final norm", &m.final_norm);
    weight(&mut s, "lm_head", &m.lm_head);
    let io = &m.io;
    let _ = writeln!(s, "inputs:");
    let _ = writeln!(s, "  input_ids       {}", dims(&io.input_ids));
    if let Some(p) = &io.position_ids {
        let _ = writeln!(s, "  position_ids    {}", dims(p));
    }
    if let Some(p) = &io.attention_mask {
        let _ = writeln!(s, "  attention_mask  {}", dims(p));
    }
    for kv in &io.past {
        let _ = writeln!(
            s,
            "  past {}          {} / {}",
            kv.layer,
            dims(&kv.key),
            dims(&kv.value)
        );
    }
    let _ = writeln!(s, "outputs:");
    if let Some(l) = &io.logits {
        let _ = writeln!(s, "  logits          {}", dims(l));
    }
    for kv in &io.present {
        let _ = writeln!(
            s,
            "  present {}       {} / {}",
            kv.layer,
            dims(&kv.key),
            dims(&kv.value)
        );
    }
    s
}
