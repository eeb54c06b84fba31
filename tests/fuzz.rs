//! A fuzzing harness on stable Rust, run for a bounded time (ONNXQ_FUZZ_SECS, default
//! 10; CI may give it up to 120): seeded mutations of real model bytes fed to the
//! loader, and generated small graphs (odd shapes, NaN/Inf/zero/huge weights, several
//! weight paths) fed to every pass of src/pass/registry.rs. Every input must end in a
//! model or a typed error: a panic is caught, its input written under
//! target/fuzz-failures/ and reported; an input that runs longer than
//! ONNXQ_FUZZ_HANG_SECS (default 60) is reported as a hang, and a single allocation
//! over ONNXQ_FUZZ_MAX_ALLOC_MB (default 1024; every fixture needs far less) as an
//! unbounded one. The same seed (ONNXQ_FUZZ_SEED) replays the same inputs. The
//! long-run target is fuzz/ (cargo-fuzz).
mod common;
mod fuzzgen;

use std::alloc::{GlobalAlloc, Layout, System};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fuzzgen::{mutate, random_config, random_model, Draw, SplitMix as Rng};
use onnxq::pass::{registry, run_pipeline, PassCx};

/// The system allocator, refusing single allocations over a limit. A refused
/// allocation aborts the process (Rust's alloc-error handler), so before refusing it
/// writes the input being loaded to a file opened in advance: allocating or
/// formatting inside the allocator is not possible.
struct Capped;

static LIMIT: AtomicUsize = AtomicUsize::new(usize::MAX);
static INPUT_PTR: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
static INPUT_LEN: AtomicUsize = AtomicUsize::new(0);
static INPUT_FD: AtomicI32 = AtomicI32::new(-1);

const OVERSIZED: &[u8] = b"\nfuzz: an allocation over ONNXQ_FUZZ_MAX_ALLOC_MB; the loader input \
(if the loader was running) is in target/fuzz-failures/oversized-input.onnx\n";

unsafe impl GlobalAlloc for Capped {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > LIMIT.load(Ordering::Relaxed) {
            report_oversized();
            return std::ptr::null_mut();
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > LIMIT.load(Ordering::Relaxed) {
            report_oversized();
            return std::ptr::null_mut();
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

fn report_oversized() {
    let fd = INPUT_FD.load(Ordering::Relaxed);
    let ptr = INPUT_PTR.load(Ordering::Relaxed);
    let len = INPUT_LEN.load(Ordering::Relaxed);
    // SAFETY: plain writes of live buffers: the worker keeps the input alive while
    // its pointer is published, and OVERSIZED is static.
    unsafe {
        if fd >= 0 && !ptr.is_null() {
            libc::ftruncate(fd, 0);
            libc::pwrite(fd, ptr as *const libc::c_void, len, 0);
        }
        libc::write(
            2,
            OVERSIZED.as_ptr() as *const libc::c_void,
            OVERSIZED.len(),
        );
    }
}

#[global_allocator]
static ALLOC: Capped = Capped;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Real model bytes to mutate, each with the folder its external data lives in.
fn seeds() -> Vec<(PathBuf, Vec<u8>)> {
    let f = common::fixtures();
    let mut paths = vec![
        f.join("mlp.onnx"),
        f.join("cnn.onnx"),
        f.join("roundtrip.onnx"),
        f.join("llama-decomposed.onnx"),
        f.join("llama-genai-kv.onnx"),
        f.join("llama-attention23-kv.onnx"),
        f.join("external/model.onnx"),
    ];
    let bad = common::repo().join("tests/bad-inputs/lowering");
    if let Ok(rd) = std::fs::read_dir(&bad) {
        let mut more: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        more.sort();
        paths.extend(more);
    }
    paths
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p.parent().unwrap().to_path_buf(), bytes)
        })
        .collect()
}

/// Where failing inputs are written, to replay them.
fn failures_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| common::repo().join("target"));
    target.join("fuzz-failures")
}

/// The panic message of a caught panic.
fn message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(non-string panic)".into())
}

struct Tally {
    loads: u64,
    loaded_ok: u64,
    pass_runs: u64,
    pass_ok: u64,
}

/// One iteration: a mutated seed through the loader, and every few iterations a
/// generated graph through one pass. Returns a failure description.
fn one(
    rng: &mut Rng,
    seeds: &[(PathBuf, Vec<u8>)],
    iter: u64,
    tally: &mut Tally,
) -> Option<String> {
    let (dir, seed) = rng.pick(seeds);
    let (_, other) = rng.pick(seeds);
    let input = mutate(rng, seed, other);
    tally.loads += 1;
    INPUT_LEN.store(input.len(), Ordering::Relaxed);
    INPUT_PTR.store(input.as_ptr() as *mut u8, Ordering::Relaxed);
    let r = catch_unwind(AssertUnwindSafe(|| {
        onnxq::io::from_bytes_in(bytes::Bytes::from(input.clone()), dir).map(|m| {
            // What a loaded model goes through next: the printer and a re-save.
            let _ = onnxq::io::to_bytes(&m);
            let _ = onnxq::ir::print::model_to_string(&m);
        })
    }));
    INPUT_PTR.store(std::ptr::null_mut(), Ordering::Relaxed);
    match r {
        Err(p) => {
            let path = failures_dir().join(format!("load-{iter}.onnx"));
            let _ = std::fs::create_dir_all(failures_dir());
            let _ = std::fs::write(&path, &input);
            return Some(format!(
                "loader panicked ({}); input written to {} (external data relative to {})",
                message(&*p),
                path.display(),
                dir.display()
            ));
        }
        Ok(Ok(())) => tally.loaded_ok += 1,
        Ok(Err(_)) => {}
    }
    if iter.is_multiple_of(16) {
        let passes = registry::PASSES;
        let (name, _, _) = passes[(iter / 16) as usize % passes.len()];
        let mut model = random_model(rng);
        let config = random_config(rng, name);
        let described = format!(
            "{name} with {config:?} on\n{}",
            onnxq::ir::print::model_to_string(&model)
        );
        tally.pass_runs += 1;
        let r = catch_unwind(AssertUnwindSafe(|| {
            let pass = registry::build(name, config)?;
            let mut cx = PassCx {
                progress: false,
                seed: iter,
            };
            run_pipeline(&mut model, &[pass], &mut cx)?;
            onnxq::io::to_bytes(&model).map(|_| ())
        }));
        match r {
            Err(p) => {
                let path = failures_dir().join(format!("pass-{iter}.txt"));
                let _ = std::fs::create_dir_all(failures_dir());
                let _ = std::fs::write(&path, &described);
                return Some(format!(
                    "pass {name} panicked ({}); model and config written to {}",
                    message(&*p),
                    path.display()
                ));
            }
            Ok(Ok(())) => tally.pass_ok += 1,
            Ok(Err(_)) => {}
        }
    }
    None
}

#[test]
fn the_loader_and_every_pass_survive_fuzzed_inputs() {
    let budget = Duration::from_secs(env_u64("ONNXQ_FUZZ_SECS", 10));
    let hang = Duration::from_secs(env_u64("ONNXQ_FUZZ_HANG_SECS", 60));
    let seed = env_u64("ONNXQ_FUZZ_SEED", 22);
    let seeds = Arc::new(seeds());
    std::fs::create_dir_all(failures_dir()).unwrap();
    let oversized = std::fs::File::create(failures_dir().join("oversized-input.onnx")).unwrap();
    // The file stays open for the allocator to write into; closed with the process.
    INPUT_FD.store(
        std::os::fd::IntoRawFd::into_raw_fd(oversized),
        Ordering::Relaxed,
    );
    LIMIT.store(
        (env_u64("ONNXQ_FUZZ_MAX_ALLOC_MB", 1024) as usize).saturating_mul(1 << 20),
        Ordering::Relaxed,
    );
    // A watchdog: the worker bumps `progress` after each input; no bump within
    // `hang` is a hang (the worker cannot be stopped, so the test fails from here).
    let progress = Arc::new(AtomicU64::new(0));
    let result: Arc<Mutex<Option<Result<Tally, String>>>> = Arc::new(Mutex::new(None));
    let worker = {
        let (seeds, progress, result) = (seeds.clone(), progress.clone(), result.clone());
        std::thread::spawn(move || {
            let start = Instant::now();
            let mut rng = Rng(seed);
            let mut tally = Tally {
                loads: 0,
                loaded_ok: 0,
                pass_runs: 0,
                pass_ok: 0,
            };
            let mut failures = Vec::new();
            let mut iter = 0u64;
            while start.elapsed() < budget && failures.len() < 10 {
                if let Some(f) = one(&mut rng, &seeds, iter, &mut tally) {
                    failures.push(f);
                }
                iter += 1;
                progress.store(iter, Ordering::Relaxed);
            }
            *result.lock().unwrap() = Some(if failures.is_empty() {
                Ok(tally)
            } else {
                Err(failures.join("\n\n"))
            });
        })
    };
    let mut last = (0u64, Instant::now());
    loop {
        std::thread::sleep(Duration::from_millis(200));
        if worker.is_finished() {
            break;
        }
        let now = progress.load(Ordering::Relaxed);
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > hang {
            panic!(
                "input {now} (seed {seed}) ran over {hang:?}: a hang; replay with \
                 ONNXQ_FUZZ_SEED={seed}"
            );
        }
    }
    worker.join().unwrap();
    let outcome = result.lock().unwrap().take().unwrap();
    match outcome {
        Ok(t) => {
            eprintln!(
                "fuzz: {} loader inputs ({} loaded), {} pass runs ({} succeeded) in {budget:?}, seed {seed}",
                t.loads, t.loaded_ok, t.pass_runs, t.pass_ok
            );
            assert!(t.loads > 0 && t.pass_runs > 0);
        }
        Err(f) => panic!("fuzzing found failures (seed {seed}):\n{f}"),
    }
}
