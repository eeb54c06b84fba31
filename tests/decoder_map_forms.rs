//! The decoder map (src/llm) on forms built by editing the fixtures: refusals and
//! broken layers that name the layer and the step, MatMulNBits, Constant-node and
//! half-precision weights, com.microsoft rotary and attention, other MLP shapes,
//! a quantized tied table, and every ONNX backend model without a panic.
mod common;

use std::process::Command;

use common::forms::{assert_weight, load};
use onnxq::ir::{DType, Graph, Tensor};
use onnxq::llm::{AttentionKind, DecoderMap, MlpKind, RotaryKind, WeightLayout, WeightSource};

#[test]
fn models_that_are_not_decoders_say_so() {
    for f in ["mlp.onnx", "cnn.onnx", "roundtrip.onnx"] {
        let m = load(f);
        match DecoderMap::build(&m.graph) {
            Err(onnxq::Error::NotDecoder(_)) => {}
            other => panic!("{f}: expected 'not a decoder', got {other:?}"),
        }
        let out = Command::new(common::onnxq_bin())
            .args(["inspect", "--decoder"])
            .arg(common::fixtures().join(f))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{f}");
        assert!(err.contains("not a decoder"), "{f}: {err}");
        assert!(!err.contains("panicked"), "{f}: {err}");
    }
}

#[test]
fn a_broken_attention_names_the_layer_and_the_step() {
    let mut m = load("llama-attention23.onnx");
    let map = DecoderMap::build(&m.graph).unwrap();
    let layer = &map.layers[1];
    let attn = layer.attention.node_id;
    let attn_name = layer.attention.node.clone();
    // Feed the Attention node's query from the norm output instead of q_proj.
    let normed = m.graph.find(&layer.input_norm.output).unwrap();
    m.graph.set_input(attn, 0, Some(normed));
    let err = DecoderMap::build(&m.graph).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "layer 1: attention: no q projection MatMul feeds the Attention node '{attn_name}'"
        )
    );
}

#[test]
fn a_broken_mlp_names_the_layer_and_the_step() {
    let mut m = load("llama-decomposed.onnx");
    let map = DecoderMap::build(&m.graph).unwrap();
    let layer = &map.layers[0];
    let up = layer.mlp.up_proj.as_ref().unwrap();
    // up_proj now reads the residual instead of the norm: the MLP has one projection
    // whose path to down_proj is joined by a foreign tensor.
    let resid = m.graph.find(layer.residual_in.as_deref().unwrap()).unwrap();
    m.graph.set_input(up.node_id, 0, Some(resid));
    let err = DecoderMap::build(&m.graph).unwrap_err().to_string();
    assert!(err.starts_with("layer 0: mlp: "), "{err}");
    assert!(
        err.contains("'/model/layers.0/mlp/gate_proj/MatMul' is the only projection"),
        "{err}"
    );
}

#[test]
fn matmulnbits_decoder_maps_with_weights_from_attributes() {
    let tmp = tempfile::tempdir().unwrap();
    let src = common::fixtures().join("llama-decomposed.onnx");
    let out = tmp.path().join("q4.onnx");
    let run = Command::new(common::onnxq_bin())
        .args(["quantize", "--no-verify"])
        .arg(&src)
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let float = DecoderMap::build(&load("llama-decomposed.onnx").graph).unwrap();
    let m = onnxq::load(&out).unwrap();
    let q = DecoderMap::build(&m.graph).unwrap();
    assert_eq!(q.num_layers, 2);
    assert_eq!((q.num_heads, q.num_kv_heads, q.head_size), (4, 2, 16));
    let mut packed = 0;
    for (lf, lq) in float.layers.iter().zip(&q.layers) {
        for (wf, wq) in lf.linears().into_iter().zip(lq.linears()) {
            assert_eq!(wq.op, "com.microsoft::MatMulNBits", "{}", wq.node);
            assert_eq!((wq.bits, wq.block_size), (Some(4), Some(32)), "{}", wq.node);
            assert_weight(
                &m.graph,
                wq,
                wf.k,
                wf.n,
                WeightLayout::MatMulNBits,
                &wq.node,
            );
            packed += 1;
        }
    }
    assert_eq!(packed, 14);
    assert_eq!(q.linears().len(), 15);
    assert!(q
        .linears()
        .iter()
        .all(|w| w.layout == WeightLayout::MatMulNBits));
    assert_eq!(q.lm_head.layout, WeightLayout::MatMulNBits);
    assert_eq!((q.lm_head.k, q.lm_head.n), (64, 320));
}

/// `t` with its values converted to `dtype` (float16 or bfloat16).
fn to_half(t: &Tensor, dtype: DType) -> Tensor {
    let raw: Vec<u8> = t
        .to_f32()
        .unwrap()
        .into_iter()
        .flat_map(|x| match dtype {
            DType::F16 => half::f16::from_f32(x).to_le_bytes(),
            _ => half::bf16::from_f32(x).to_le_bytes(),
        })
        .collect();
    Tensor::from_raw(t.name(), dtype, t.dims.clone(), raw.into())
}

#[test]
fn constant_node_and_half_precision_weights_are_mapped() {
    let mut m = load("llama-decomposed.onnx");
    let map = DecoderMap::build(&m.graph).unwrap();
    let l0 = &map.layers[0];
    let (q, k, v) = (
        l0.attention.q_proj.clone().unwrap(),
        l0.attention.k_proj.clone().unwrap(),
        l0.attention.v_proj.clone().unwrap(),
    );
    let g = &mut m.graph;
    // q_proj's weight becomes a Constant node's value.
    let t = g.initializer(q.weight_id).unwrap().clone();
    let c = g
        .add_node(
            onnxq::ir::NodeSpec::new("", "Constant")
                .name("q_weight_constant")
                .output("q_weight_const")
                .attr(onnxq::ir::Attribute {
                    name: "value".into(),
                    ty: Some(onnxq::ir::attr_kind::TENSOR),
                    t: Some(t),
                    ..Default::default()
                }),
        )
        .unwrap();
    let cv = g.node(c).output(0).unwrap();
    g.set_input(q.node_id, 1, Some(cv));
    let kt = to_half(g.initializer(k.weight_id).unwrap(), DType::F16);
    g.set_initializer(k.weight_id, kt);
    let vt = to_half(g.initializer(v.weight_id).unwrap(), DType::BF16);
    g.set_initializer(v.weight_id, vt);

    let map = DecoderMap::build(&m.graph).unwrap();
    let a = &map.layers[0].attention;
    let q = a.q_proj.as_ref().unwrap();
    assert_eq!(
        (q.source, q.initializer.as_str(), q.k, q.n),
        (WeightSource::ConstantNode, "q_weight_const", 64, 64)
    );
    let k = a.k_proj.as_ref().unwrap();
    assert_eq!(
        (k.dtype.as_str(), k.k, k.n, k.layout),
        ("float16", 64, 32, WeightLayout::Kn)
    );
    let v = a.v_proj.as_ref().unwrap();
    assert_eq!((v.dtype.as_str(), v.k, v.n), ("bfloat16", 64, 32));
    assert_eq!(
        map.layers[1].attention.q_proj.as_ref().unwrap().source,
        WeightSource::Initializer
    );
}

fn node_named(g: &Graph, name: &str) -> onnxq::ir::NodeId {
    g.nodes()
        .find(|(_, n)| n.name() == name)
        .unwrap_or_else(|| panic!("no node '{name}'"))
        .0
}

fn int_attr(name: &str, v: i64) -> onnxq::ir::Attribute {
    onnxq::ir::Attribute {
        name: name.into(),
        ty: Some(onnxq::ir::attr_kind::INT),
        i: Some(v),
        ..Default::default()
    }
}

#[test]
fn microsoft_rotary_and_multi_head_attention_are_mapped() {
    let mut m = load("llama-attention23.onnx");
    let map = DecoderMap::build(&m.graph).unwrap();
    let g = &mut m.graph;
    for l in &map.layers {
        // opset-23 RotaryEmbedding(X, cos, sin, pos) → com.microsoft (X, pos, cos, sin).
        for rot in &l.attention.rotary.as_ref().unwrap().nodes {
            let id = node_named(g, rot);
            let n = g.node(id).clone();
            let heads = n.attr_int("num_heads").unwrap();
            let spec = onnxq::ir::NodeSpec::new("com.microsoft", "RotaryEmbedding")
                .name(rot.clone())
                .inputs([n.input(0), n.input(3), n.input(1), n.input(2)])
                .attr(int_attr("num_heads", heads))
                .attr(int_attr("interleaved", 0));
            g.swap_node(id, spec).unwrap();
        }
        // MultiHeadAttention has as many kv heads as heads: widen k and v to match.
        for p in [&l.attention.k_proj, &l.attention.v_proj] {
            let p = p.as_ref().unwrap();
            let name = g.value_name(p.weight_id).to_string();
            g.set_initializer(
                p.weight_id,
                Tensor::from_f32(name, vec![64, 64], &[0.0; 64 * 64]),
            );
        }
        let a = g.node(l.attention.node_id).clone();
        let spec = onnxq::ir::NodeSpec::new("com.microsoft", "MultiHeadAttention")
            .name(l.attention.node.clone())
            .inputs([a.input(0), a.input(1), a.input(2), None, None, a.input(3)])
            .attr(int_attr("num_heads", 4));
        g.swap_node(l.attention.node_id, spec).unwrap();
    }
    let map = DecoderMap::build(&m.graph).unwrap();
    assert_eq!((map.num_heads, map.num_kv_heads, map.head_size), (4, 4, 16));
    for l in &map.layers {
        let a = &l.attention;
        assert_eq!(a.kind, AttentionKind::MultiHeadAttention);
        assert_eq!(
            (a.k_proj.as_ref().unwrap().n, a.v_proj.as_ref().unwrap().n),
            (64, 64)
        );
        let r = a.rotary.as_ref().unwrap();
        assert_eq!(r.kind, RotaryKind::MicrosoftRotaryEmbedding);
        assert_eq!(r.nodes.len(), 2);
        assert_eq!(r.cos.as_deref(), Some("model.rotary_emb.cos_cache"));
        assert_eq!(r.sin.as_deref(), Some("model.rotary_emb.sin_cache"));
        assert_eq!(a.mask.as_deref(), Some("/model/And_output_0"));
    }
    assert_eq!(map.io.position_ids.as_ref().unwrap().name, "position_ids");
    assert_eq!(
        map.io.attention_mask.as_ref().unwrap().name,
        "attention_mask"
    );

    // Left at 2 kv heads' width, k no longer fits MultiHeadAttention's head count.
    let mut m = load("llama-attention23.onnx");
    let fresh = DecoderMap::build(&m.graph).unwrap();
    let l = &fresh.layers[0];
    let a = m.graph.node(l.attention.node_id).clone();
    let spec = onnxq::ir::NodeSpec::new("com.microsoft", "MultiHeadAttention")
        .name(l.attention.node.clone())
        .inputs([a.input(0), a.input(1), a.input(2)])
        .attr(int_attr("num_heads", 4));
    m.graph.swap_node(l.attention.node_id, spec).unwrap();
    let err = DecoderMap::build(&m.graph).unwrap_err().to_string();
    assert_eq!(
        err,
        "layer 0: attention: k projection '/model/layers.0/self_attn/k_proj/MatMul' has N = 32, \
         not 4 kv heads x 16 for the MultiHeadAttention node '/model/layers.0/self_attn/Attention'"
    );
}

#[test]
fn two_matrix_and_packed_gate_up_mlps_are_mapped() {
    let mut m = load("llama-decomposed.onnx");
    let map = DecoderMap::build(&m.graph).unwrap();
    let g = &mut m.graph;

    // Layer 1 without up_proj: down(silu(gate(x))), a two-matrix MLP.
    let mlp = &map.layers[1].mlp;
    let (gate, up) = (mlp.gate_proj.clone().unwrap(), mlp.up_proj.clone().unwrap());
    let (join, _) = onnxq::rewrite::matchers::consumers(g, up.output_id)[0];
    let act = g
        .node(join)
        .inputs()
        .iter()
        .flatten()
        .copied()
        .find(|&v| v != up.output_id)
        .unwrap();
    g.swap_node(
        join,
        onnxq::ir::NodeSpec::new("", "Identity")
            .name("no_up")
            .input(act),
    )
    .unwrap();
    g.remove_node(up.node_id).unwrap();

    // Layer 0 with gate and up packed into one [64, 256] weight split in halves.
    let mlp = &map.layers[0].mlp;
    let (gate0, up0) = (mlp.gate_proj.clone().unwrap(), mlp.up_proj.clone().unwrap());
    let gw = g.initializer(gate0.weight_id).unwrap().to_f32().unwrap();
    let uw = g.initializer(up0.weight_id).unwrap().to_f32().unwrap();
    let packed: Vec<f32> = (0..64)
        .flat_map(|r| {
            gw[r * 128..(r + 1) * 128]
                .iter()
                .chain(&uw[r * 128..(r + 1) * 128])
        })
        .copied()
        .collect();
    let w = g
        .add_initializer(Tensor::from_f32("gate_up.weight", vec![64, 256], &packed))
        .unwrap();
    let sizes = g
        .add_initializer(Tensor::from_i64("gate_up.split", vec![2], &[128, 128]))
        .unwrap();
    let normed = g.find(&map.layers[0].post_attention_norm.output).unwrap();
    let mm = g
        .add_node(
            onnxq::ir::NodeSpec::new("", "MatMul")
                .name("gate_up")
                .input(normed)
                .input(w)
                .output("gate_up_out"),
        )
        .unwrap();
    let split = g
        .add_node(
            onnxq::ir::NodeSpec::new("", "Split")
                .name("gate_up_split")
                .input(g.node(mm).output(0).unwrap())
                .input(sizes)
                .output("gate_half")
                .output("up_half")
                .attr(int_attr("axis", -1)),
        )
        .unwrap();
    let (gh, uh) = (
        g.node(split).output(0).unwrap(),
        g.node(split).output(1).unwrap(),
    );
    g.replace_all_uses(gate0.output_id, gh, false).unwrap();
    g.replace_all_uses(up0.output_id, uh, false).unwrap();
    g.remove_node(gate0.node_id).unwrap();
    g.remove_node(up0.node_id).unwrap();

    let map = DecoderMap::build(&m.graph).unwrap();
    let packed = &map.layers[0].mlp;
    assert_eq!(
        (packed.kind, packed.activation.as_str()),
        (MlpKind::GatedPacked, "silu")
    );
    let gu = packed.gate_up_proj.as_ref().unwrap();
    assert_eq!((gu.node.as_str(), gu.k, gu.n), ("gate_up", 64, 256));
    assert!(packed.gate_proj.is_none() && packed.up_proj.is_none());
    assert_eq!((packed.down_proj.k, packed.intermediate_size), (128, 128));

    let two = &map.layers[1].mlp;
    assert_eq!(
        (two.kind, two.activation.as_str()),
        (MlpKind::TwoMatrix, "silu")
    );
    assert_eq!(two.up_proj.as_ref().unwrap().node, gate.node);
    assert!(two.gate_proj.is_none());
    assert_eq!((two.down_proj.k, two.down_proj.n), (128, 64));
}

#[test]
fn group_query_attention_fed_one_packed_query_is_mapped() {
    // onnxruntime-genai's other packed form: GQA reads q|k|v as its query, k and v empty.
    let mut m = load("decoders/genai.onnx");
    let map = DecoderMap::build(&m.graph).unwrap();
    for l in &map.layers {
        let a = &l.attention;
        let qkv_out = m
            .graph
            .node(a.qkv_proj.as_ref().unwrap().node_id)
            .output(0)
            .unwrap();
        let n = m.graph.node(a.node_id).clone();
        let mut inputs = vec![Some(qkv_out), None, None];
        inputs.extend(n.inputs()[3..].iter().copied());
        let mut spec = onnxq::ir::NodeSpec::new("com.microsoft", "GroupQueryAttention")
            .name(a.node.clone())
            .inputs(inputs);
        spec.attributes = n.attributes.clone();
        m.graph.swap_node(a.node_id, spec).unwrap();
    }
    let map = DecoderMap::build(&m.graph).unwrap();
    for l in &map.layers {
        let a = &l.attention;
        assert_eq!(a.kind, AttentionKind::GroupQueryAttention);
        assert_eq!((a.num_heads, a.num_kv_heads, a.head_size), (6, 2, 16));
        assert_eq!(a.qkv_proj.as_ref().map(|p| (p.k, p.n)), Some((96, 160)));
        assert_eq!(a.qkv_split, Some([96, 32, 32]));
        assert_eq!(a.kv.present_key, Some(format!("present.{}.key", l.index)));
    }
}

#[test]
fn inspect_decoder_prints_a_readable_map() {
    let out = Command::new(common::onnxq_bin())
        .args(["inspect", "--decoder"])
        .arg(common::fixtures().join("llama-genai-kv.onnx"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.lines().next().unwrap_or("");
    assert_eq!(
        first,
        "decoder: 2 layers, hidden 64, 4 heads / 2 kv heads of 16, intermediate 128, vocab 320, \
         lm_head untied"
    );
    assert!(text.contains("layer 1:"), "{text}");
    assert!(
        text.contains("/model/layers.1/attn/GroupQueryAttention"),
        "{text}"
    );
    assert!(
        text.contains("attention_mask  attention_mask int64[batch_size, total_sequence_length]"),
        "{text}"
    );
}

#[test]
fn the_decoder_map_keeps_to_its_layer() {
    // src/llm sits below the passes: it may use error, ir, io, rewrite, quant,
    // runtime and calib, never transforms, pass, cli or verify.
    let dir = common::repo().join("src/llm");
    let mut files = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        let text = std::fs::read_to_string(&p).unwrap();
        for banned in [
            "crate::transforms",
            "crate::pass",
            "crate::cli",
            "crate::verify",
        ] {
            assert!(!text.contains(banned), "{} uses {banned}", p.display());
        }
        files += 1;
    }
    assert!(files >= 5, "{files} files in src/llm");
}

#[test]
fn quantized_tied_embedding_shares_the_lm_head_codes() {
    // The default stores a tied table once, at 8 bits: GatherBlockQuantized reads the
    // lm_head's MatMulNBits codes through a Reshape, and the map must still see them tied.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("tied-q4.onnx");
    let run = Command::new(common::onnxq_bin())
        .args(["quantize", "--no-verify"])
        .arg(common::fixtures().join("llama-decomposed-tied.onnx"))
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let m = onnxq::load(&out).unwrap();
    let map = DecoderMap::build(&m.graph).unwrap();
    let e = &map.embedding;
    assert_eq!(e.op, "com.microsoft::GatherBlockQuantized");
    assert_eq!((e.vocab_size, e.hidden_size, e.bits), (320, 64, Some(8)));
    assert!(map.tied_lm_head);
    assert_eq!(map.lm_head.initializer, e.table);
    assert_eq!(map.lm_head.layout, WeightLayout::MatMulNBits);
    assert_eq!((map.lm_head.k, map.lm_head.n), (64, 320));
    assert_eq!(map.num_layers, 2);
}

#[test]
fn no_onnx_backend_model_makes_the_mapper_panic() {
    // 1 900+ small graphs of every op: none is a decoder, and reading each as one
    // must end in a typed error, never a panic or a bogus map.
    let Some(python) = common::python() else {
        return;
    };
    let models = common::models_under(&common::onnx_backend_data(&python));
    assert!(models.len() > 1000, "{} backend models", models.len());
    let mut refused = 0;
    for p in &models {
        let Ok(m) = onnxq::load(p) else {
            continue;
        };
        match DecoderMap::build(&m.graph) {
            Err(onnxq::Error::NotDecoder(why)) => {
                assert!(!why.is_empty());
                refused += 1;
            }
            Err(onnxq::Error::DecoderMap { at, step, .. }) => {
                assert!(!at.is_empty() && !step.is_empty(), "{}", p.display());
                refused += 1;
            }
            Err(e) => panic!("{}: untyped error {e}", p.display()),
            Ok(map) => panic!("{}: mapped as a decoder: {map:?}", p.display()),
        }
    }
    assert!(refused > 1000, "{refused} refused");
}
