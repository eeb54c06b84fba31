//! Throughput of the quantization kernels on one 2048x5632 f32 matrix (a
//! TinyLlama MLP weight). `cargo bench --bench quant_kernels` (plain main, no
//! criterion). GB/s counts the f32 input bytes of the kernel (f32 output for
//! dequantize). Wall time is the best of ONNXQ_BENCH_REPS runs (default 5); CPU
//! time is the process's user+system time per run, averaged, which stays
//! meaningful when other jobs share the machine: "1.1e9 @2 cores" = CPU time
//! scaled to the 1.1B-parameter model and divided by 2.
use std::hint::black_box;
use std::time::{Duration, Instant};

use onnxq::quant::bnb4::{self, QuantType};
use onnxq::quant::{convert, hqq, nbits, FloatType, QuantParams};

const K: usize = 2048;
const N: usize = 5632;

fn weights() -> Vec<f32> {
    let mut s = 0x2545_F491_4F6C_DD1Du64;
    (0..K * N)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            // Sum of uniforms: roughly Gaussian, σ ≈ 0.02.
            let u = (s & 0xFFFF) as f32 + ((s >> 16) & 0xFFFF) as f32 + ((s >> 32) & 0xFFFF) as f32;
            (u / 65536.0 - 1.5) * 0.04
        })
        .collect()
}

/// User + system CPU seconds of this process so far.
fn cpu_seconds() -> f64 {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; RUSAGE_SELF is always valid.
    let ru = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr());
        ru.assume_init()
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Runs and reports kernels whose name contains ONNXQ_BENCH_ONLY (all by default).
struct Bench {
    reps: usize,
    only: String,
}

impl Bench {
    fn run<T>(&self, name: &str, bytes: usize, reps: usize, mut f: impl FnMut() -> T) {
        if !name.contains(&self.only) {
            return;
        }
        let reps = reps.min(self.reps).max(1);
        black_box(f()); // warm-up: page in the input, size the allocator
        let mut best = Duration::MAX;
        let cpu0 = cpu_seconds();
        for _ in 0..reps {
            let t = Instant::now();
            black_box(f());
            best = best.min(t.elapsed());
        }
        let cpu = (cpu_seconds() - cpu0) / reps as f64;
        let secs = best.as_secs_f64();
        let per_cpu_s = (K * N) as f64 / cpu;
        println!(
            "{name:<44} {:>8.2} ms {:>6.2} GB/s | cpu {:>7.2} ms {:>5.0} Mweights/cpu-s | 1.1e9 @2 cores {:>5.1} s",
            secs * 1e3,
            bytes as f64 / secs / 1e9,
            cpu * 1e3,
            per_cpu_s / 1e6,
            1.1e9 / per_cpu_s / 2.0
        );
    }
}

fn main() {
    let b = Bench {
        reps: std::env::var("ONNXQ_BENCH_REPS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(5),
        only: std::env::var("ONNXQ_BENCH_ONLY").unwrap_or_default(),
    };
    let w = weights();
    let input = w.len() * 4;
    println!(
        "{K}x{N} f32 ({:.1} MB), {} rayon threads, best of {}",
        input as f64 / 1e6,
        rayon::current_num_threads(),
        b.reps
    );
    let nk = onnxq::quant::transpose(&w, K, N);
    let all = usize::MAX;

    for (bits, bs, sym) in [
        (4u8, 32usize, true),
        (4, 32, false),
        (4, 128, true),
        (8, 32, false),
        (2, 32, false),
    ] {
        let p = QuantParams::new(bits, bs, sym).expect("params");
        let kind = if sym { "sym" } else { "asym" };
        let name = format!("rtn quantize_kn {bits}-bit b{bs} {kind}");
        b.run(&name, input, all, || {
            nbits::quantize_kn(&w, K, N, &p).expect("rtn")
        });
        if bits == 4 && bs == 32 {
            let name = format!("rtn quantize_rows {bits}-bit b{bs} {kind}");
            b.run(&name, input, all, || {
                nbits::quantize_rows(&nk, N, K, &p).expect("rtn")
            });
        }
    }
    let ps = QuantParams::new(4, 32, true).expect("params");
    let p = QuantParams::new(4, 32, false).expect("params");
    b.run(
        "rtn quantize_kn 4-bit b32 asym, f16 scales",
        input,
        all,
        || nbits::quantize_kn_as(&w, K, N, &p, FloatType::F16).expect("rtn"),
    );

    let q = nbits::quantize_kn(&w, K, N, &p).expect("rtn");
    b.run("dequantize_rows 4-bit (f32 out)", input, all, || {
        q.dequantize_rows()
    });
    b.run("dequantize_kn 4-bit (f32 out)", input, all, || {
        q.dequantize_kn()
    });
    b.run("to_qdq 4-bit asym", input, all, || q.to_qdq());

    for qt in [QuantType::Nf4, QuantType::Fp4] {
        b.run(&format!("bnb4 quantize_kn {qt:?} b64"), input, all, || {
            bnb4::quantize_kn(&w, K, N, 64, qt).expect("bnb4")
        });
    }
    b.run("bnb4 quantize_nk Nf4 b64", input, all, || {
        bnb4::quantize_nk(&nk, N, K, 64, QuantType::Nf4).expect("bnb4")
    });

    b.run("hqq quantize_kn 4-bit b32", input, 2, || {
        hqq::quantize_kn(&w, K, N, &p).expect("hqq")
    });

    // GPTQ at the 1.1B model's shapes: H of a 512-token window (K = 2048 and the
    // down projection's 5632), and one solve of this [2048, 5632] weight.
    let rows = 512;
    for k in [K, N] {
        let x = &w[..rows * k];
        b.run(
            &format!("hessian add {rows} rows K={k}"),
            x.len() * 4,
            3,
            || {
                let mut acc = onnxq::calib::hessian::Hessian::new(k);
                acc.add(x);
                acc
            },
        );
    }
    let mut acc = onnxq::calib::hessian::Hessian::new(K);
    acc.add(&w[..rows * 2 * K]);
    let hk = acc.finish();
    let opts = onnxq::quant::gptq::GptqOptions::default();
    let mut acc = onnxq::calib::hessian::Hessian::new(N);
    acc.add(&w[..rows * 2 * N]);
    let hn = acc.finish();
    b.run(
        &format!("gptq factor K={N} (Cholesky + inverse)"),
        N * N * 8,
        1,
        || onnxq::quant::gptq::factor(&hn, N, &opts).expect("factor"),
    );
    b.run("gptq quantize_kn 4-bit b32 sym", input, 1, || {
        onnxq::quant::gptq::quantize_kn(&w, K, N, &hk, &ps, FloatType::F32, &opts).expect("gptq")
    });

    b.run("transpose f32", input, all, || {
        onnxq::quant::transpose(&w, K, N)
    });
    let h = convert::f32_to_f16_le_bytes(&w);
    b.run("f16 bytes -> f32 (f32 out)", input, all, || {
        convert::f16_le_bytes_to_f32(&h).expect("f16")
    });
    b.run("f32 -> f16 bytes", input, all, || {
        convert::f32_to_f16_le_bytes(&w)
    });
    b.run("f32 -> bf16 bytes", input, all, || {
        convert::f32_to_bf16_le_bytes(&w)
    });
}
