//! PEFT LoRA adapters for the tiny decoder forms, written in PEFT's own layout
//! (adapter_config.json + adapter_model.safetensors with
//! `base_model.model.model.layers.N.<part>.<proj>.lora_{A,B}.weight`), seeded.
use std::path::Path;

use safetensors::tensor::TensorView;
use safetensors::Dtype;

use super::forms::{Rng, HEAD_DIM, KV_HEADS, LAYERS, VOCAB};

const HIDDEN: usize = 96;
const INTERMEDIATE: usize = 160;

/// (in, out) features of a projection of the forms.
pub fn proj_dims(proj: &str) -> (usize, usize) {
    match proj {
        "q_proj" | "o_proj" => (HIDDEN, HIDDEN),
        "k_proj" | "v_proj" => (HIDDEN, KV_HEADS * HEAD_DIM),
        "gate_proj" | "up_proj" => (HIDDEN, INTERMEDIATE),
        "down_proj" => (INTERMEDIATE, HIDDEN),
        "lm_head" => (HIDDEN, VOCAB),
        other => panic!("no projection {other}"),
    }
}

fn part_of(proj: &str) -> &'static str {
    if proj.ends_with("_proj") && ["q_proj", "k_proj", "v_proj", "o_proj"].contains(&proj) {
        "self_attn"
    } else {
        "mlp"
    }
}

pub struct PeftSpec<'a> {
    pub seed: u64,
    pub r: usize,
    pub alpha: f64,
    pub fp16: bool,
    pub targets: &'a [&'a str],
    /// PEFT's per-module overrides (key: a trailing part of the module path).
    pub rank_pattern: &'a [(&'a str, usize)],
    pub alpha_pattern: &'a [(&'a str, f64)],
    pub use_rslora: bool,
}

/// Writes the adapter directory; A and B uniform in ±0.1 (±0.01 for lm_head; B
/// non-zero, as after training) so the update is of the size of the 0.02-scaled base weights.
pub fn write_peft(dir: &Path, spec: &PeftSpec) {
    std::fs::create_dir_all(dir).unwrap();
    let mut rng = Rng::new(spec.seed);
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    // PEFT names the head `lm_head` (outside the layers).
    let modules = (0..LAYERS).flat_map(|layer| {
        spec.targets
            .iter()
            .filter(|p| **p != "lm_head")
            .map(move |proj| {
                (
                    format!("model.layers.{layer}.{}.{proj}", part_of(proj)),
                    *proj,
                )
            })
    });
    let head = spec
        .targets
        .contains(&"lm_head")
        .then(|| ("lm_head".to_string(), "lm_head"));
    for (module, proj) in modules.chain(head) {
        let r = spec
            .rank_pattern
            .iter()
            .find(|(k, _)| module.ends_with(k))
            .map_or(spec.r, |(_, r)| *r);
        let (k, n) = proj_dims(proj);
        for (which, dims) in [("lora_A", [r, k]), ("lora_B", [n, r])] {
            // The head's update is kept ten times smaller: over 320 logits at the
            // layers' size it would drown what the layer adapters change.
            let size = if proj == "lm_head" { 0.01 } else { 0.1 };
            let vals: Vec<f32> = (0..dims[0] * dims[1])
                .map(|_| size * rng.signed())
                .collect();
            let bytes: Vec<u8> = if spec.fp16 {
                vals.iter()
                    .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                    .collect()
            } else {
                vals.iter().flat_map(|v| v.to_le_bytes()).collect()
            };
            tensors.push((
                format!("base_model.model.{module}.{which}.weight"),
                dims.to_vec(),
                bytes,
            ));
        }
    }
    let dtype = if spec.fp16 { Dtype::F16 } else { Dtype::F32 };
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, d, b)| (n.clone(), TensorView::new(dtype, d.clone(), b).unwrap()))
        .collect();
    let st = safetensors::serialize(views, None).unwrap();
    std::fs::write(dir.join("adapter_model.safetensors"), st).unwrap();
    let obj =
        |kv: Vec<(String, serde_json::Value)>| serde_json::Value::Object(kv.into_iter().collect());
    let config = serde_json::json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": "onnxq/tiny-decoder",
        "r": spec.r,
        "lora_alpha": spec.alpha,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": false,
        "use_rslora": spec.use_rslora,
        "target_modules": spec.targets,
        "rank_pattern": obj(spec.rank_pattern.iter().map(|(k, v)| (k.to_string(), (*v).into())).collect()),
        "alpha_pattern": obj(spec.alpha_pattern.iter().map(|(k, v)| (k.to_string(), (*v).into())).collect()),
    });
    std::fs::write(
        dir.join("adapter_config.json"),
        serde_json::to_string_pretty(&config).unwrap(),
    )
    .unwrap();
}
