//! The in-memory model: what `io::load` builds, passes edit and `io::save` writes.
mod attr;
pub mod describe;
mod dtype;
mod facts;
mod graph;
pub mod print;
mod tensor;
mod types;

pub use attr::{kind as attr_kind, AttrValue, Attribute};
pub use dtype::DType;
pub use facts::{op_key, QUANTIZED_OPS};
pub use graph::{
    Graph, GraphIo, Node, NodeId, NodeSpec, TensorAnnotation, Use, Value, ValueDef, ValueId,
};
pub use tensor::{
    f32_to_le, float_bytes, float_tensor, numel, scale_dtype, ExternalRef, Segment, SparseTensor,
    Storage, Tensor, TypedFields,
};
pub use types::{Dim, IoSpec, ShapeDim, TypeInfo, TypeKind, ValueInfo};

use std::path::PathBuf;

/// OperatorSetIdProto.
#[derive(Clone, Debug, PartialEq)]
pub struct OpsetImport {
    pub domain: Option<String>,
    pub version: Option<i64>,
}

impl OpsetImport {
    pub fn domain(&self) -> &str {
        match self.domain.as_deref() {
            None | Some("ai.onnx") => "",
            Some(d) => d,
        }
    }
}

/// FunctionProto: a model-local function. Its body is a `Graph` whose inputs and
/// outputs carry only names.
#[derive(Clone, Debug, Default)]
pub struct Function {
    pub name: Option<String>,
    pub domain: Option<String>,
    pub overload: Option<String>,
    pub attribute: Vec<String>,
    pub attribute_proto: Vec<Attribute>,
    pub body: Graph,
    pub doc_string: Option<String>,
    pub opset_import: Vec<OpsetImport>,
    pub metadata_props: Vec<(String, String)>,
}

/// TrainingInfoProto.
#[derive(Clone, Debug, Default)]
pub struct TrainingInfo {
    pub initialization: Option<Graph>,
    pub algorithm: Option<Graph>,
    pub initialization_binding: Vec<(String, String)>,
    pub update_binding: Vec<(String, String)>,
}

/// ModelProto in IR form.
#[derive(Clone, Debug, Default)]
pub struct Model {
    pub ir_version: Option<i64>,
    pub opset_import: Vec<OpsetImport>,
    pub producer_name: Option<String>,
    pub producer_version: Option<String>,
    pub domain: Option<String>,
    pub model_version: Option<i64>,
    pub doc_string: Option<String>,
    pub graph: Graph,
    /// Whether the file had a `graph` field at all (a functions-only library has none).
    pub has_graph: bool,
    pub metadata_props: Vec<(String, String)>,
    pub training_info: Vec<TrainingInfo>,
    pub functions: Vec<Function>,
    /// DeviceConfigurationProto messages, kept encoded.
    pub configuration: Vec<bytes::Bytes>,
    /// The file this model was loaded from, if any.
    pub source: Option<PathBuf>,
}

impl Model {
    /// The opset version imported for `domain` ("" = the default ONNX domain).
    pub fn opset(&self, domain: &str) -> Option<i64> {
        self.opset_import
            .iter()
            .find(|o| o.domain() == domain)
            .and_then(|o| o.version)
    }

    /// Imports `domain` at `version` unless it is already imported at `version` or
    /// later; returns whether anything changed.
    pub fn require_opset(&mut self, domain: &str, version: i64) -> bool {
        match self.opset_import.iter_mut().find(|o| o.domain() == domain) {
            Some(o) if o.version.unwrap_or(0) >= version => false,
            Some(o) => {
                o.version = Some(version);
                true
            }
            None => {
                self.opset_import.push(OpsetImport {
                    domain: Some(domain.to_string()),
                    version: Some(version),
                });
                true
            }
        }
    }

    /// Runs `f` on every graph (as `for_each_graph_mut`), stopping at the first error.
    pub fn try_for_each_graph_mut<E>(
        &mut self,
        f: &mut dyn FnMut(&mut Graph) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut err = None;
        self.for_each_graph_mut(&mut |g| {
            if err.is_none() {
                err = f(g).err();
            }
        });
        err.map_or(Ok(()), Err)
    }

    /// Every graph of the model: main graph, subgraphs, function bodies — depth first.
    pub fn for_each_graph_mut(&mut self, f: &mut dyn FnMut(&mut Graph)) {
        fn walk(g: &mut Graph, f: &mut dyn FnMut(&mut Graph)) {
            f(g);
            for sub in g.subgraphs_mut() {
                walk(sub, f);
            }
        }
        walk(&mut self.graph, f);
        for func in &mut self.functions {
            walk(&mut func.body, f);
        }
    }
}
