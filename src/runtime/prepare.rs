//! A model file made ready for one runtime: the original when nothing is needed,
//! else a temporary copy lowered for tract and/or with extra graph outputs.
use std::path::{Path, PathBuf};

use super::expose::{add_graph_outputs, TempModel};
use super::lowering::{lower_for_tract, needs_lowering, LoweringReport};
use crate::error::Result;

pub struct Prepared {
    _temp: Option<TempModel>,
    path: PathBuf,
    /// What was lowered for tract, if anything.
    pub lowered: Option<LoweringReport>,
}

impl Prepared {
    /// The file to open a session on.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Prepares `path` for the runtime named `runtime` (`tract` lowers the ops it
/// lacks), exposing the values `extra_outputs` as graph outputs.
pub fn prepare(path: &Path, runtime: &str, extra_outputs: &[String]) -> Result<Prepared> {
    let mut model = crate::io::load(path)?;
    let lower = runtime == "tract" && needs_lowering(&model);
    if !lower && extra_outputs.is_empty() {
        return Ok(Prepared {
            _temp: None,
            path: path.to_path_buf(),
            lowered: None,
        });
    }
    let lowered = if lower {
        Some(lower_for_tract(&mut model)?)
    } else {
        None
    };
    add_graph_outputs(&mut model, extra_outputs)?;
    let name = path.file_name().map_or("model.onnx".to_string(), |n| {
        n.to_string_lossy().to_string()
    });
    let temp = TempModel::save(&model, &name)?;
    Ok(Prepared {
        path: temp.path().to_path_buf(),
        _temp: Some(temp),
        lowered,
    })
}
