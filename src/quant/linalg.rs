//! GPTQ's inverse Hessian factor, in f64 with faer's Cholesky and triangular inverse.
//!
//! Matrices are row-major `n × n` slices of the K of a MatMul (up to ~10⁴). The work
//! is cut by faer into a fixed number of tasks (`SPLIT`) whatever the size of
//! rayon's pool, and each task computes its elements in a fixed order, so results do
//! not depend on the thread count.
use faer::linalg::cholesky::llt::factor::{cholesky_in_place, cholesky_in_place_scratch};
use faer::linalg::triangular_inverse::invert_lower_triangular;
use faer::{MatMut, MatRef, Par};

use super::QuantError;

/// The hand-written factorization faer replaced, behind a benchmark-only feature so a
/// whole GPTQ run can be timed before and after (benches/gptq_awq_speed.sh).
#[cfg(feature = "bench-linalg-baseline")]
#[path = "../../benches/baseline/linalg.rs"]
#[allow(dead_code)]
mod baseline;

/// Tasks faer splits each factorization step into. Fixed rather than taken from
/// rayon's pool, since the split decides the order of floating-point sums: the same
/// model then quantizes to the same bytes on 1, 2 or 64 threads.
const SPLIT: usize = 8;

fn par() -> Par {
    Par::rayon(SPLIT)
}

/// Upper Cholesky factor `U` of `a⁻¹` (`a⁻¹ = Uᵀ·U`) for a symmetric positive definite
/// `a`, row-major: what GPTQ's error feedback reads row by row.
///
/// With `J` the order-reversing permutation and `L = chol(J·a·J)`, `U = J·L⁻¹·J`:
/// `Uᵀ·U = J·L⁻ᵀ·L⁻¹·J = (J·a·J)⁻¹` conjugated back, and `J·(lower)·J` is upper with a
/// positive diagonal, so it is the Cholesky factor. One factorization and one
/// triangular inverse, no explicit inverse; two n×n buffers at most.
pub fn inverse_cholesky_upper(a: &[f64], n: usize) -> Result<Vec<f64>, QuantError> {
    #[cfg(feature = "bench-linalg-baseline")]
    return baseline::inverse_cholesky_upper(a, n).map_err(|e| QuantError(e.0));
    #[cfg(not(feature = "bench-linalg-baseline"))]
    faer_inverse_cholesky_upper(a, n)
}

#[cfg_attr(feature = "bench-linalg-baseline", allow(dead_code))]
fn faer_inverse_cholesky_upper(a: &[f64], n: usize) -> Result<Vec<f64>, QuantError> {
    if n.checked_mul(n) != Some(a.len()) {
        return Err(QuantError(format!(
            "matrix has {} elements, expected {n}x{n}",
            a.len()
        )));
    }
    // J·a·J, column-major, built from a's upper triangle (as read row-major): the
    // factorization reads only the lower one of J·a·J.
    let mut m = vec![0f64; n * n];
    for (r, row) in a.chunks_exact(n.max(1)).enumerate() {
        for (c, &v) in row.iter().enumerate().skip(r) {
            m[(n - 1 - c) * n + (n - 1 - r)] = v;
        }
    }
    let mut scratch = faer::dyn_stack::MemBuffer::new(cholesky_in_place_scratch::<f64>(
        n,
        par(),
        Default::default(),
    ));
    let stack = faer::dyn_stack::MemStack::new(&mut scratch);
    cholesky_in_place(
        MatMut::from_column_major_slice_mut(&mut m, n, n),
        Default::default(),
        par(),
        stack,
        Default::default(),
    )
    .map_err(|e| {
        let faer::linalg::cholesky::llt::factor::LltError::NonPositivePivot { index } = e;
        QuantError(format!(
            "matrix is not positive definite (the factorization fails at row {})",
            n - 1 - index
        ))
    })?;
    // The factor must be finite too: a NaN pivot passes faer's sign test.
    if (0..n).any(|i| !m[i * n + i].is_finite()) {
        return Err(QuantError(
            "matrix is not positive definite (non-finite pivot)".into(),
        ));
    }
    let mut li = vec![0f64; n * n];
    invert_lower_triangular(
        MatMut::from_column_major_slice_mut(&mut li, n, n),
        MatRef::from_column_major_slice(&m, n, n),
        par(),
    );
    drop(m);
    // U[i][j] = L⁻¹[n-1-i][n-1-j]: reversing the column-major buffer gives Uᵀ row-major,
    // so a transpose in place leaves U row-major.
    li.reverse();
    for i in 0..n {
        for j in i + 1..n {
            li.swap(i * n + j, j * n + i);
        }
    }
    Ok(li)
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
        // Small, and large enough for faer's blocked and parallel paths.
        for n in [1, 37, 2 * 64 + 23, 300] {
            upper_factor_reproduces_the_inverse(n);
        }
    }

    fn upper_factor_reproduces_the_inverse(n: usize) {
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
                assert!((p - want).abs() < 1e-9, "n={n} ({i},{j}) = {p}");
            }
            assert!(u[i * n + i] > 0.0);
            for j in 0..i {
                assert_eq!(u[i * n + j], 0.0);
            }
        }
    }

    #[test]
    fn the_result_does_not_depend_on_the_pool_size() {
        // Large enough for faer's parallel GEMM paths to split the work.
        let n = 700;
        let a = spd(n);
        let on = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| inverse_cholesky_upper(&a, n).unwrap())
        };
        let one = on(1);
        assert!(one == on(2) && one == on(5));
    }

    #[test]
    fn indefinite_and_malformed_matrices_are_refused() {
        let err = inverse_cholesky_upper(&[1.0, 2.0, 2.0, 1.0], 2)
            .err()
            .unwrap();
        assert!(err.0.contains("not positive definite"), "{}", err.0);
        let err = inverse_cholesky_upper(&[f64::NAN, 0.0, 0.0, 1.0], 2)
            .err()
            .unwrap();
        assert!(err.0.contains("not positive definite"), "{}", err.0);
        assert!(inverse_cholesky_upper(&[1.0, 0.0, 0.0], 2).is_err());
    }
}
