//! The tiny decoder in its four export forms (fixtures/decoders/, config
//! `TINY_FORMS` in fixtures/fixturegen/weights.py): one set of weights, so the
//! forms compute the same function. See fixtures/README.md for their layouts.
use std::path::PathBuf;

use onnxq::ir::Graph;
use onnxq::llm::{WeightLayout, WeightRef};
use onnxq::runtime::{HostTensor, NamedTensors};

pub const LAYERS: usize = 2;
pub const HEADS: usize = 6;
pub const KV_HEADS: usize = 2;
pub const HEAD_DIM: usize = 16;
pub const VOCAB: usize = 320;
/// Projections per layer that are their own MatMul: q, k, v, o, gate, up, down.
pub const LINEARS_PER_LAYER: usize = 7;

/// (form name, path) of every form, decomposed first (the reference).
pub fn decoder_forms() -> Vec<(&'static str, PathBuf)> {
    ["decomposed", "genai", "opset24", "dynamo"]
        .into_iter()
        .map(|f| {
            (
                f,
                super::fixtures().join("decoders").join(format!("{f}.onnx")),
            )
        })
        .collect()
}

/// MatMuls with a constant weight in `form`: every projection plus the lm_head;
/// genai packs q|k|v into one MatMul.
pub fn weight_matmuls(form: &str) -> usize {
    let per_layer = if form == "genai" {
        LINEARS_PER_LAYER - 2
    } else {
        LINEARS_PER_LAYER
    };
    LAYERS * per_layer + 1
}

/// splitmix64, so inputs are the same on every platform and run.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn token(&mut self) -> i64 {
        (self.next() % VOCAB as u64) as i64
    }

    /// Uniform in [-1, 1).
    pub fn signed(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// Feeds for every form (callers keep the ones a model declares): `ids` [batch,
/// seq] after a cache of `past` positions, an all-ones mask over past + seq,
/// position ids counting from `past`, and the given caches (or random ones).
pub fn decoder_feeds(
    ids: &[i64],
    batch: usize,
    past: usize,
    cache: Option<&NamedTensors>,
    rng: &mut Rng,
) -> NamedTensors {
    let seq = ids.len() / batch;
    let positions: Vec<i64> = (0..batch)
        .flat_map(|_| (past..past + seq).map(|p| p as i64))
        .collect();
    let mut f = vec![
        (
            "input_ids".to_string(),
            HostTensor::from_i64(vec![batch, seq], ids).unwrap(),
        ),
        (
            "attention_mask".to_string(),
            HostTensor::from_i64(vec![batch, past + seq], &vec![1; batch * (past + seq)]).unwrap(),
        ),
        (
            "position_ids".to_string(),
            HostTensor::from_i64(vec![batch, seq], &positions).unwrap(),
        ),
    ];
    for i in 0..LAYERS {
        for kv in ["key", "value"] {
            let t = match cache {
                Some(c) => c
                    .iter()
                    .find(|(n, _)| *n == format!("present.{i}.{kv}"))
                    .map(|(_, t)| t.clone())
                    .expect("cache holds every present output"),
                None => {
                    let n = batch * KV_HEADS * past * HEAD_DIM;
                    let v: Vec<f32> = (0..n).map(|_| rng.signed()).collect();
                    HostTensor::from_f32(vec![batch, KV_HEADS, past, HEAD_DIM], &v).unwrap()
                }
            };
            f.push((format!("past_key_values.{i}.{kv}"), t));
        }
    }
    f
}

/// A fixture, by its path under fixtures/.
pub fn load(rel: &str) -> onnxq::Model {
    onnxq::load(&super::fixtures().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The weight's tensor seen as [K, N] by its layout must be the K and N the map
/// reports: checked against the stored dims, not against the map's own reading.
pub fn assert_weight(
    g: &Graph,
    w: &WeightRef,
    k: usize,
    n: usize,
    layout: WeightLayout,
    what: &str,
) {
    assert_eq!((w.k, w.n), (k, n), "{what} '{}' K/N", w.node);
    assert_eq!(w.layout, layout, "{what} '{}' layout", w.node);
    let v = g
        .find(&w.initializer)
        .unwrap_or_else(|| panic!("{what}: no '{}'", w.initializer));
    let t = g
        .initializer(v)
        .unwrap_or_else(|| panic!("{what}: '{}' is no initializer", w.initializer));
    let dims: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
    match layout {
        WeightLayout::Kn => assert_eq!(dims, [k, n], "{what} dims"),
        WeightLayout::NkTransposed | WeightLayout::NkGemmTransB => {
            assert_eq!(dims, [n, k], "{what} dims")
        }
        WeightLayout::MatMulNBits | WeightLayout::MatMulBnb4 => {
            let block = w.block_size.expect("packed weight has a block size") as usize;
            let bits = w.bits.expect("packed weight has bits") as usize;
            assert_eq!(
                dims,
                [n, k.div_ceil(block), block * bits / 8],
                "{what} packed dims"
            )
        }
    }
    assert_eq!(w.dtype, "float", "{what} dtype");
    // The node named really reads that weight.
    let node = g
        .nodes()
        .find(|(_, nd)| nd.name() == w.node)
        .unwrap_or_else(|| panic!("{what}: no node '{}'", w.node))
        .1;
    assert!(
        matches!(node.op_type.as_str(), "MatMul" | "Gemm" | "MatMulNBits"),
        "{what}: {}",
        node.op_type
    );
}
