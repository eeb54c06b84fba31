//! The library entry point for build scripts and programs: a recipe (shipped, from a
//! file, or built from typed steps) with its options, run on a model file, and
//! optionally skipped when nothing it depends on changed.
//!
//! ```
//! # fn main() -> onnxq::Result<()> {
//! let dir = tempfile::tempdir().unwrap();
//! let input = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/mlp.onnx");
//! let output = dir.path().join("mlp.int4.onnx");
//! let done = onnxq::Pipeline::from_recipe("int4-rtn")?
//!     .option("block-size", 16)?
//!     .run(input.as_ref(), &output)?;
//! assert!(done.changed && output.exists());
//! # Ok(())
//! # }
//! ```
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::recipe::Recipe;
use super::{registry, run_pipeline_with, CheckLevel, PassCx, PassOutcome, RunOptions};
use crate::error::{Error, Result};
use crate::io::{AtomicFile, SaveOptions};

/// A configured list of passes, run on a file with [`Pipeline::run`] or
/// [`Pipeline::run_cached`].
#[derive(Clone, Debug)]
pub struct Pipeline {
    recipe: Recipe,
    seed: u64,
    check: CheckLevel,
    save: SaveOptions,
}

/// One typed step of a [`Pipeline`]: a pass name and its configuration table.
pub trait Step {
    /// The pass table, as a recipe's `[[pass]]` would hold it (with `name`).
    fn to_pass(&self) -> toml::Table;
}

/// How weight-only quantization rounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum WeightAlgorithm {
    /// Round to nearest per block (onnxruntime's default quantizer).
    #[default]
    Rtn,
    /// Half-quadratic quantization (lower weight error, no calibration).
    Hqq,
}

/// How quantized weights are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum WeightFormat {
    /// com.microsoft MatMulNBits.
    #[default]
    MatMulNBits,
    /// Standard blocked DequantizeLinear → MatMul (opset 21).
    Qdq,
}

/// Weight-only N-bit quantization of MatMul/Gemm weights (the `matmul-nbits` pass).
///
/// ```
/// # fn main() -> onnxq::Result<()> {
/// use onnxq::{Pipeline, WeightOnly};
/// let dir = tempfile::tempdir().unwrap();
/// let input = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/mlp.onnx");
/// let output = dir.path().join("mlp.int8.onnx");
/// let done = Pipeline::new()
///     .quantize(WeightOnly { bits: 8, block_size: 64, ..Default::default() })
///     .run(input.as_ref(), &output)?;
/// assert!(done.changed);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct WeightOnly {
    /// 2, 4 or 8 (MatMulNBits); 4 or 8 (QDQ).
    pub bits: u8,
    /// Weights per block along K (a power of two, at least 16).
    pub block_size: usize,
    /// Absmax blocks (true) or min/max blocks with a zero point.
    pub symmetric: bool,
    /// MatMulNBits accuracy_level (None: unset, A stays float).
    pub accuracy_level: Option<i64>,
    pub algorithm: WeightAlgorithm,
    pub format: WeightFormat,
    /// Node name patterns (`*` wildcards) left in float.
    pub exclude: Vec<String>,
}

impl Default for WeightOnly {
    /// onnxruntime's MatMulNBitsQuantizer defaults: 4 bits, block 32, symmetric.
    fn default() -> Self {
        WeightOnly {
            bits: 4,
            block_size: 32,
            symmetric: true,
            accuracy_level: None,
            algorithm: WeightAlgorithm::Rtn,
            format: WeightFormat::MatMulNBits,
            exclude: Vec::new(),
        }
    }
}

impl Step for WeightOnly {
    fn to_pass(&self) -> toml::Table {
        use toml::Value as V;
        let mut t = toml::Table::new();
        t.insert("name".into(), V::String("matmul-nbits".into()));
        let algorithm = match self.algorithm {
            WeightAlgorithm::Rtn => "rtn",
            WeightAlgorithm::Hqq => "hqq",
        };
        t.insert("algorithm".into(), V::String(algorithm.into()));
        t.insert("bits".into(), V::Integer(self.bits.into()));
        t.insert("block-size".into(), V::Integer(self.block_size as i64));
        t.insert("symmetric".into(), V::Boolean(self.symmetric));
        if let Some(a) = self.accuracy_level {
            t.insert("accuracy-level".into(), V::Integer(a));
        }
        let format = match self.format {
            WeightFormat::MatMulNBits => "matmulnbits",
            WeightFormat::Qdq => "qdq",
        };
        t.insert("format".into(), V::String(format.into()));
        if !self.exclude.is_empty() {
            let names = self.exclude.iter().cloned().map(V::String).collect();
            t.insert("exclude".into(), V::Array(names));
        }
        t
    }
}

/// What a run did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Done {
    /// Whether any pass changed the model (false: the output is an unchanged copy).
    pub changed: bool,
    /// Whether [`Pipeline::run_cached`] found the output up to date and did nothing.
    pub cached: bool,
    /// The cache key (hex SHA-256) when run with a cache.
    pub cache_key: Option<String>,
    /// Each pass's outcome (empty on a cache hit).
    pub passes: Vec<PassOutcome>,
}

impl Default for Pipeline {
    fn default() -> Self {
        Pipeline::new()
    }
}

impl Pipeline {
    /// An empty pipeline; add steps with [`Pipeline::quantize`] or [`Pipeline::pass`].
    pub fn new() -> Pipeline {
        Pipeline {
            recipe: Recipe {
                name: "pipeline".into(),
                description: String::new(),
                passes: Vec::new(),
            },
            seed: 0,
            check: CheckLevel::Structural,
            save: SaveOptions::default(),
        }
    }

    /// A shipped recipe by name (`int4-rtn`, `int8-dynamic`, ...) or a recipe TOML
    /// file by path. An unknown name is an error with the closest shipped name.
    pub fn from_recipe(name_or_path: &str) -> Result<Pipeline> {
        Ok(Pipeline {
            recipe: Recipe::load(name_or_path)?,
            ..Pipeline::new()
        })
    }

    /// Sets a recipe option (`bits`, `block-size`, `exclude`, ...) on every pass that
    /// takes it. An option no pass takes is an error, with the closest known name.
    ///
    /// ```
    /// let err = onnxq::Pipeline::from_recipe("int4-rtn")
    ///     .unwrap()
    ///     .option("blocksize", 64)
    ///     .unwrap_err();
    /// assert!(err.to_string().contains("did you mean 'block-size'"));
    /// ```
    pub fn option(mut self, key: &str, value: impl Into<toml::Value>) -> Result<Pipeline> {
        let pass_names: Vec<String> = self
            .recipe
            .passes
            .iter()
            .filter_map(|t| t.get("name").and_then(|v| v.as_str()).map(String::from))
            .collect();
        if !pass_names.iter().any(|p| registry::accepts(p, key)) {
            let known: Vec<&str> = registry::PASSES
                .iter()
                .filter(|(n, _, _)| pass_names.iter().any(|p| p == n))
                .flat_map(|(_, keys, _)| keys.iter().copied())
                .collect();
            return Err(Error::invalid(format!(
                "option '{key}': no pass of recipe {} takes it{}",
                self.recipe.name,
                crate::error::did_you_mean(key, known.iter().copied())
            )));
        }
        self.recipe.set(key, value.into());
        self.recipe.build()?;
        Ok(self)
    }

    /// Appends a typed step, e.g. [`WeightOnly`].
    pub fn quantize(mut self, step: impl Step) -> Pipeline {
        self.recipe.passes.push(step.to_pass());
        self
    }

    /// Appends pass `name` (see `onnxq::pass::registry::PASSES`) with its options.
    pub fn pass(mut self, name: &str, mut options: toml::Table) -> Pipeline {
        options.insert("name".into(), toml::Value::String(name.into()));
        self.recipe.passes.push(options);
        self
    }

    /// Seed for anything random (sample selection, random calibration inputs).
    pub fn seed(mut self, seed: u64) -> Pipeline {
        self.seed = seed;
        self
    }

    /// How the output is laid out (inline, external data, ...).
    pub fn save_options(mut self, save: SaveOptions) -> Pipeline {
        self.save = save;
        self
    }

    /// What is checked after each pass.
    pub fn check(mut self, level: CheckLevel) -> Pipeline {
        self.check = level;
        self
    }

    /// The recipe this pipeline runs.
    pub fn recipe(&self) -> &Recipe {
        &self.recipe
    }

    /// Loads `input`, runs the passes, writes `output` (atomically; an unchanged copy
    /// when nothing matched, see [`Done::changed`]).
    pub fn run(&self, input: &Path, output: &Path) -> Result<Done> {
        let passes = self.built()?;
        let mut model = crate::io::load(input)?;
        let mut cx = PassCx {
            progress: false,
            seed: self.seed,
        };
        let opts = RunOptions {
            check: self.check,
            ..Default::default()
        };
        let outcomes = run_pipeline_with(&mut model, &passes, &mut cx, &opts)?;
        crate::io::save(&model, output, &self.save)?;
        Ok(Done {
            changed: outcomes.iter().any(|o| o.changed),
            cached: false,
            cache_key: None,
            passes: outcomes,
        })
    }

    /// [`Pipeline::run`], skipped when `output` was written by this pipeline from
    /// the same input before. The key hashes the input's bytes (external data files
    /// and files the recipe names included), the recipe with its options, the seed,
    /// the save options and onnxq's version; a stamp in `cache_dir` records it with
    /// the output files' sizes and modification times. A hit costs the hashing.
    ///
    /// ```
    /// # fn main() -> onnxq::Result<()> {
    /// let dir = tempfile::tempdir().unwrap();
    /// let input = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/mlp.onnx");
    /// let output = dir.path().join("mlp.int4.onnx");
    /// let cache = dir.path().join("cache");
    /// let p = onnxq::Pipeline::from_recipe("int4-rtn")?;
    /// assert!(!p.run_cached(input.as_ref(), &output, &cache)?.cached);
    /// assert!(p.run_cached(input.as_ref(), &output, &cache)?.cached);
    /// # Ok(())
    /// # }
    /// ```
    pub fn run_cached(&self, input: &Path, output: &Path, cache_dir: &Path) -> Result<Done> {
        self.built()?;
        let key = self.cache_key(input)?;
        let stamp_path = cache_dir.join(format!("{}.json", hex(&sha(output_id(output)))));
        if let Some(stamp) = read_stamp(&stamp_path) {
            if stamp.key == key && stamp.outputs_match() {
                return Ok(Done {
                    changed: stamp.changed,
                    cached: true,
                    cache_key: Some(key),
                    passes: Vec::new(),
                });
            }
        }
        let mut done = self.run(input, output)?;
        // Stat what was written: the model and the data files it now reads.
        let model = crate::io::load(output)?;
        let dir = output.parent().unwrap_or(Path::new(""));
        let mut files = vec![output.to_path_buf()];
        files.extend(model.external_data_files().into_keys().map(|f| dir.join(f)));
        drop(model);
        let stamp = Stamp {
            key: key.clone(),
            changed: done.changed,
            outputs: files
                .iter()
                .map(|f| FileStat::of(f))
                .collect::<Result<_>>()?,
        };
        let text =
            serde_json::to_string_pretty(&stamp).map_err(|e| Error::invalid(e.to_string()))?;
        let mut f = AtomicFile::create(&stamp_path)?;
        f.write_all(text.as_bytes())?;
        f.commit()?;
        done.cache_key = Some(key);
        Ok(done)
    }

    /// The cache key of running this pipeline on `input` (hex SHA-256).
    pub fn cache_key(&self, input: &Path) -> Result<String> {
        let mut h = Sha256::new();
        h.update(format!("onnxq {}\n", env!("CARGO_PKG_VERSION")));
        h.update(format!(
            "seed {} check {:?} save {:?}\n",
            self.seed, self.check, self.save
        ));
        let recipe = serde_json::to_string(&self.recipe.passes)
            .map_err(|e| Error::invalid(e.to_string()))?;
        h.update(recipe.as_bytes());
        // Files a recipe names (calibration data, tokenizer, nodes config) count too.
        for t in &self.recipe.passes {
            for v in t.values() {
                if let Some(p) = v.as_str().map(Path::new).filter(|p| p.exists()) {
                    hash_path(&mut h, p)?;
                }
            }
        }
        hash_file(&mut h, input)?;
        let model = crate::io::load(input)?;
        let dir = input.parent().unwrap_or(Path::new(""));
        for f in model.external_data_files().into_keys() {
            h.update(f.as_bytes());
            hash_file(&mut h, &dir.join(&f))?;
        }
        Ok(hex(&h.finalize()))
    }

    fn built(&self) -> Result<Vec<Box<dyn super::Pass>>> {
        if self.recipe.passes.is_empty() {
            return Err(Error::invalid(
                "the pipeline has no passes (Pipeline::from_recipe, .quantize or .pass)",
            ));
        }
        self.recipe.build()
    }
}

fn output_id(output: &Path) -> Vec<u8> {
    let abs = std::path::absolute(output).unwrap_or_else(|_| output.to_path_buf());
    abs.to_string_lossy().as_bytes().to_vec()
}

fn sha(bytes: Vec<u8>) -> Vec<u8> {
    Sha256::digest(bytes).to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hash_file(h: &mut Sha256, path: &Path) -> Result<()> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(())
}

/// A file's bytes, or a directory's files (sorted, recursively) with their names.
fn hash_path(h: &mut Sha256, path: &Path) -> Result<()> {
    if path.is_file() {
        return hash_file(h, path);
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| Error::io(path, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for e in entries {
        h.update(e.file_name().unwrap_or_default().as_encoded_bytes());
        hash_path(h, &e)?;
    }
    Ok(())
}

#[derive(Serialize, Deserialize)]
struct Stamp {
    key: String,
    changed: bool,
    outputs: Vec<FileStat>,
}

#[derive(Serialize, Deserialize, PartialEq)]
struct FileStat {
    path: PathBuf,
    len: u64,
    modified_ns: u128,
}

impl FileStat {
    fn of(path: &Path) -> Result<FileStat> {
        let m = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        let modified_ns = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        Ok(FileStat {
            path: path.to_path_buf(),
            len: m.len(),
            modified_ns,
        })
    }
}

impl Stamp {
    /// The outputs are still the files this stamp's run wrote.
    fn outputs_match(&self) -> bool {
        self.outputs
            .iter()
            .all(|s| FileStat::of(&s.path).is_ok_and(|now| now == *s))
    }
}

fn read_stamp(path: &Path) -> Option<Stamp> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}
