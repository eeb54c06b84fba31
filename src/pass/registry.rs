//! The one explicit list of passes a recipe can name.
use serde::de::DeserializeOwned;

use super::Pass;
use crate::error::{Error, Result};
use crate::transforms::calibrated::{awq, gptq, mixed};
use crate::transforms::cleanup::RemoveDead;
use crate::transforms::int8::{dynamic, qoperator, smooth_quant, static_qdq};
use crate::transforms::rotation::quarot;
use crate::transforms::weight_only::{bnb4, gather, matmul_nbits as weight_only, scales, tied};

/// (name, config keys, what it does).
pub const PASSES: &[(&str, &[&str], &str)] = &[
    (
        "matmul-nbits",
        weight_only::WEIGHT_ONLY_KEYS,
        "weight-only N-bit MatMul/Gemm weights (MatMulNBits or blocked QDQ; RTN or HQQ)",
    ),
    (
        "gptq",
        gptq::GPTQ_KEYS,
        "calibrated weight-only N-bit MatMul/Gemm weights (GPTQ error feedback, MatMulNBits)",
    ),
    (
        "mixed-precision",
        mixed::MIXED_KEYS,
        "choose each weight's bits and block size under a size budget from its calibrated output error (annotates nodes for the quantizer that follows)",
    ),
    (
        "precision-plan",
        crate::transforms::precision_plan::PLAN_KEYS,
        "set each named node's precision (intB/bS or float) for the quantizer that follows, as mixed-precision would (the accuracy tuning loop's plan)",
    ),
    (
        "awq",
        awq::AWQ_KEYS,
        "activation-aware per-channel weight scaling before N-bit quantization (AWQ), folded into the producer",
    ),
    (
        "quarot",
        quarot::QUAROT_KEYS,
        "rotate a decoder's residual stream by a seeded randomized Hadamard (QuaRot): norms fused, rotations folded into the weights, an online Hadamard before down_proj; the float function is unchanged",
    ),
    (
        "tied-embedding",
        tied::TIED_KEYS,
        "a decoder's tied embedding and lm_head as one shared N-bit table (MatMulNBits + GatherBlockQuantized)",
    ),
    (
        "gather-block-quantized",
        gather::GATHER_KEYS,
        "N-bit embedding tables (GatherBlockQuantized)",
    ),
    (
        scales::NAME,
        scales::SCALE_TYPE_KEYS,
        "MatMulNBits/GatherBlockQuantized float32 block scales stored as float16 behind a Cast (half the scale bytes; ONNX Runtime folds the Cast at load)",
    ),
    (
        "bnb4",
        bnb4::BNB4_KEYS,
        "NF4/FP4 MatMul weights (MatMulBnb4)",
    ),
    (
        "int8-dynamic",
        dynamic::DYNAMIC_KEYS,
        "8-bit weights, activations quantized at run time (MatMulInteger/ConvInteger)",
    ),
    (
        "int8-static-qdq",
        static_qdq::STATIC_KEYS,
        "calibrated 8/16-bit activations and 8-bit weights as QuantizeLinear/DequantizeLinear pairs",
    ),
    (
        "int8-qoperator",
        qoperator::QOPERATOR_KEYS,
        "fold QDQ units into integer ops (QLinearConv, QLinearMatMul, QGemm, QLinearAdd, ...)",
    ),
    (
        "smooth-quant",
        smooth_quant::SMOOTH_QUANT_KEYS,
        "migrate activation outliers into MatMul weights (SmoothQuant), folded into the producer",
    ),
    (
        "genai-decoder",
        crate::transforms::llm::GENAI_KEYS,
        "a decoder in onnxruntime-genai's form: GroupQueryAttention with rotary inside, (Skip)SimplifiedLayerNormalization, a KV cache added when missing",
    ),
    (
        "float16",
        crate::transforms::float16::FLOAT16_KEYS,
        "float32 weights and activations to float16 (or bfloat16), as onnxruntime's float16 converter: blocked ops stay float32 with Casts at the region boundaries, IO types kept",
    ),
    (
        "remove-dead",
        &[],
        "remove nodes and initializers no output depends on",
    ),
];

fn config<T: DeserializeOwned>(table: toml::Table) -> Result<T> {
    toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| Error::invalid(e.message().to_string()))
}

/// Builds pass `name` from its config table.
pub fn build(name: &str, table: toml::Table) -> Result<Box<dyn Pass>> {
    let keys = PASSES.iter().find(|p| p.0 == name).map_or(&[][..], |p| p.1);
    build_checked(name, table).map_err(|e| match e {
        // serde names the unknown key; add the closest known one.
        Error::Invalid(m) if m.contains("unknown field `") => {
            let key = m.split('`').nth(1).unwrap_or_default().to_string();
            Error::Invalid(format!(
                "{m}{}",
                crate::error::did_you_mean(&key, keys.iter().copied())
            ))
        }
        e => e,
    })
}

fn build_checked(name: &str, table: toml::Table) -> Result<Box<dyn Pass>> {
    Ok(match name {
        "matmul-nbits" => Box::new(weight_only::WeightOnly::new(config(table)?)?),
        "gptq" => Box::new(gptq::Gptq::new(config(table)?)?),
        "awq" => Box::new(awq::Awq::new(config(table)?)?),
        "mixed-precision" => Box::new(mixed::Mixed::new(config(table)?)?),
        "precision-plan" => Box::new(crate::transforms::precision_plan::PrecisionPlan::new(
            config(table)?,
        )?),
        "quarot" => Box::new(quarot::Quarot::new(config(table)?)?),
        "gather-block-quantized" => Box::new(gather::GatherBlockQuantized::new(config(table)?)?),
        "tied-embedding" => Box::new(tied::TiedEmbedding::new(config(table)?)?),
        "bnb4" => Box::new(bnb4::Bnb4::new(config(table)?)?),
        scales::NAME => Box::new(scales::ScaleTypePass::new(config(table)?)?),
        "int8-dynamic" => Box::new(dynamic::Dynamic::new(config(table)?)?),
        "int8-static-qdq" => Box::new(static_qdq::StaticQdq::new(config(table)?)?),
        "int8-qoperator" => Box::new(qoperator::QOperator {
            config: config(table)?,
        }),
        "smooth-quant" => Box::new(smooth_quant::SmoothQuant::new(config(table)?)?),
        "genai-decoder" => Box::new(crate::transforms::llm::GenaiDecoder::new(config(table)?)?),
        "float16" => Box::new(crate::transforms::float16::Float16::new(config(table)?)?),
        "remove-dead" => {
            let _: crate::transforms::cleanup::RemoveDeadConfig = config(table)?;
            Box::new(RemoveDead)
        }
        _ => {
            let names: Vec<&str> = PASSES.iter().map(|p| p.0).collect();
            return Err(Error::invalid(format!(
                "unknown pass '{name}'{} (valid: {})",
                crate::error::did_you_mean(name, names.iter().copied()),
                names.join(", ")
            )));
        }
    })
}

/// Whether pass `name` has a config key `key`.
pub fn accepts(name: &str, key: &str) -> bool {
    PASSES
        .iter()
        .any(|(n, keys, _)| *n == name && keys.contains(&key))
}
