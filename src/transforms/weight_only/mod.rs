//! Weight-only passes without calibration: N-bit MatMul weights (MatMulNBits or
//! blocked QDQ, RTN or HQQ), N-bit embedding tables, a tied embedding and lm_head
//! stored once, NF4/FP4 (bnb4), and block scales stored as float16.
pub mod bnb4;
pub mod gather;
pub mod matmul_nbits;
pub mod scales;
pub mod tied;
