//! Numeric kernels on slices: block statistics, RTN, HQQ, NF4/FP4, bit packing.
//! Nothing here knows about graphs; results do not depend on the thread count.
pub mod bnb4;
pub mod hqq;
pub mod nbits;
pub mod pack;

/// An invalid kernel argument (shape or parameter).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct QuantError(pub String);

/// Transposes a row-major [rows, cols] matrix (cache-blocked).
pub fn transpose(w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; w.len()];
    const T: usize = 32;
    for r0 in (0..rows).step_by(T) {
        for c0 in (0..cols).step_by(T) {
            for r in r0..(r0 + T).min(rows) {
                for c in c0..(c0 + T).min(cols) {
                    out[c * rows + r] = w[r * cols + c];
                }
            }
        }
    }
    out
}
