//! Dense symmetric positive definite helpers in f64, for GPTQ's inverse Hessian.
//!
//! Matrices are row-major `n × n` slices. Sizes here are the K of a MatMul (≤ a few
//! thousand), so plain cache-friendly loops are enough; work is split over rayon
//! threads by rows where it matters, and every element is computed by one thread in a
//! fixed order, so results do not depend on the thread count.
use rayon::prelude::*;

use super::QuantError;

/// Lower Cholesky factor `L` of `a` (`a = L·Lᵀ`), in place: the lower triangle of
/// `a` becomes `L`, the strict upper triangle is zeroed. Fails with the pivot index
/// when `a` is not positive definite.
pub fn cholesky_lower(a: &mut [f64], n: usize) -> Result<(), QuantError> {
    check(a, n)?;
    for j in 0..n {
        // Row j: a[j][k] for k < j is already L[j][k].
        let rest = &mut a[j * n..];
        let row_j = &mut rest[..n];
        let mut d = row_j[j];
        for &v in &row_j[..j] {
            d -= v * v;
        }
        if d <= 0.0 || !d.is_finite() {
            return Err(QuantError(format!(
                "matrix is not positive definite (pivot {j} is {d:e})"
            )));
        }
        let d = d.sqrt();
        row_j[j] = d;
        row_j[j + 1..].fill(0.0);
        // Rows below j: L[i][j] = (a[i][j] - Σ_k L[i][k]·L[j][k]) / L[j][j].
        let lj = row_j[..j].to_vec();
        let below = &mut rest[n..];
        below.par_chunks_mut(n).for_each(|row_i| {
            let s: f64 = row_i[..j].iter().zip(&lj).map(|(a, b)| a * b).sum();
            row_i[j] = (row_i[j] - s) / d;
        });
    }
    Ok(())
}

/// Inverse of a lower triangular matrix `l` (row-major), as a new lower triangular
/// matrix.
pub fn lower_inverse(l: &[f64], n: usize) -> Vec<f64> {
    // Column j of L⁻¹ solves L·x = e_j by forward substitution; columns are
    // independent, so each task fills whole columns, stored transposed then flipped.
    let mut cols = vec![0f64; n * n];
    cols.par_chunks_mut(n).enumerate().for_each(|(j, x)| {
        x[j] = 1.0 / l[j * n + j];
        for i in j + 1..n {
            let row = &l[i * n..i * n + i];
            let s: f64 = row[j..].iter().zip(&x[j..i]).map(|(a, b)| a * b).sum();
            x[i] = -s / l[i * n + i];
        }
    });
    super::transpose(&cols, n, n)
}

/// Upper Cholesky factor `U` of `a⁻¹` (`a⁻¹ = Uᵀ·U`) for a symmetric positive definite
/// `a`: what GPTQ's error feedback reads row by row.
///
/// With `J` the order-reversing permutation and `L = chol(J·a·J)`, `U = J·L⁻¹·J`:
/// `Uᵀ·U = J·L⁻ᵀ·L⁻¹·J = (J·a·J)⁻¹` conjugated back, and `J·(lower)·J` is upper with a
/// positive diagonal, so it is the Cholesky factor. One factorization and one
/// triangular inverse, no explicit inverse.
pub fn inverse_cholesky_upper(a: &[f64], n: usize) -> Result<Vec<f64>, QuantError> {
    check(a, n)?;
    let mut m: Vec<f64> = (0..n * n)
        .map(|idx| a[(n - 1 - idx / n) * n + (n - 1 - idx % n)])
        .collect();
    cholesky_lower(&mut m, n)?;
    let li = lower_inverse(&m, n);
    drop(m);
    Ok((0..n * n)
        .map(|idx| li[(n - 1 - idx / n) * n + (n - 1 - idx % n)])
        .collect())
}

fn check(a: &[f64], n: usize) -> Result<(), QuantError> {
    if n.checked_mul(n) != Some(a.len()) {
        return Err(QuantError(format!(
            "matrix has {} elements, expected {n}x{n}",
            a.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spd(n: usize) -> Vec<f64> {
        // X·Xᵀ + n·I of a fixed pseudo-random X.
        let x: Vec<f64> = (0..n * n)
            .map(|i| ((i * 7919 % 101) as f64 / 50.0) - 1.0)
            .collect();
        let mut a = vec![0f64; n * n];
        for i in 0..n {
            for j in 0..n {
                a[i * n + j] = (0..n).map(|k| x[i * n + k] * x[j * n + k]).sum::<f64>()
                    + if i == j { n as f64 } else { 0.0 };
            }
        }
        a
    }

    #[test]
    fn upper_factor_of_the_inverse_reproduces_it() {
        let n = 37;
        let a = spd(n);
        let u = inverse_cholesky_upper(&a, n).unwrap();
        // (Uᵀ·U)·a = I.
        let mut inv = vec![0f64; n * n];
        for i in 0..n {
            for j in 0..n {
                inv[i * n + j] = (0..n).map(|k| u[k * n + i] * u[k * n + j]).sum();
            }
        }
        for i in 0..n {
            for j in 0..n {
                let p: f64 = (0..n).map(|k| inv[i * n + k] * a[k * n + j]).sum();
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((p - want).abs() < 1e-9, "({i},{j}) = {p}");
            }
            for j in 0..i {
                assert_eq!(u[i * n + j], 0.0);
            }
        }
    }

    #[test]
    fn indefinite_matrices_are_refused() {
        let mut a = vec![1.0, 2.0, 2.0, 1.0];
        assert!(cholesky_lower(&mut a, 2).is_err());
    }
}
