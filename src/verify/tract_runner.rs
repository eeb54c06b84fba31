//! Running a model file with tract (embedded, always available).
use std::path::Path;

use tract_onnx::prelude::*;

use super::inputs::{Data, Feed, HostTensor};
use crate::error::{Error, Result};

pub struct TractModel {
    path: std::path::PathBuf,
    model: InferenceModel,
}

fn err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Runtime {
        runtime: "tract".into(),
        reason: format!("{}: {e:#}", path.display()),
    }
}

impl TractModel {
    pub fn load(path: &Path) -> Result<Self> {
        // tract unifies declared shapes with the concrete input shapes; symbolic
        // names in value_info, inputs and outputs would clash, so it gets a copy
        // without them.
        let mut ir = crate::io::load(path)?;
        ir.for_each_graph_mut(&mut |g| {
            g.value_info.clear();
            for io in g.outputs.iter_mut().chain(g.inputs.iter_mut()) {
                if let Some(crate::ir::TypeInfo {
                    kind: crate::ir::TypeKind::Tensor { shape, .. },
                    ..
                }) = &mut io.info.ty
                {
                    *shape = None;
                }
            }
        });
        let bytes = crate::io::to_bytes(&ir)?;
        drop(ir);
        let model = tract_onnx::onnx()
            .model_for_read(&mut bytes.as_slice())
            .map_err(|e| err(path, format!("{e:#}")))?;
        Ok(TractModel {
            path: path.to_path_buf(),
            model,
        })
    }

    /// Runs on `feeds` (matched to the model's inputs by name); outputs in order.
    pub fn run(&self, feeds: &[Feed]) -> Result<Vec<(String, HostTensor)>> {
        let mut model = self.model.clone();
        let mut inputs: TVec<TValue> = tvec!();
        let input_names: Vec<String> = model
            .input_outlets()
            .map_err(|e| err(&self.path, e))?
            .iter()
            .map(|o| model.node(o.node).name.clone())
            .collect();
        for (i, name) in input_names.iter().enumerate() {
            let f = feeds
                .iter()
                .find(|f| &f.name == name)
                .ok_or_else(|| err(&self.path, format!("no value for input '{name}'")))?;
            let t: Tensor = match &f.data {
                Data::F32(v) => Tensor::from_shape(&f.shape, v),
                Data::F16(v) => Tensor::from_shape(&f.shape, v),
                Data::I64(v) => Tensor::from_shape(&f.shape, v),
                Data::I32(v) => Tensor::from_shape(&f.shape, v),
                Data::Bool(v) => Tensor::from_shape(&f.shape, v),
            }
            .map_err(|e| err(&self.path, e))?;
            model = model
                .with_input_fact(i, InferenceFact::from(t.clone()).without_value())
                .map_err(|e| err(&self.path, e))?;
            inputs.push(t.into_tvalue());
        }
        let plan = model
            .into_optimized()
            .and_then(|m| m.into_runnable())
            .map_err(|e| err(&self.path, format!("{e:#}")))?;
        let outputs = plan
            .run(inputs)
            .map_err(|e| err(&self.path, format!("{e:#}")))?;
        let names: Vec<String> = self
            .model
            .output_outlets()
            .map_err(|e| err(&self.path, e))?
            .iter()
            .map(|o| {
                self.model
                    .outlet_label(*o)
                    .map(str::to_string)
                    .unwrap_or_else(|| self.model.node(o.node).name.clone())
            })
            .collect();
        outputs
            .into_iter()
            .zip(names)
            .map(|(t, name)| {
                let is_float = t.datum_type().is_float();
                let f = t.cast_to::<f32>().map_err(|e| err(&self.path, e))?;
                let values: Vec<f32> = f
                    .to_plain_array_view::<f32>()
                    .map_err(|e| err(&self.path, e))?
                    .iter()
                    .copied()
                    .collect();
                Ok((
                    name.clone(),
                    HostTensor {
                        name,
                        shape: t.shape().to_vec(),
                        values,
                        is_float,
                    },
                ))
            })
            .collect()
    }
}
