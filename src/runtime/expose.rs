//! Reading intermediate values: runtimes only return graph outputs, so the values
//! a caller wants (calibration activations, a layer to debug) become extra graph
//! outputs of a temporary copy of the model.
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::ir::{GraphIo, Model, TypeInfo, ValueInfo};

/// Appends the values named `names` to the main graph's outputs (those already
/// outputs are left alone). Each keeps the type its value_info declares, if any.
pub fn add_graph_outputs(model: &mut Model, names: &[String]) -> Result<()> {
    let g = &mut model.graph;
    for name in names {
        let v = g.find(name).ok_or_else(|| {
            Error::graph(
                g.name(),
                format!("no value named '{name}' to expose as an output"),
            )
        })?;
        if g.is_graph_output(v) {
            continue;
        }
        let info = g.info(v).cloned().unwrap_or_else(|| ValueInfo {
            ty: g.initializer(v).map(|t| {
                let dims = t.dims.clone();
                TypeInfo::tensor(t.dtype(), &dims)
            }),
            ..Default::default()
        });
        g.outputs.push(GraphIo { value: v, info });
    }
    Ok(())
}

/// A model copy in a temporary directory, deleted on drop.
pub struct TempModel {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl TempModel {
    /// Saves `model` (external data included) into a fresh temporary directory.
    pub fn save(model: &Model, file_name: &str) -> Result<TempModel> {
        let dir = tempfile::Builder::new()
            .prefix("onnxq-")
            .tempdir()
            .map_err(|e| Error::io(std::env::temp_dir(), e))?;
        let path = dir.path().join(file_name);
        crate::io::save(model, &path, &crate::io::SaveOptions::default())?;
        Ok(TempModel { _dir: dir, path })
    }

    /// Saves `model` into a fresh temporary directory without copying its external
    /// data: the directory gets a hard link to each data file the model reads (next
    /// to `model.source`) and the tensors point at their bytes there. A piece of a
    /// large model then costs its graph, not a second copy of its weights. Falls back
    /// to [`TempModel::save`] when a link cannot be made (another file system).
    pub fn save_referencing(model: &Model, file_name: &str) -> Result<TempModel> {
        let files = model.external_data_files();
        let source_dir = model.source.as_deref().and_then(Path::parent).map(|d| {
            if d.as_os_str().is_empty() {
                Path::new(".")
            } else {
                d
            }
        });
        let Some(source_dir) = source_dir.filter(|_| !files.is_empty()) else {
            return TempModel::save(model, file_name);
        };
        let dir = tempfile::Builder::new()
            .prefix("onnxq-")
            .tempdir()
            .map_err(|e| Error::io(std::env::temp_dir(), e))?;
        for location in files.keys() {
            let link = dir.path().join(location);
            let linked = link
                .parent()
                .is_some_and(|p| std::fs::create_dir_all(p).is_ok())
                && !file_name.starts_with(location.as_str())
                && std::fs::hard_link(source_dir.join(location), &link).is_ok();
            if !linked {
                return TempModel::save(model, file_name);
            }
        }
        let path = dir.path().join(file_name);
        let opts = crate::io::SaveOptions {
            layout: crate::io::Layout::Reference,
            ..Default::default()
        };
        crate::io::save(model, &path, &opts)?;
        Ok(TempModel { _dir: dir, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A temporary copy of the model at `path` whose graph outputs also include the
/// values `names` (in that order, after the original outputs). Weights stored as
/// external data are copied with it.
pub fn with_outputs(path: &Path, names: &[String]) -> Result<TempModel> {
    let mut m = crate::io::load(path)?;
    add_graph_outputs(&mut m, names)?;
    let file = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "model.onnx".into());
    TempModel::save(&m, &file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn a_referencing_copy_reads_the_same_weights_without_copying_them() {
        let src = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/external/model.onnx"
        ));
        let m = crate::io::load(src).unwrap();
        let t = TempModel::save_referencing(&m, "piece.onnx").unwrap();
        let dir = t.path().parent().unwrap();
        for (location, _) in m.external_data_files() {
            let (a, b) = (
                std::fs::metadata(src.parent().unwrap().join(&location)).unwrap(),
                std::fs::metadata(dir.join(&location)).unwrap(),
            );
            // The same file (a hard link), not a copy.
            use std::os::unix::fs::MetadataExt;
            assert_eq!((a.dev(), a.ino()), (b.dev(), b.ino()), "{location}");
        }
        let again = crate::io::load(t.path()).unwrap();
        for (v, x) in m.graph.initializers() {
            let name = m.graph.value_name(v);
            let y = again
                .graph
                .initializer(again.graph.find(name).unwrap())
                .unwrap();
            assert_eq!(x.raw_bytes().unwrap(), y.raw_bytes().unwrap(), "{name}");
        }
        assert!(std::fs::read_dir(dir).unwrap().count() <= 1 + m.external_data_files().len());
    }
}
