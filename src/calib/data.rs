//! Calibration samples: where they come from and whether they fit the model.
//!
//! A sample is one set of model inputs. On disk a calibration set is a directory
//! holding, in name order, `*.npz` files (one sample each, keys = input names),
//! subdirectories of `<input name>.npy` files (one sample each), or — for a model
//! with a single input — bare `*.npy` files; or a single `.npz` file (read with
//! crate::tensorfile). Samples are read one at a time, so memory does not grow
//! with their number.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::ir::{Dim, IoSpec, Model, Use};
use crate::rewrite::matchers::constant;
use crate::runtime::inputs::{random_inputs, InputHints};
use crate::runtime::{HostTensor, NamedTensors};
use crate::tensorfile;

/// One sample on disk.
#[derive(Clone, Debug)]
pub enum Sample {
    /// Keys are input names.
    Npz(PathBuf),
    /// A directory of `<input>.npy` files.
    NpyDir(PathBuf),
    /// The only input of a one-input model.
    Npy(PathBuf),
}

impl Sample {
    fn path(&self) -> &Path {
        match self {
            Sample::Npz(p) | Sample::NpyDir(p) | Sample::Npy(p) => p,
        }
    }
}

/// Where calibration inputs come from.
#[derive(Clone, Debug)]
pub enum Source {
    /// Samples read from disk, in name order.
    Files {
        origin: PathBuf,
        samples: Vec<Sample>,
    },
    /// Seeded random inputs shaped like the declared inputs (token ids within the
    /// vocabulary, all-ones masks): a fallback when no data is given.
    Random {
        samples: usize,
        seed: u64,
        dims: BTreeMap<String, i64>,
    },
}

impl Source {
    /// Lists the samples under `path` (a directory or one `.npz`); an empty set is an
    /// error.
    pub fn open(path: &Path) -> Result<Source> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        let samples = if meta.is_file() {
            match path.extension().and_then(|e| e.to_str()) {
                Some("npz") => vec![Sample::Npz(path.to_path_buf())],
                Some("npy") => vec![Sample::Npy(path.to_path_buf())],
                _ => {
                    return Err(Error::invalid(format!(
                        "{}: calibration data must be a directory, a .npz or a .npy file",
                        path.display()
                    )))
                }
            }
        } else {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| Error::io(path, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .collect();
            entries.sort();
            let mut samples = Vec::new();
            for p in entries {
                match p.extension().and_then(|e| e.to_str()) {
                    Some("npz") if p.is_file() => samples.push(Sample::Npz(p)),
                    Some("npy") if p.is_file() => samples.push(Sample::Npy(p)),
                    _ if p.is_dir() && has_npy(&p)? => samples.push(Sample::NpyDir(p)),
                    _ => {}
                }
            }
            samples
        };
        if samples.is_empty() {
            return Err(Error::invalid(format!(
                "{}: the calibration set is empty (expected *.npz files, directories of \
                 <input>.npy files, or *.npy files for a one-input model)",
                path.display()
            )));
        }
        Ok(Source::Files {
            origin: path.to_path_buf(),
            samples,
        })
    }

    pub fn len(&self) -> usize {
        match self {
            Source::Files { samples, .. } => samples.len(),
            Source::Random { samples, .. } => *samples,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sample `i` as feeds for a model whose required inputs are `specs`, checked
    /// against them (names, element types, ranks, fixed dims, and symbolic dims
    /// consistent across inputs).
    pub fn sample(&self, i: usize, specs: &[IoSpec], hints: &InputHints) -> Result<NamedTensors> {
        match self {
            Source::Random { seed, dims, .. } => {
                random_inputs(specs, dims, hints, seed.wrapping_add(i as u64))
            }
            Source::Files { samples, .. } => {
                let s = &samples[i];
                let arrays = read_sample(s, specs)?;
                check_sample(s.path(), arrays, specs)
            }
        }
    }

    /// A short description for reports.
    pub fn describe(&self) -> String {
        match self {
            Source::Files { origin, samples } => {
                format!("{} samples from {}", samples.len(), origin.display())
            }
            Source::Random { samples, seed, .. } => {
                format!("{samples} seeded random samples (seed {seed})")
            }
        }
    }
}

fn has_npy(dir: &Path) -> Result<bool> {
    Ok(std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok())
        .any(|e| e.path().extension().is_some_and(|x| x == "npy")))
}

fn named(loaded: Vec<tensorfile::Loaded>) -> Vec<(String, HostTensor)> {
    loaded
        .into_iter()
        .map(|l| (l.name.unwrap_or_default(), l.tensor))
        .collect()
}

fn read_sample(s: &Sample, specs: &[IoSpec]) -> Result<Vec<(String, HostTensor)>> {
    match s {
        Sample::Npz(p) => Ok(named(tensorfile::read_file(p)?)),
        Sample::NpyDir(dir) => Ok(named(
            tensorfile::read_dir(dir)?
                .into_iter()
                .filter(|l| l.source.extension().is_some_and(|x| x == "npy"))
                .collect(),
        )),
        Sample::Npy(p) => {
            let [spec] = specs else {
                return Err(Error::invalid(format!(
                    "{}: a bare .npy sample fits only a one-input model, this one takes {} \
                     inputs ({}); use .npz files or one directory of <input>.npy per sample",
                    p.display(),
                    specs.len(),
                    names(specs)
                )));
            };
            let t = tensorfile::read_file(p)?
                .into_iter()
                .next()
                .map(|l| l.tensor)
                .ok_or_else(|| Error::invalid(format!("{}: no array", p.display())))?;
            Ok(vec![(spec.name.clone(), t)])
        }
    }
}

fn names(specs: &[IoSpec]) -> String {
    specs
        .iter()
        .map(|s| s.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn check_sample(
    origin: &Path,
    arrays: Vec<(String, HostTensor)>,
    specs: &[IoSpec],
) -> Result<NamedTensors> {
    let err = |reason: String| {
        Error::invalid(format!("calibration sample {}: {reason}", origin.display()))
    };
    let mut by_name: BTreeMap<String, HostTensor> = BTreeMap::new();
    for (k, a) in arrays {
        if !specs.iter().any(|s| s.name == k) {
            return Err(err(format!(
                "array '{k}' is not an input of the model (inputs: {})",
                names(specs)
            )));
        }
        by_name.insert(k, a);
    }
    let mut symbols: BTreeMap<String, (usize, String)> = BTreeMap::new();
    let mut feeds = Vec::with_capacity(specs.len());
    for spec in specs {
        let a = by_name.remove(&spec.name).ok_or_else(|| {
            err(format!(
                "no array for model input '{}' (the sample has: {})",
                spec.name,
                by_name.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })?;
        if let Some(want) = spec.dtype {
            if want != a.dtype {
                return Err(err(format!(
                    "input '{}' is {want} in the model but {} in the sample",
                    spec.name, a.dtype
                )));
            }
        }
        if let Some(dims) = &spec.dims {
            if dims.len() != a.shape.len() {
                return Err(err(format!(
                    "input '{}' has rank {} in the model but shape {:?} in the sample",
                    spec.name,
                    dims.len(),
                    a.shape
                )));
            }
            for (axis, (d, &n)) in dims.iter().zip(&a.shape).enumerate() {
                match d {
                    Dim::Value(v) if *v >= 0 && *v as usize != n => {
                        return Err(err(format!(
                            "input '{}' dim {axis} is {v} in the model but {n} in the sample \
                             (shape {:?})",
                            spec.name, a.shape
                        )))
                    }
                    Dim::Param(p) => {
                        if let Some((m, other)) = symbols.get(p) {
                            if *m != n {
                                return Err(err(format!(
                                    "dim '{p}' is {m} in input '{other}' but {n} in input '{}'",
                                    spec.name
                                )));
                            }
                        } else {
                            symbols.insert(p.clone(), (n, spec.name.clone()));
                        }
                    }
                    _ => {}
                }
            }
        }
        feeds.push((spec.name.clone(), a));
    }
    Ok(feeds)
}

/// Refuses token ids the model's embedding table has no row for: for every
/// `Gather(table, ids)` whose table is a constant and whose indices are the
/// graph input named `*input_ids*` (directly or through a Cast), the largest id in
/// `ids` must be below the table's first dim. The error names the table.
pub fn check_token_ids(model: &Model, ids: &[i64]) -> Result<()> {
    let Some(&max) = ids.iter().max() else {
        return Ok(());
    };
    let min = ids.iter().copied().min().unwrap_or(0);
    let g = &model.graph;
    for spec in g.input_specs() {
        if !spec.name.contains("input_ids") {
            continue;
        }
        let Some(v) = g.find(&spec.name) else {
            continue;
        };
        // The input and what a Cast makes of it.
        let mut values = vec![v];
        for u in g.value(v).uses() {
            if let Use::Input(n, 0) = u {
                if g.node(*n).is("", "Cast") {
                    values.extend(g.node(*n).output(0));
                }
            }
        }
        for &iv in &values {
            for u in g.value(iv).uses() {
                let Use::Input(n, 1) = u else { continue };
                let node = g.node(*n);
                if !node.is("", "Gather") || node.attr_int("axis").unwrap_or(0) != 0 {
                    continue;
                }
                let Some(table) = node.input(0) else { continue };
                let Some((_, t)) = constant(g, table) else {
                    continue;
                };
                let Some(&rows) = t.dims.first() else {
                    continue;
                };
                if max >= rows || min < 0 {
                    let bad = if min < 0 { min } else { max };
                    return Err(Error::tensor(
                        g.value_name(table),
                        format!(
                            "the tokenizer gives token id {bad}, but this embedding table \
                             (read by '{}' at input '{}') has {rows} rows: the tokenizer does not \
                             match the model",
                            node.name(),
                            spec.name
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}
