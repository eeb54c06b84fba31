//! GPTQ's inverse Hessian factor (`quant::linalg::inverse_cholesky_upper`) on one K×K
//! Hessian-like matrix: faer (src/quant/linalg.rs) or the hand-written blocked code it
//! replaced (benches/baseline/linalg.rs). Driven by benches/linalg.sh, one process per
//! run so that each reports its own peak memory:
//!
//!   ONNXQ_LINALG=faer|baseline|compare ONNXQ_LINALG_K=5632 cargo bench --bench linalg
//!
//! `compare` runs both on the same matrix and prints the largest difference of the
//! factors, relative to the largest entry. Timings are the best of ONNXQ_BENCH_REPS
//! (default 3) runs, with the process's CPU time per run beside them.
#[path = "baseline/linalg.rs"]
#[allow(dead_code)]
mod baseline;

use std::time::Instant;

/// User + system CPU seconds of this process so far.
fn cpu_seconds() -> f64 {
    let ru = rusage();
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn rusage() -> libc::rusage {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; RUSAGE_SELF is always valid.
    unsafe {
        libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr());
        ru.assume_init()
    }
}

/// Peak resident memory of this process so far, MiB.
fn peak_mib() -> f64 {
    rusage().ru_maxrss as f64 / 1024.0
}

/// `H = X·Xᵀ / T + 0.01·mean(diag)·I` for a seeded X of K rows and T = K/2 "tokens"
/// with a few loud channels, as GPTQ damps a calibration Hessian: symmetric positive
/// definite, rank-deficient before the damping, so the factorization sees the
/// conditioning it meets in practice. Built in column chunks to keep X small.
fn hessian(k: usize) -> Vec<f64> {
    let t = k / 2;
    let chunk = 256;
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let mut h = vec![0f64; k * k];
    let mut x = vec![0f64; k * chunk];
    let mut done = 0;
    while done < t {
        let c = chunk.min(t - done);
        for (i, v) in x[..k * c].iter_mut().enumerate() {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let u = (s >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
            let row = i / c;
            *v = if row % 97 == 5 { 20.0 * u } else { u };
        }
        // SAFETY: X is k×c row-major (stride c), H is k×k (stride k), disjoint.
        unsafe {
            matrixmultiply::dgemm(
                k,
                c,
                k,
                1.0 / t as f64,
                x.as_ptr(),
                c as isize,
                1,
                x.as_ptr(),
                1,
                c as isize,
                1.0,
                h.as_mut_ptr(),
                k as isize,
                1,
            );
        }
        done += c;
    }
    let mean = (0..k).map(|i| h[i * k + i]).sum::<f64>() / k as f64;
    for i in 0..k {
        h[i * k + i] += 0.01 * mean;
    }
    h
}

fn run(which: &str, h: &[f64], k: usize) -> Vec<f64> {
    match which {
        "faer" => onnxq::quant::linalg::inverse_cholesky_upper(h, k)
            .unwrap_or_else(|e| panic!("faer: {}", e.0)),
        "baseline" => {
            baseline::inverse_cholesky_upper(h, k).unwrap_or_else(|e| panic!("baseline: {}", e.0))
        }
        other => panic!("ONNXQ_LINALG={other}: expected faer, baseline or compare"),
    }
}

fn main() {
    let which = std::env::var("ONNXQ_LINALG").unwrap_or_else(|_| "faer".into());
    let k: usize = std::env::var("ONNXQ_LINALG_K")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2048);
    let reps: usize = std::env::var("ONNXQ_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1);
    let h = hessian(k);
    let before = peak_mib();
    if which == "compare" {
        let a = run("baseline", &h, k);
        let b = run("faer", &h, k);
        let big = a.iter().fold(0f64, |m, v| m.max(v.abs()));
        let diff = a
            .iter()
            .zip(&b)
            .fold(0f64, |m, (x, y)| m.max((x - y).abs()));
        println!(
            "K={k} compare: max |faer - baseline| / max |U| = {:.2e}",
            diff / big
        );
        return;
    }
    let mut best = f64::INFINITY;
    let cpu0 = cpu_seconds();
    let mut keep = 0f64;
    for _ in 0..reps {
        let t = Instant::now();
        let u = run(&which, &h, k);
        best = best.min(t.elapsed().as_secs_f64());
        keep += u[0] + u[k * k - 1];
    }
    let cpu = (cpu_seconds() - cpu0) / reps as f64;
    println!(
        "K={k} {which:8} best {best:8.3} s  cpu {cpu:8.3} s/run  peak RSS {:7.0} MiB, of which \
         the factorization {:6.0} MiB  ({} rayon threads, best of {reps}, check {keep:.3e})",
        peak_mib(),
        peak_mib() - before,
        rayon::current_num_threads()
    );
}
