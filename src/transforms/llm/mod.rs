//! LLM fix-ups on a mapped decoder: a KV cache for exports made without one, and
//! rotary caches recomputed for a longer context.
mod kv_cache;
mod rope;

pub use kv_cache::{add_kv_cache, KvCacheOptions, KvCacheReport};
pub use rope::{extend_rope, RopeReport, RopeScaling};
