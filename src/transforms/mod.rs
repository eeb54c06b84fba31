//! Passes, one folder per family. `common` holds what the families share. Families
//! depend on `common`; `calibrated` also builds on `weight_only` (GPTQ and AWQ emit
//! what `matmul-nbits` emits); no family depends on `int8` or `calibrated`.
pub mod calibrated;
pub mod cleanup;
pub mod common;
pub mod float16;
pub mod int8;
pub mod llm;
pub mod lora;
pub mod precision_plan;
pub mod rotation;
pub mod weight_only;
