//! Quantization passes. Graph code only: numerics live in `crate::quant`.
pub mod awq;
pub mod bnb4;
pub mod dynamic;
pub mod gather;
pub mod gptq;
pub mod kernels;
pub mod opset;
pub mod qoperator;
pub mod select;
pub mod smooth_quant;
pub mod static_qdq;
pub mod weight_only;
