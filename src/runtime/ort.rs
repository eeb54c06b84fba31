//! ONNX Runtime through the `ort` crate, loaded at run time (load-dynamic).
//!
//! The library is looked up in this order: `ORT_DYLIB_PATH`; the onnxruntime wheel
//! of `$ONNXQ_PYTHON`; of a `.venv` in a checkout the binary runs from; of `python3`
//! (`<package>/capi/libonnxruntime.so*`). Its version is read before `ort` loads it,
//! and anything but 1.32.x is refused with an error saying how to get the right one.
//! One library per process: `ort` keeps the first one it loads.
use std::ffi::CStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use ort::memory::Allocator;
use ort::session::{Session as OrtSessionInner, SessionInputValue};
use ort::value::{DynTensor, DynTensorValueType, DynValue, Tensor, TensorElementType, ValueType};

use super::check::order_feeds;
use super::{model_label, HostTensor, NamedTensors, RuntimeError, ORT_SUPPORTED};
use crate::error::Result;
use crate::ir::{DType, IoSpec};

pub const NAME: &str = "onnxruntime";

/// The loaded library and the environment every session shares.
pub struct OrtEnv {
    env: ort::environment::Environment,
    pub path: PathBuf,
    pub version: String,
}

static ENV: Mutex<Option<Arc<OrtEnv>>> = Mutex::new(None);

/// Where the library would be loaded from, without loading it.
pub fn find_library() -> std::result::Result<PathBuf, RuntimeError> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            return Err(RuntimeError::OrtLoad {
                path: p,
                reason: "ORT_DYLIB_PATH names a file that does not exist".into(),
            });
        }
        return Ok(p);
    }
    let mut searched = vec!["ORT_DYLIB_PATH (unset)".to_string()];
    for py in pythons() {
        if let Some(lib) = library_of_python(&py) {
            return Ok(lib);
        }
        searched.push(format!("onnxruntime of {}", py.display()));
    }
    Err(RuntimeError::OrtNotFound {
        searched: searched.join(", "),
    })
}

/// Pythons to ask for an onnxruntime wheel, most specific first.
fn pythons() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = std::env::var_os("ONNXQ_PYTHON").filter(|p| !p.is_empty()) {
        out.push(PathBuf::from(p));
    }
    // A binary (or test) built in a checkout lives under <repo>/target/...
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1) {
            let py = dir.join(".venv/bin/python");
            if py.exists() && dir.join("Cargo.toml").is_file() {
                out.push(py);
                break;
            }
        }
    }
    out.push(PathBuf::from("python3"));
    out
}

/// The library in the onnxruntime package `python` imports, if any.
fn library_of_python(python: &Path) -> Option<PathBuf> {
    // A venv python: look at its site-packages directly (no process start).
    if let Some(venv) = python
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .and_then(Path::parent)
    {
        if let Ok(rd) = std::fs::read_dir(venv.join("lib")) {
            let mut libs: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
            libs.sort();
            for l in libs {
                if let Some(lib) = library_in(&l.join("site-packages/onnxruntime/capi")) {
                    return Some(lib);
                }
            }
        }
    }
    let out = Command::new(python)
        .args([
            "-c",
            "import importlib.util as u; s = u.find_spec('onnxruntime'); \
             print(s.submodule_search_locations[0] if s and s.submodule_search_locations else '')",
        ])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let pkg = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if pkg.is_empty() {
        return None;
    }
    library_in(&Path::new(&pkg).join("capi"))
}

fn library_in(capi: &Path) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(capi)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let n = p
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            n.starts_with("libonnxruntime.so")
                || (n.starts_with("libonnxruntime") && n.ends_with(".dylib"))
                || n == "onnxruntime.dll"
        })
        .collect();
    found.sort();
    found.into_iter().next()
}

/// The version string the library reports (e.g. "1.32.0").
pub fn library_version(path: &Path) -> std::result::Result<String, RuntimeError> {
    let load_err = |reason: String| RuntimeError::OrtLoad {
        path: path.to_path_buf(),
        reason,
    };
    // Safety: loading runs the library's initialisers; this is the library the
    // user pointed us at (or the pip wheel's), the same one `ort` loads next.
    let lib = unsafe { libloading::Library::new(path) }.map_err(|e| load_err(e.to_string()))?;
    let get_base: libloading::Symbol<unsafe extern "system" fn() -> *const ort::sys::OrtApiBase> =
        unsafe { lib.get(b"OrtGetApiBase") }
            .map_err(|_| load_err("no OrtGetApiBase symbol: not an ONNX Runtime library".into()))?;
    // Safety: OrtGetApiBase takes no arguments and returns a static table.
    let base = unsafe { get_base() };
    if base.is_null() {
        return Err(load_err("OrtGetApiBase returned null".into()));
    }
    // Safety: GetVersionString returns a static NUL-terminated string.
    let v = unsafe { CStr::from_ptr(((*base).GetVersionString)()) };
    Ok(v.to_string_lossy().into_owned())
}

/// Finds, checks and loads ONNX Runtime (once per process).
pub fn environment() -> std::result::Result<Arc<OrtEnv>, RuntimeError> {
    let mut slot = ENV.lock().unwrap_or_else(|p| p.into_inner());
    let path = find_library()?;
    if let Some(env) = slot.as_ref() {
        if same_file(&env.path, &path) {
            return Ok(env.clone());
        }
        return Err(RuntimeError::OrtReloaded {
            loaded: env.path.clone(),
            wanted: path,
        });
    }
    let version = library_version(&path)?;
    if !version.starts_with(&format!("{ORT_SUPPORTED}.")) {
        return Err(RuntimeError::OrtVersion {
            path,
            found: version,
        });
    }
    let env = ort::init_from(&path)
        .map_err(|e| RuntimeError::OrtLoad {
            path: path.clone(),
            reason: e.to_string(),
        })?
        .with_name("onnxq")
        .with_telemetry(false)
        .build()
        .map_err(|e| RuntimeError::OrtLoad {
            path: path.clone(),
            reason: e.to_string(),
        })?;
    let env = Arc::new(OrtEnv { env, path, version });
    *slot = Some(env.clone());
    Ok(env)
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// Whether ONNX Runtime can be used in this process (found, right version, loads).
pub fn available() -> bool {
    environment().is_ok()
}

pub struct OrtRuntime {
    env: Arc<OrtEnv>,
    threads: usize,
    config: Vec<(String, String)>,
    /// Graph optimizations and weight prepacking on (the default).
    optimize: bool,
    /// Weights prepacked by one session, reused by the next ones on the same weights.
    prepacked: Option<ort::session::builder::PrepackedWeights>,
}

impl OrtRuntime {
    /// Loads the library; `threads` = intra-op threads (default: available cores).
    pub fn new(threads: Option<usize>) -> std::result::Result<OrtRuntime, RuntimeError> {
        let env = environment()?;
        let threads = threads
            .filter(|&t| t > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        Ok(OrtRuntime {
            env,
            threads,
            config: Vec::new(),
            optimize: true,
            prepacked: None,
        })
    }

    /// Sessions that share their prepacked weights: a session opened on weights an
    /// earlier session of this runtime prepacked (same op, same bytes) takes that
    /// session's packed copy instead of packing again. For a few sessions over one
    /// model (a check's layers cut out of it, then the whole model); the packed
    /// weights live as long as the runtime.
    pub fn sharing_prepacked_weights(mut self) -> Self {
        self.prepacked = Some(ort::session::builder::PrepackedWeights::new());
        self
    }

    /// Sessions meant to run once on a few rows (a check's reference run): no
    /// graph optimizations and no weight prepacking. Both copy or rearrange every
    /// weight when the session opens, which costs more than they save on one run
    /// (on a 4.4 GB fp32 decoder, most of the opening's time and a second copy of
    /// the weights in memory).
    pub fn for_one_run(mut self) -> Self {
        self.optimize = false;
        self.config
            .push(("session.disable_prepacking".into(), "1".into()));
        self
    }

    /// Adds session config entries (key, value) to every session opened.
    pub fn with_config(mut self, entries: &[(String, String)]) -> Self {
        self.config.extend(entries.iter().cloned());
        self
    }

    pub fn library(&self) -> (&Path, &str) {
        (&self.env.path, &self.env.version)
    }
}

impl super::Runtime for OrtRuntime {
    fn name(&self) -> &'static str {
        NAME
    }

    fn open(&self, path: &Path) -> Result<Box<dyn super::Session>> {
        let label = model_label(path);
        let s = super::guard::no_panic(NAME, &label, || {
            OrtSession::open(
                &self.env,
                path,
                self.threads,
                &self.config,
                self.optimize,
                self.prepacked.as_ref(),
            )
        })?;
        Ok(Box::new(s))
    }
}

pub struct OrtSession {
    label: String,
    specs: Vec<IoSpec>,
    output_names: Vec<String>,
    session: OrtSessionInner,
}

fn backend(label: &str, e: impl std::fmt::Display) -> crate::Error {
    RuntimeError::backend(NAME, label, e).into()
}

impl OrtSession {
    fn open(
        env: &OrtEnv,
        path: &Path,
        threads: usize,
        config: &[(String, String)],
        optimize: bool,
        prepacked: Option<&ort::session::builder::PrepackedWeights>,
    ) -> Result<OrtSession> {
        let label = model_label(path);
        let ir = crate::io::load(path)?;
        let specs = ir.graph.input_specs();
        let output_names: Vec<String> = ir
            .graph
            .outputs
            .iter()
            .map(|o| ir.graph.value_name(o.value).to_string())
            .collect();
        drop(ir);
        let mut builder = OrtSessionInner::builder(&env.env)
            .map_err(|e| backend(&label, e))?
            .with_intra_threads(threads)
            .map_err(|e| backend(&label, e))?
            // A failing kernel's message reaches the caller as this session's error;
            // ORT's own log line would print it a second time.
            .with_log_level(ort::logging::LogLevel::Fatal)
            .map_err(|e| backend(&label, e))?;
        if !optimize {
            builder = builder
                .with_optimization_level(ort::session::builder::GraphOptimizationLevel::Disable)
                .map_err(|e| backend(&label, e))?;
        }
        for (k, v) in config {
            builder = builder
                .with_config_entry(k, v)
                .map_err(|e| backend(&label, format!("session config {k}={v}: {e}")))?;
        }
        if let Some(p) = prepacked {
            builder = builder
                .with_prepacked_weights(p)
                .map_err(|e| backend(&label, e))?;
        }
        let session = builder
            .commit_from_file(path)
            .map_err(|e| backend(&label, format!("cannot load the model: {e}")))?;
        Ok(OrtSession {
            label,
            specs,
            output_names,
            session,
        })
    }
}

impl super::Session for OrtSession {
    fn inputs(&self) -> &[IoSpec] {
        &self.specs
    }

    fn output_names(&self) -> &[String] {
        &self.output_names
    }

    fn run(&mut self, feeds: &[(String, HostTensor)]) -> Result<NamedTensors> {
        let label = self.label.clone();
        super::guard::no_panic(NAME, &label, || self.run_unguarded(feeds))
    }
}

impl OrtSession {
    fn run_unguarded(&mut self, feeds: &[(String, HostTensor)]) -> Result<NamedTensors> {
        let ordered = order_feeds(&self.label, &self.specs, feeds)?;
        let mut values: Vec<(String, SessionInputValue<'_>)> = Vec::with_capacity(ordered.len());
        for (spec, t) in self.specs.iter().zip(&ordered) {
            let v = to_ort(t)
                .map_err(|e| backend(&self.label, format!("input '{}': {e}", spec.name)))?;
            values.push((spec.name.clone(), SessionInputValue::from(v)));
        }
        let label = self.label.clone();
        let outputs = self.session.run(values).map_err(|e| backend(&label, e))?;
        self.output_names
            .iter()
            .map(|name| {
                let v = outputs
                    .get(name)
                    .ok_or_else(|| backend(&label, format!("no output '{name}' returned")))?;
                let t =
                    from_ort(v).map_err(|e| backend(&label, format!("output '{name}': {e}")))?;
                Ok((name.clone(), t))
            })
            .collect()
    }
}

fn element_type(d: DType) -> Option<TensorElementType> {
    Some(match d {
        DType::F32 => TensorElementType::Float32,
        DType::U8 => TensorElementType::Uint8,
        DType::I8 => TensorElementType::Int8,
        DType::U16 => TensorElementType::Uint16,
        DType::I16 => TensorElementType::Int16,
        DType::I32 => TensorElementType::Int32,
        DType::I64 => TensorElementType::Int64,
        DType::String => TensorElementType::String,
        DType::Bool => TensorElementType::Bool,
        DType::F16 => TensorElementType::Float16,
        DType::F64 => TensorElementType::Float64,
        DType::U32 => TensorElementType::Uint32,
        DType::U64 => TensorElementType::Uint64,
        DType::BF16 => TensorElementType::Bfloat16,
        DType::C64 => TensorElementType::Complex64,
        DType::C128 => TensorElementType::Complex128,
        DType::F8E4M3FN => TensorElementType::Float8E4M3FN,
        DType::F8E4M3FNUZ => TensorElementType::Float8E4M3FNUZ,
        DType::F8E5M2 => TensorElementType::Float8E5M2,
        DType::F8E5M2FNUZ => TensorElementType::Float8E5M2FNUZ,
        DType::U4 => TensorElementType::Uint4,
        DType::I4 => TensorElementType::Int4,
        DType::F4E2M1 => TensorElementType::Float4E2M1,
        DType::U2 => TensorElementType::Uint2,
        DType::I2 => TensorElementType::Int2,
        DType::F8E8M0 => TensorElementType::Float8E8M0,
        _ => return None,
    })
}

fn onnx_type(t: TensorElementType) -> Option<DType> {
    (1..=28)
        .map(DType::from_code)
        .find(|d| element_type(*d) == Some(t))
}

fn to_ort(t: &HostTensor) -> std::result::Result<DynValue, String> {
    let shape: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
    if t.dtype == DType::String {
        let strings: Vec<String> = t
            .strings
            .iter()
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect();
        let v =
            Tensor::from_string_array((shape, strings.as_slice())).map_err(|e| e.to_string())?;
        return Ok(v.into_dyn());
    }
    let ty =
        element_type(t.dtype).ok_or_else(|| format!("{} has no ONNX Runtime type", t.dtype))?;
    let mut v = DynTensor::new(&Allocator::default(), ty, shape).map_err(|e| e.to_string())?;
    if !t.data.is_empty() {
        let dst = v.data_ptr_mut().cast::<u8>();
        if dst.is_null() {
            return Err("ONNX Runtime allocated no buffer".into());
        }
        // Safety: the tensor was allocated for exactly dtype × shape bytes on the CPU
        // allocator, which is what `t.data` holds (checked when `t` was built).
        unsafe { std::ptr::copy_nonoverlapping(t.data.as_ptr(), dst, t.data.len()) };
    }
    Ok(v.into_dyn())
}

fn from_ort(v: &DynValue) -> std::result::Result<HostTensor, String> {
    let (ty, shape) = match v.dtype() {
        ValueType::Tensor { ty, shape, .. } => (*ty, shape.clone()),
        other => return Err(format!("{other} values are not supported (tensors only)")),
    };
    let shape: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
    if ty == TensorElementType::String {
        let (_, strings) = v.try_extract_strings().map_err(|e| e.to_string())?;
        return HostTensor::from_strings(
            shape,
            strings.into_iter().map(String::into_bytes).collect(),
        )
        .map_err(|e| e.to_string());
    }
    let dtype =
        onnx_type(ty).ok_or_else(|| format!("ONNX Runtime returned {ty}, unknown to onnxq"))?;
    let n: usize = shape.iter().product();
    let len = dtype.byte_len(n).ok_or("no fixed element size")?;
    let tensor = v
        .view()
        .downcast::<DynTensorValueType>()
        .map_err(|e| e.to_string())?;
    if !tensor.memory_info().is_cpu_accessible() {
        return Err("output is not in CPU memory".into());
    }
    let mut data = vec![0u8; len];
    if len > 0 {
        let src = tensor.data_ptr().cast::<u8>();
        if src.is_null() {
            return Err("output has no buffer".into());
        }
        // Safety: a CPU tensor of `ty` and `shape` holds exactly `len` bytes.
        unsafe { std::ptr::copy_nonoverlapping(src, data.as_mut_ptr(), len) };
    }
    HostTensor::from_bytes(dtype, shape, data).map_err(|e| e.to_string())
}

/// Rewrites, for a session that runs once, every `MatMul(x, Transpose(w))` on a
/// 2-D float32 initializer `w` into `com.microsoft::FusedMatMul(x, w, transB=1)`:
/// the same product, read from `w` where it lies. Without graph optimizations the
/// Transpose runs on every call and writes a transposed copy of the weight (on an
/// exported decoder, a copy of every weight); with them, constant folding makes
/// that copy when the session opens. Value names are kept (the MatMul's output,
/// the Transpose's while anything else reads it). Returns how many MatMuls changed.
pub fn read_transposed_weights_in_place(model: &mut crate::ir::Model) -> usize {
    use crate::ir::{Attribute, NodeSpec};
    let g = &mut model.graph;
    let mut swaps = Vec::new();
    for (id, n) in g.nodes() {
        if !n.is("", "MatMul") {
            continue;
        }
        let (Some(x), Some(b)) = (n.input(0), n.input(1)) else {
            continue;
        };
        let Some(t) = g.producer(b).map(|t| (t, g.node(t))) else {
            continue;
        };
        let (t_id, t_node) = t;
        let plain_perm = t_node
            .attr("perm")
            .is_none_or(|p| p.ints.as_slice() == [1, 0]);
        let Some(w) = t_node
            .input(0)
            .filter(|_| t_node.is("", "Transpose") && plain_perm)
        else {
            continue;
        };
        let weight_2d_f32 = g
            .initializer(w)
            .is_some_and(|w| w.dims.len() == 2 && w.dtype() == DType::F32);
        if weight_2d_f32 {
            swaps.push((id, t_id, x, w, n.name().to_string()));
        }
    }
    let mut changed = 0;
    for (id, t_id, x, w, name) in swaps {
        let spec = NodeSpec::new("com.microsoft", "FusedMatMul")
            .name(name)
            .inputs([Some(x), Some(w)])
            .attr(Attribute::int("transB", 1));
        if g.swap_node(id, spec).is_ok() {
            changed += 1;
        }
        // Gone once no MatMul reads it; kept for any other reader.
        if g.contains_node(t_id) {
            let _ = g.remove_node(t_id);
        }
    }
    if changed > 0 {
        model.require_opset("com.microsoft", 1);
    }
    changed
}
