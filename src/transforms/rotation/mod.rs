//! Rotations of a decoder's residual stream that keep its float function (QuaRot):
//! norms' scales folded into the following projections, then the residual stream
//! rotated by an orthogonal Q folded into the weights on both sides, and an online
//! Hadamard rotation before each down projection. Weights lose less to N-bit
//! rounding afterwards because rotated rows have fewer outliers.
pub mod quarot;
mod select;
mod tensors;
