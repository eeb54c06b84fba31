//! 8-bit passes: dynamic (activations quantized at run time), static QDQ with
//! calibration, SmoothQuant before it, and QOperator folding after it.
pub mod dynamic;
pub mod qoperator;
pub mod smooth_quant;
pub mod static_qdq;
