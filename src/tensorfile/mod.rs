//! Tensors in files: NumPy `.npy`/`.npz` and ONNX TensorProto `.pb` (the layout of
//! the ONNX test data sets: `input_0.pb`, ... in `test_data_set_N/`), read as model
//! inputs and written as model outputs.
pub mod npy;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::ir::IoSpec;
use crate::runtime::{HostTensor, NamedTensors};

/// A tensor read from a file, with what the file says about which input it is.
#[derive(Clone, Debug)]
pub struct Loaded {
    /// The tensor's own name (`.pb` name field, `.npy` file stem, `.npz` entry).
    pub name: Option<String>,
    /// N of an `input_N` / `output_N` file name.
    pub index: Option<usize>,
    pub tensor: HostTensor,
    pub source: PathBuf,
}

/// The file formats `write_set` can produce.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    #[default]
    Npy,
    Pb,
}

impl FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "npy" => Ok(Format::Npy),
            "pb" => Ok(Format::Pb),
            o => Err(format!("unknown tensor format '{o}' (expected npy or pb)")),
        }
    }
}

fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

/// N of a file stem `input_N` / `output_N`.
fn stem_index(stem: &str) -> Option<usize> {
    let (_, n) = stem.rsplit_once('_')?;
    n.parse().ok()
}

/// Reads one TensorProto file.
pub fn read_pb(path: &Path) -> Result<HostTensor> {
    let bytes = read_bytes(path)?;
    let t = crate::io::tensor_from_pb_bytes(&bytes)
        .map_err(|e| Error::invalid(format!("{}: {e}", path.display())))?;
    HostTensor::from_ir(&t).map_err(|e| Error::invalid(format!("{}: {e}", path.display())))
}

/// Reads a `.npy`, `.npz` or `.pb` file (an `.npz` holds several tensors).
pub fn read_file(path: &Path) -> Result<Vec<Loaded>> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    let label = path.display().to_string();
    match ext.as_str() {
        "npy" => Ok(vec![Loaded {
            index: stem_index(&stem),
            name: Some(stem),
            tensor: npy::read(&read_bytes(path)?, &label)?,
            source: path.to_path_buf(),
        }]),
        "pb" => {
            let bytes = read_bytes(path)?;
            let t = crate::io::tensor_from_pb_bytes(&bytes)
                .map_err(|e| Error::invalid(format!("{label}: {e}")))?;
            let name = t.name.clone().filter(|n| !n.is_empty());
            Ok(vec![Loaded {
                index: stem_index(&stem),
                name,
                tensor: HostTensor::from_ir(&t)
                    .map_err(|e| Error::invalid(format!("{label}: {e}")))?,
                source: path.to_path_buf(),
            }])
        }
        "npz" => read_npz(path),
        _ => Err(Error::invalid(format!(
            "{label}: unknown tensor file type (expected .npy, .npz or .pb)"
        ))),
    }
}

fn read_npz(path: &Path) -> Result<Vec<Loaded>> {
    let label = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut zip = zip::ZipArchive::new(file)
        .map_err(|e| Error::invalid(format!("{label}: not a readable .npz (zip) file: {e}")))?;
    let mut out = Vec::new();
    for i in 0..zip.len() {
        let mut entry = zip
            .by_index(i)
            .map_err(|e| Error::invalid(format!("{label}: entry {i}: {e}")))?;
        if entry.is_dir() {
            continue;
        }
        let name = entry.name().to_string();
        let key = name.strip_suffix(".npy").unwrap_or(&name).to_string();
        let mut bytes = Vec::new();
        entry
            .read_to_end(&mut bytes)
            .map_err(|e| Error::invalid(format!("{label}: entry '{name}': {e}")))?;
        out.push(Loaded {
            index: stem_index(&key),
            tensor: npy::read(&bytes, &format!("{label}: entry '{name}'"))?,
            name: Some(key),
            source: path.to_path_buf(),
        });
    }
    Ok(out)
}

/// Every `.npy`, `.npz` and `.pb` file directly in `dir`, in file name order.
pub fn read_dir(dir: &Path) -> Result<Vec<Loaded>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .is_some_and(|e| matches!(e.to_string_lossy().as_ref(), "npy" | "npz" | "pb"))
        })
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        out.extend(read_file(&f)?);
    }
    Ok(out)
}

/// One set of input tensors from a file or a directory. In a directory, files
/// named `output_N.*` are skipped: the ONNX test layout keeps the expected outputs
/// next to the inputs.
pub fn read_set(path: &Path) -> Result<Vec<Loaded>> {
    if path.is_dir() {
        Ok(read_dir(path)?
            .into_iter()
            .filter(|l| {
                !l.source
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("output_"))
            })
            .collect())
    } else {
        read_file(path)
    }
}

/// The input sets under `path`: its `test_data_set_*` subdirectories when it has
/// any (the ONNX test layout), else `path` itself.
pub fn sample_sets(path: &Path) -> Result<Vec<PathBuf>> {
    if !path.exists() {
        return Err(Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
        ));
    }
    if path.is_dir() {
        let mut sets: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| Error::io(path, e))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.is_dir()
                    && p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("test_data_set_"))
            })
            .collect();
        sets.sort();
        if !sets.is_empty() {
            return Ok(sets);
        }
    }
    Ok(vec![path.to_path_buf()])
}

/// Assigns loaded tensors to the model inputs `specs`: by name when a tensor's
/// name is an input's, else by position from an `input_N` file name.
pub fn bind(loaded: Vec<Loaded>, specs: &[IoSpec]) -> Result<NamedTensors> {
    let mut out: NamedTensors = Vec::new();
    for l in loaded {
        let by_name = l
            .name
            .as_deref()
            .and_then(|n| specs.iter().find(|s| s.name == n));
        let spec = by_name
            .or_else(|| l.index.and_then(|i| specs.get(i)))
            .ok_or_else(|| {
                Error::invalid(format!(
                    "{}: tensor '{}' matches no model input (inputs: {})",
                    l.source.display(),
                    l.name.as_deref().unwrap_or("?"),
                    specs
                        .iter()
                        .map(|s| s.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
        if out.iter().any(|(n, _)| n == &spec.name) {
            return Err(Error::invalid(format!(
                "{}: a second value for input '{}'",
                l.source.display(),
                spec.name
            )));
        }
        out.push((spec.name.clone(), l.tensor));
    }
    Ok(out)
}

/// A file name made from a tensor name (path separators and odd characters → `_`).
pub fn file_stem_for(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() || s.starts_with('.') {
        format!("_{s}")
    } else {
        s
    }
}

/// Writes `tensors`: into one `.npz` when `out` ends in `.npz`, else into the
/// directory `out` as `<name>.npy` files or (pb) `output_N.pb` TensorProtos named
/// after the outputs. Returns the files written.
pub fn write_set(out: &Path, tensors: &NamedTensors, format: Format) -> Result<Vec<PathBuf>> {
    if out.extension().is_some_and(|e| e == "npz") {
        write_npz(out, tensors)?;
        return Ok(vec![out.to_path_buf()]);
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let mut written = Vec::new();
    let mut used = std::collections::BTreeSet::new();
    for (i, (name, t)) in tensors.iter().enumerate() {
        let (path, bytes) = match format {
            Format::Npy => {
                let mut stem = file_stem_for(name);
                while !used.insert(stem.clone()) {
                    stem.push('_');
                }
                (out.join(format!("{stem}.npy")), npy::write(t, name)?)
            }
            Format::Pb => (
                out.join(format!("output_{i}.pb")),
                crate::io::tensor_to_pb_bytes(&t.to_ir(name)?)?,
            ),
        };
        std::fs::write(&path, bytes).map_err(|e| Error::io(&path, e))?;
        written.push(path);
    }
    Ok(written)
}

fn write_npz(path: &Path, tensors: &NamedTensors) -> Result<()> {
    let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    let mut zip = zip::ZipWriter::new(file);
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .large_file(true);
    let zerr = |e: zip::result::ZipError| Error::invalid(format!("{}: {e}", path.display()));
    for (name, t) in tensors {
        zip.start_file(format!("{name}.npy"), opts).map_err(zerr)?;
        zip.write_all(&npy::write(t, name)?)
            .map_err(|e| Error::io(path, e))?;
    }
    zip.finish().map_err(zerr)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{DType, Dim};

    fn specs() -> Vec<IoSpec> {
        ["x", "ids"]
            .iter()
            .map(|n| IoSpec {
                name: n.to_string(),
                dtype: Some(DType::F32),
                dims: Some(vec![Dim::Value(2)]),
            })
            .collect()
    }

    #[test]
    fn npz_and_pb_round_trip_and_bind() {
        let dir = tempfile::tempdir().unwrap();
        let x = HostTensor::from_f32(vec![2], &[1.5, -2.0]).unwrap();
        let ids = HostTensor::from_i64(vec![2], &[3, 4]).unwrap();
        let set: NamedTensors = vec![("x".into(), x.clone()), ("ids".into(), ids.clone())];

        let npz = dir.path().join("in.npz");
        write_set(&npz, &set, Format::Npy).unwrap();
        let bound = bind(read_set(&npz).unwrap(), &specs()).unwrap();
        assert_eq!(bound, set);

        // Written as outputs (output_N.pb, named inside): read_set skips them as
        // inputs, read_dir reads them.
        let pbdir = dir.path().join("pb");
        write_set(&pbdir, &set, Format::Pb).unwrap();
        assert!(read_set(&pbdir).unwrap().is_empty());
        let loaded = read_dir(&pbdir).unwrap();
        assert_eq!(loaded[0].index, Some(0));
        assert_eq!(bind(loaded, &specs()).unwrap(), set);

        // npy files named input_N bind by position.
        let npydir = dir.path().join("npy");
        std::fs::create_dir(&npydir).unwrap();
        std::fs::write(npydir.join("input_1.npy"), npy::write(&ids, "ids").unwrap()).unwrap();
        let b = bind(read_set(&npydir).unwrap(), &specs()).unwrap();
        assert_eq!(b, vec![("ids".to_string(), ids)]);

        std::fs::write(npydir.join("zzz.npy"), npy::write(&x, "x").unwrap()).unwrap();
        let e = bind(read_set(&npydir).unwrap(), &specs())
            .unwrap_err()
            .to_string();
        assert!(e.contains("zzz.npy") && e.contains("'zzz'"), "{e}");
    }

    #[test]
    fn sample_sets_follow_the_onnx_layout() {
        let dir = tempfile::tempdir().unwrap();
        for i in [1, 0] {
            std::fs::create_dir(dir.path().join(format!("test_data_set_{i}"))).unwrap();
        }
        let sets = sample_sets(dir.path()).unwrap();
        assert_eq!(sets.len(), 2);
        assert!(sets[0].ends_with("test_data_set_0"));
        assert!(sample_sets(&dir.path().join("missing")).is_err());
    }
}
