//! LLM fix-ups on a mapped decoder: a KV cache for exports made without one,
//! rotary caches recomputed for a longer context, and the onnxruntime-genai form.
mod genai;
mod genai_config;
mod kv_cache;
mod rope;
mod rotary_form;

pub use genai::{
    to_genai, GenaiConfig, GenaiDecoder, GenaiReport, DEFAULT_CONTEXT_LENGTH, GENAI_KEYS,
};
pub use genai_config::{genai_config, SpecialTokens, TOKENIZER_FILES};
pub use kv_cache::{add_kv_cache, KvCacheOptions, KvCacheReport};
pub use rope::{extend_rope, RopeReport, RopeScaling, Yarn};
pub use rotary_form::{convert_rotary, RotaryForm, RotaryFormReport};
