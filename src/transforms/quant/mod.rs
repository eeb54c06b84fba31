//! Quantization passes. Graph code only: numerics live in `crate::quant`.
pub mod bnb4;
pub mod gather;
pub mod kernels;
pub mod opset;
pub mod select;
pub mod weight_only;
