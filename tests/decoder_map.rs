//! The decoder map (src/llm) on every decoder fixture: exact structure (layers,
//! heads, sizes, tied flag, K/N of every weight checked against the tensor's own
//! dims, norm/attention/rotary kinds, KV and mask/position inputs), the JSON of
//! `onnxq inspect --decoder --json`, the "not a decoder" and broken-layer errors, and
//! a MatMulNBits-quantized decoder read from the node attributes.
mod common;

use std::path::Path;
use std::process::Command;

use common::forms::{assert_weight, load};

use onnxq::llm::{AttentionKind, DecoderMap, MlpKind, NormKind, RotaryKind, WeightLayout};

/// What fixtures/README.md says a decoder fixture is.
struct Expect {
    file: &'static str,
    hidden: usize,
    heads: usize,
    kv_heads: usize,
    intermediate: usize,
    tied: bool,
    first_norm: NormKind,
    norm: NormKind,
    final_norm: NormKind,
    attention: AttentionKind,
    rotary: RotaryKind,
    packed_qkv: bool,
    layout: WeightLayout,
    kv_cache: bool,
    position_ids: bool,
    /// attention_mask's dims as declared.
    mask_dims: [&'static str; 2],
}

const TINY: (usize, usize, usize, usize) = (64, 4, 2, 128);
const FORMS: (usize, usize, usize, usize) = (96, 6, 2, 160);

fn expectations() -> Vec<Expect> {
    use AttentionKind as A;
    use NormKind as N;
    use RotaryKind as R;
    use WeightLayout as L;
    let tiny = |file, tied, kv, attention, rotary, norm, layout| Expect {
        file,
        hidden: TINY.0,
        heads: TINY.1,
        kv_heads: TINY.2,
        intermediate: TINY.3,
        tied,
        first_norm: norm,
        norm,
        final_norm: norm,
        attention,
        rotary,
        packed_qkv: false,
        layout,
        kv_cache: kv,
        position_ids: true,
        mask_dims: [
            "batch_size",
            if kv {
                "total_sequence_length"
            } else {
                "sequence_length"
            },
        ],
    };
    let form = |file, attention, rotary, norm, layout| Expect {
        file,
        hidden: FORMS.0,
        heads: FORMS.1,
        kv_heads: FORMS.2,
        intermediate: FORMS.3,
        tied: true,
        first_norm: norm,
        norm,
        final_norm: norm,
        attention,
        rotary,
        packed_qkv: false,
        layout,
        kv_cache: true,
        position_ids: true,
        mask_dims: ["batch_size", "total_sequence_length"],
    };
    vec![
        tiny(
            "llama-decomposed.onnx",
            false,
            false,
            A::Decomposed,
            R::Decomposed,
            N::DecomposedRms,
            L::Kn,
        ),
        tiny(
            "llama-decomposed-kv.onnx",
            false,
            true,
            A::Decomposed,
            R::Decomposed,
            N::DecomposedRms,
            L::Kn,
        ),
        tiny(
            "llama-decomposed-tied.onnx",
            true,
            false,
            A::Decomposed,
            R::Decomposed,
            N::DecomposedRms,
            L::Kn,
        ),
        tiny(
            "llama-attention23.onnx",
            false,
            false,
            A::Attention,
            R::RotaryEmbedding,
            N::RmsNormalization,
            L::NkTransposed,
        ),
        tiny(
            "llama-attention23-kv.onnx",
            false,
            true,
            A::Attention,
            R::RotaryEmbedding,
            N::RmsNormalization,
            L::NkTransposed,
        ),
        Expect {
            first_norm: N::SimplifiedLayerNormalization,
            norm: N::SkipSimplifiedLayerNormalization,
            final_norm: N::SkipSimplifiedLayerNormalization,
            position_ids: false,
            ..tiny(
                "llama-genai-kv.onnx",
                false,
                true,
                A::GroupQueryAttention,
                R::InsideAttention,
                N::SkipSimplifiedLayerNormalization,
                L::Kn,
            )
        },
        form(
            "decoders/decomposed.onnx",
            A::Decomposed,
            R::Decomposed,
            N::DecomposedRms,
            L::Kn,
        ),
        form(
            "decoders/dynamo.onnx",
            A::Decomposed,
            R::Decomposed,
            N::DecomposedRms,
            L::NkTransposed,
        ),
        Expect {
            first_norm: N::SimplifiedLayerNormalization,
            tied: false,
            packed_qkv: true,
            position_ids: false,
            ..form(
                "decoders/genai.onnx",
                A::GroupQueryAttention,
                R::InsideAttention,
                N::SkipSimplifiedLayerNormalization,
                L::Kn,
            )
        },
        Expect {
            mask_dims: ["batch_size", "past_seq_len + seq_len"],
            ..form(
                "decoders/opset24.onnx",
                A::Attention,
                R::RotaryEmbedding,
                N::RmsNormalization,
                L::Kn,
            )
        },
    ]
}

#[test]
fn every_decoder_fixture_maps_exactly() {
    for e in expectations() {
        let m = load(e.file);
        let g = &m.graph;
        let map = DecoderMap::build(g).unwrap_or_else(|err| panic!("{}: {err}", e.file));
        let f = e.file;
        let head = e.hidden / e.heads;
        assert_eq!(map.num_layers, 2, "{f}");
        assert_eq!(map.layers.len(), 2, "{f}");
        assert_eq!(map.hidden_size, e.hidden, "{f}");
        assert_eq!(map.num_heads, e.heads, "{f}");
        assert_eq!(map.num_kv_heads, e.kv_heads, "{f}");
        assert_eq!(map.head_size, 16, "{f}");
        assert_eq!(head, 16, "{f}");
        assert_eq!(map.intermediate_size, e.intermediate, "{f}");
        assert_eq!(map.vocab_size, 320, "{f}");
        assert_eq!(map.tied_lm_head, e.tied, "{f}");
        assert_eq!(map.embedding.table, "model.embed_tokens.weight", "{f}");
        assert_eq!(
            (map.embedding.vocab_size, map.embedding.hidden_size),
            (320, e.hidden),
            "{f}"
        );
        let (q_n, kv_n) = (e.heads * head, e.kv_heads * head);
        for (i, l) in map.layers.iter().enumerate() {
            let at = format!("{f} layer {i}");
            assert_eq!(l.index, i);
            let first = if i == 0 { e.first_norm } else { e.norm };
            assert_eq!(l.input_norm.kind, first, "{at} input norm");
            assert_eq!(l.post_attention_norm.kind, e.norm, "{at} post norm");
            for n in [&l.input_norm, &l.post_attention_norm] {
                let w = n.weight.as_deref().expect("norm weight");
                let t = g.initializer(g.find(w).unwrap()).unwrap();
                assert_eq!(t.dims, [e.hidden as i64], "{at} norm weight {w}");
                assert_eq!(n.epsilon, Some(1e-6), "{at}");
            }
            let a = &l.attention;
            assert_eq!(a.kind, e.attention, "{at}");
            assert_eq!(
                (a.num_heads, a.num_kv_heads, a.head_size),
                (e.heads, e.kv_heads, head),
                "{at}"
            );
            assert_eq!(
                a.rotary.as_ref().map(|r| r.kind),
                Some(e.rotary),
                "{at} rotary"
            );
            assert_eq!(a.scale, Some(0.25), "{at} scale");
            if e.packed_qkv {
                assert!(
                    a.q_proj.is_none() && a.k_proj.is_none() && a.v_proj.is_none(),
                    "{at}"
                );
                let qkv = a.qkv_proj.as_ref().expect("qkv");
                assert_weight(
                    g,
                    qkv,
                    e.hidden,
                    q_n + 2 * kv_n,
                    e.layout,
                    &format!("{at} qkv"),
                );
                assert_eq!(a.qkv_split, Some([q_n, kv_n, kv_n]), "{at}");
            } else {
                assert!(a.qkv_proj.is_none(), "{at}");
                assert_weight(
                    g,
                    a.q_proj.as_ref().unwrap(),
                    e.hidden,
                    q_n,
                    e.layout,
                    &format!("{at} q"),
                );
                assert_weight(
                    g,
                    a.k_proj.as_ref().unwrap(),
                    e.hidden,
                    kv_n,
                    e.layout,
                    &format!("{at} k"),
                );
                assert_weight(
                    g,
                    a.v_proj.as_ref().unwrap(),
                    e.hidden,
                    kv_n,
                    e.layout,
                    &format!("{at} v"),
                );
            }
            assert_weight(g, &a.o_proj, q_n, e.hidden, e.layout, &format!("{at} o"));
            let p = &l.mlp;
            assert_eq!(
                (p.kind, p.activation.as_str()),
                (MlpKind::Gated, "silu"),
                "{at}"
            );
            assert_weight(
                g,
                p.gate_proj.as_ref().unwrap(),
                e.hidden,
                e.intermediate,
                e.layout,
                &format!("{at} gate"),
            );
            assert_weight(
                g,
                p.up_proj.as_ref().unwrap(),
                e.hidden,
                e.intermediate,
                e.layout,
                &format!("{at} up"),
            );
            assert_weight(
                g,
                &p.down_proj,
                e.intermediate,
                e.hidden,
                e.layout,
                &format!("{at} down"),
            );
            // Names come from the graph, so the exporter's own naming must agree.
            if !e.file.contains("dynamo") {
                assert!(
                    a.o_proj.node.contains(&format!("layers.{i}/")),
                    "{at}: {}",
                    a.o_proj.node
                );
                assert!(
                    p.down_proj.node.contains("down_proj"),
                    "{at}: {}",
                    p.down_proj.node
                );
                assert!(
                    p.gate_proj.as_ref().unwrap().node.contains("gate_proj"),
                    "{at}"
                );
            }
            let kv = &a.kv;
            let want = |s: &str| e.kv_cache.then(|| s.to_string());
            assert_eq!(
                kv.past_key,
                want(&format!("past_key_values.{i}.key")),
                "{at}"
            );
            assert_eq!(
                kv.past_value,
                want(&format!("past_key_values.{i}.value")),
                "{at}"
            );
            assert_eq!(kv.present_key, want(&format!("present.{i}.key")), "{at}");
            assert_eq!(
                kv.present_value,
                want(&format!("present.{i}.value")),
                "{at}"
            );
        }
        assert_eq!(map.final_norm.kind, e.final_norm, "{f}");
        let lm_layout = if e.tied || e.layout == WeightLayout::NkTransposed {
            WeightLayout::NkTransposed
        } else {
            WeightLayout::Kn
        };
        assert_weight(
            g,
            &map.lm_head,
            e.hidden,
            320,
            lm_layout,
            &format!("{f} lm_head"),
        );
        if e.tied {
            assert_eq!(map.lm_head.initializer, map.embedding.table, "{f}");
        } else {
            assert_ne!(map.lm_head.initializer, map.embedding.table, "{f}");
        }
        let io = &map.io;
        assert_eq!(io.input_ids.name, "input_ids", "{f}");
        assert_eq!(
            io.position_ids.as_ref().map(|p| p.name.as_str()),
            e.position_ids.then_some("position_ids"),
            "{f}"
        );
        let mask = io.attention_mask.as_ref().expect("attention mask");
        assert_eq!(mask.name, "attention_mask", "{f}");
        let dims = serde_json::to_value(&mask.dims).unwrap();
        assert_eq!(dims, serde_json::json!(e.mask_dims), "{f} mask dims");
        assert_eq!(io.past.len(), if e.kv_cache { 2 } else { 0 }, "{f}");
        assert_eq!(io.present.len(), if e.kv_cache { 2 } else { 0 }, "{f}");
        assert_eq!(
            io.logits.as_ref().map(|l| l.name.as_str()),
            Some("logits"),
            "{f}"
        );
    }
}

fn inspect_json(model: &Path) -> serde_json::Value {
    let out = Command::new(common::onnxq_bin())
        .args(["inspect", "--decoder", "--json"])
        .arg(model)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("inspect --decoder --json prints JSON")
}

#[test]
fn inspect_decoder_json_names_every_part() {
    let j = inspect_json(&common::fixtures().join("decoders/opset24.onnx"));
    assert_eq!(j["hidden_size"], 96);
    assert_eq!(j["num_heads"], 6);
    assert_eq!(j["num_kv_heads"], 2);
    assert_eq!(j["head_size"], 16);
    assert_eq!(j["tied_lm_head"], true);
    assert_eq!(j["embedding"]["table"], "model.embed_tokens.weight");
    assert_eq!(j["final_norm"]["kind"], "rms_normalization");
    assert_eq!(j["lm_head"]["initializer"], "model.embed_tokens.weight");
    assert_eq!(j["lm_head"]["layout"], "nk_transposed");
    let layers = j["layers"].as_array().expect("layers array");
    assert_eq!(layers.len(), 2);
    for (i, l) in layers.iter().enumerate() {
        let a = &l["attention"];
        assert_eq!(a["kind"], "attention");
        assert_eq!(a["is_causal"], true);
        for (role, proj) in [
            ("q_proj", "q_proj"),
            ("k_proj", "k_proj"),
            ("v_proj", "v_proj"),
            ("o_proj", "o_proj"),
        ] {
            assert_eq!(
                a[role]["node"],
                format!("/model/layers.{i}/self_attn/{proj}/MatMul")
            );
            assert_eq!(
                a[role]["initializer"],
                format!("model.layers.{i}.self_attn.{proj}.weight_t")
            );
            assert_eq!(a[role]["layout"], "kn");
        }
        assert_eq!(a["k_proj"]["k"], 96);
        assert_eq!(a["k_proj"]["n"], 32);
        assert_eq!(a["rotary"]["kind"], "rotary_embedding");
        assert_eq!(a["rotary"]["cos"], "/model/rotary_emb/Gather_output_0");
        for role in ["gate_proj", "up_proj", "down_proj"] {
            assert_eq!(
                l["mlp"][role]["node"],
                format!("/model/layers.{i}/mlp/{role}/MatMul")
            );
        }
        assert_eq!(
            l["input_norm"]["node"],
            format!("/model/layers.{i}/input_layernorm/RMSNormalization")
        );
        assert_eq!(
            l["post_attention_norm"]["node"],
            format!("/model/layers.{i}/post_attention_layernorm/RMSNormalization")
        );
    }
    let io = &j["io"];
    assert_eq!(
        io["attention_mask"]["dims"],
        serde_json::json!(["batch_size", "past_seq_len + seq_len"])
    );
    assert_eq!(
        io["position_ids"]["dims"],
        serde_json::json!(["batch_size", "seq_len"])
    );
    assert_eq!(io["input_ids"]["name"], "input_ids");
    assert_eq!(io["past"][1]["key"]["name"], "past_key_values.1.key");
    assert_eq!(
        io["past"][1]["key"]["dims"],
        serde_json::json!(["batch_size", 2, "past_sequence_len", 16])
    );
    assert_eq!(
        io["present"][0]["value"]["dims"],
        serde_json::json!(["batch_size", 2, "past_sequence_len + seq_len", 16])
    );

    let genai = inspect_json(&common::fixtures().join("decoders/genai.onnx"));
    let a = &genai["layers"][1]["attention"];
    assert_eq!(a["kind"], "group_query_attention");
    assert_eq!(
        a["qkv_proj"]["node"],
        "/model/layers.1/attn/qkv_proj/MatMul"
    );
    assert_eq!(a["qkv_split"], serde_json::json!([96, 32, 32]));
    assert!(a.get("q_proj").is_none());
    assert_eq!(
        genai["layers"][1]["input_norm"]["kind"],
        "skip_simplified_layer_normalization"
    );
    assert_eq!(
        genai["layers"][1]["input_norm"]["residual_output"],
        "/model/layers.1/input_layernorm/output_3"
    );
    assert_eq!(genai["tied_lm_head"], false);

    // Without --decoder, inspect prints its usual report.
    let out = Command::new(common::onnxq_bin())
        .args(["inspect", "--json"])
        .arg(common::fixtures().join("decoders/genai.onnx"))
        .output()
        .unwrap();
    let plain: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(plain.get("op_histogram").is_some() && plain.get("layers").is_none());
}
