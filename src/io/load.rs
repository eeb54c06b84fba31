//! Protobuf → IR. The model file is memory-mapped and decoded zero-copy: raw_data
//! fields stay slices of the map; external data files are mapped, never read.
use std::path::Path;

use bytes::Bytes;
use prost::Message;

use super::external::ExternalFiles;
use crate::error::{Error, Result};
use crate::ir::*;
use crate::proto as pb;

pub(crate) const EXTERNAL: i32 = 1;

/// Loads an ONNX model file (and the external data it points to) into the IR.
pub fn load(path: &Path) -> Result<Model> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let bytes = if len == 0 {
        Bytes::new()
    } else {
        // Safety: read-only map; onnxq never writes a file it has mapped.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        Bytes::from_owner(map)
    };
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut model = from_bytes_in(bytes, &dir).map_err(|e| match e {
        Error::Decode { reason, .. } => Error::Decode {
            path: path.to_path_buf(),
            reason,
        },
        e => e,
    })?;
    model.source = Some(path.to_path_buf());
    Ok(model)
}

/// Decodes a model held in memory; external data is looked up under `dir`.
pub fn from_bytes_in(bytes: Bytes, dir: &Path) -> Result<Model> {
    let decode_err = |reason: String| Error::Decode {
        path: "<memory>".into(),
        reason,
    };
    if bytes.is_empty() {
        return Err(decode_err("the file is empty".into()));
    }
    let proto = pb::ModelProto::decode(bytes)
        .map_err(|e| decode_err(format!("protobuf decoding failed: {e}")))?;
    if proto.graph.is_none() && proto.functions.is_empty() {
        return Err(decode_err(
            "no graph and no functions: not an ONNX model".into(),
        ));
    }
    if proto.ir_version.is_none() && proto.opset_import.is_empty() {
        return Err(decode_err(
            "no ir_version and no opset_import: not an ONNX model".into(),
        ));
    }
    let mut cx = Cx {
        files: ExternalFiles::new(dir),
    };
    cx.model(proto)
}

/// Refuses a main graph whose nodes read a name nothing defines: in a subgraph such
/// a name is a capture from the enclosing graph, in the main graph there is none.
fn undefined_reads(g: &Graph) -> Result<()> {
    for (_, n) in g.nodes() {
        for v in n.inputs().iter().flatten() {
            if g.value(*v).def == ValueDef::Outer {
                return Err(Error::graph(
                    g.name(),
                    format!(
                        "node '{}' ({}) reads '{}', which is not a graph input, an \
                         initializer or any node's output",
                        n.name(),
                        n.op_type,
                        g.value_name(*v)
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Decodes one TensorProto (as the ONNX test data sets store inputs and outputs).
pub fn tensor_from_pb_bytes(bytes: &[u8]) -> Result<Tensor> {
    let t = pb::TensorProto::decode(Bytes::copy_from_slice(bytes))
        .map_err(|e| Error::invalid(format!("not a TensorProto: {e}")))?;
    let mut cx = Cx {
        files: ExternalFiles::new(Path::new(".")),
    };
    cx.tensor(t)
}

struct Cx {
    files: ExternalFiles,
}

fn props(v: Vec<pb::StringStringEntryProto>) -> Vec<(String, String)> {
    v.into_iter()
        .map(|e| (e.key.unwrap_or_default(), e.value.unwrap_or_default()))
        .collect()
}

fn opsets(v: Vec<pb::OperatorSetIdProto>) -> Vec<OpsetImport> {
    v.into_iter()
        .map(|o| OpsetImport {
            domain: o.domain,
            version: o.version,
        })
        .collect()
}

impl Cx {
    fn model(&mut self, m: pb::ModelProto) -> Result<Model> {
        let has_graph = m.graph.is_some();
        let graph = match m.graph {
            Some(g) => self.graph(g)?,
            None => Graph::default(),
        };
        undefined_reads(&graph)?;
        let functions = m
            .functions
            .into_iter()
            .map(|f| self.function(f))
            .collect::<Result<_>>()?;
        let training_info = m
            .training_info
            .into_iter()
            .map(|t| {
                Ok(TrainingInfo {
                    initialization: t.initialization.map(|g| self.graph(g)).transpose()?,
                    algorithm: t.algorithm.map(|g| self.graph(g)).transpose()?,
                    initialization_binding: props(t.initialization_binding),
                    update_binding: props(t.update_binding),
                })
            })
            .collect::<Result<_>>()?;
        Ok(Model {
            ir_version: m.ir_version,
            opset_import: opsets(m.opset_import),
            producer_name: m.producer_name,
            producer_version: m.producer_version,
            domain: m.domain,
            model_version: m.model_version,
            doc_string: m.doc_string,
            graph,
            has_graph,
            metadata_props: props(m.metadata_props),
            training_info,
            functions,
            configuration: m
                .configuration
                .into_iter()
                .map(|c| Bytes::from(c.encode_to_vec()))
                .collect(),
            source: None,
        })
    }

    fn function(&mut self, f: pb::FunctionProto) -> Result<Function> {
        let mut body = Graph::new(f.name.as_deref().unwrap_or(""));
        body.name = None;
        for name in &f.input {
            body.add_input(name, ValueInfo::default())?;
        }
        for n in f.node {
            self.node(&mut body, n)?;
        }
        for name in &f.output {
            let v = body.value_or_outer(name);
            body.outputs.push(GraphIo {
                value: v,
                info: ValueInfo::default(),
            });
        }
        for vi in f.value_info {
            let (name, info) = self.value_info(vi)?;
            let v = body.value_or_outer(&name);
            body.value_info.push(GraphIo { value: v, info });
        }
        Ok(Function {
            name: f.name,
            domain: f.domain,
            overload: f.overload,
            attribute: f.attribute,
            attribute_proto: f
                .attribute_proto
                .into_iter()
                .map(|a| self.attribute(a))
                .collect::<Result<_>>()?,
            body,
            doc_string: f.doc_string,
            opset_import: opsets(f.opset_import),
            metadata_props: props(f.metadata_props),
        })
    }

    fn graph(&mut self, g: pb::GraphProto) -> Result<Graph> {
        let mut graph = Graph::default();
        graph.name = g.name;
        graph.doc_string = g.doc_string;
        graph.metadata_props = props(g.metadata_props);
        for vi in g.input {
            let (name, info) = self.value_info(vi)?;
            graph.add_input(&name, info)?;
        }
        for t in g.initializer {
            let t = self.tensor(t)?;
            graph.add_initializer(t)?;
        }
        for s in g.sparse_initializer {
            let s = self.sparse(s)?;
            graph.add_sparse_initializer(s)?;
        }
        for n in g.node {
            self.node(&mut graph, n)?;
        }
        for vi in g.output {
            let (name, info) = self.value_info(vi)?;
            let v = graph.value_or_outer(&name);
            graph.outputs.push(GraphIo { value: v, info });
        }
        for vi in g.value_info {
            let (name, info) = self.value_info(vi)?;
            let v = graph.value_or_outer(&name);
            graph.value_info.push(GraphIo { value: v, info });
        }
        graph.quantization_annotation = g
            .quantization_annotation
            .into_iter()
            .map(|a| TensorAnnotation {
                tensor_name: a.tensor_name,
                quant_parameter_tensor_names: props(a.quant_parameter_tensor_names),
            })
            .collect();
        Ok(graph)
    }

    fn node(&mut self, graph: &mut Graph, n: pb::NodeProto) -> Result<NodeId> {
        let inputs: Vec<Option<ValueId>> = n
            .input
            .iter()
            .map(|name| (!name.is_empty()).then(|| graph.value_or_outer(name)))
            .collect();
        let attributes = n
            .attribute
            .into_iter()
            .map(|a| self.attribute(a))
            .collect::<Result<Vec<_>>>()
            .map_err(|e| Error::Node {
                node: n.name.clone().unwrap_or_default(),
                op: n.op_type.clone().unwrap_or_default(),
                reason: e.to_string(),
            })?;
        let spec = NodeSpec {
            op_type: n.op_type.unwrap_or_default(),
            domain: n.domain,
            name: n.name,
            inputs,
            outputs: n.output,
            attributes,
            metadata_props: props(n.metadata_props),
        };
        let id = graph.add_node(spec)?;
        let node = graph.node_extras(id);
        node.overload = n.overload;
        node.doc_string = n.doc_string;
        node.device_configurations = n
            .device_configurations
            .into_iter()
            .map(|c| Bytes::from(c.encode_to_vec()))
            .collect();
        Ok(id)
    }

    fn attribute(&mut self, a: pb::AttributeProto) -> Result<Attribute> {
        Ok(Attribute {
            name: a.name.unwrap_or_default(),
            ref_attr_name: a.ref_attr_name,
            doc_string: a.doc_string,
            ty: a.r#type,
            f: a.f,
            i: a.i,
            s: a.s,
            t: a.t.map(|t| self.tensor(t)).transpose()?,
            g: a.g.map(|g| self.graph(g).map(Box::new)).transpose()?,
            sparse_tensor: a.sparse_tensor.map(|s| self.sparse(s)).transpose()?,
            tp: a.tp.map(type_info),
            floats: a.floats,
            ints: a.ints,
            strings: a.strings,
            tensors: a
                .tensors
                .into_iter()
                .map(|t| self.tensor(t))
                .collect::<Result<_>>()?,
            graphs: a
                .graphs
                .into_iter()
                .map(|g| self.graph(g))
                .collect::<Result<_>>()?,
            sparse_tensors: a
                .sparse_tensors
                .into_iter()
                .map(|s| self.sparse(s))
                .collect::<Result<_>>()?,
            type_protos: a.type_protos.into_iter().map(type_info).collect(),
        })
    }

    fn value_info(&mut self, vi: pb::ValueInfoProto) -> Result<(String, ValueInfo)> {
        Ok((
            vi.name.unwrap_or_default(),
            ValueInfo {
                ty: vi.r#type.map(type_info),
                doc_string: vi.doc_string,
                metadata_props: props(vi.metadata_props),
            },
        ))
    }

    fn sparse(&mut self, s: pb::SparseTensorProto) -> Result<SparseTensor> {
        Ok(SparseTensor {
            values: s.values.map(|t| self.tensor(t)).transpose()?,
            indices: s.indices.map(|t| self.tensor(t)).transpose()?,
            dims: s.dims,
        })
    }

    fn tensor(&mut self, t: pb::TensorProto) -> Result<Tensor> {
        let name = t.name.clone().unwrap_or_default();
        let fields = TypedFields {
            float_data: t.float_data,
            int32_data: t.int32_data,
            string_data: t.string_data,
            int64_data: t.int64_data,
            double_data: t.double_data,
            uint64_data: t.uint64_data,
        };
        let storage = if t.data_location == Some(EXTERNAL) {
            let origin = ExternalFiles::parse_ref(&name, props(t.external_data))?;
            let bytes = self.files.slice(&name, &origin)?;
            Storage::External { bytes, origin }
        } else if fields.is_empty() && t.raw_data.is_some() {
            Storage::Raw(t.raw_data.unwrap_or_default())
        } else {
            Storage::Fields {
                fields: Box::new(fields),
                raw: t.raw_data,
            }
        };
        let tensor = Tensor {
            name: t.name,
            dtype_code: t.data_type,
            dims: t.dims,
            storage,
            doc_string: t.doc_string,
            segment: t.segment.map(|s| Segment {
                begin: s.begin,
                end: s.end,
            }),
            data_location: t.data_location,
            metadata_props: props(t.metadata_props),
            external_hint: None,
            quantized_rows_of: Default::default(),
        };
        if let DType::Other(code) = tensor.dtype() {
            return Err(Error::tensor(
                &name,
                format!("unknown data type code {code}"),
            ));
        }
        if tensor.numel().is_err() {
            return Err(Error::tensor(
                &name,
                format!("invalid dims {:?}", tensor.dims),
            ));
        }
        if tensor.is_external() {
            // Catch short files and wrong lengths now, not when a pass reads them.
            tensor.raw_bytes()?;
        }
        Ok(tensor)
    }
}

pub(crate) fn type_info(t: pb::TypeProto) -> TypeInfo {
    use pb::type_proto::Value as V;
    let shape = |s: Option<pb::TensorShapeProto>| {
        s.map(|s| {
            s.dim
                .into_iter()
                .map(|d| ShapeDim {
                    dim: match d.value {
                        Some(pb::tensor_shape_proto::dimension::Value::DimValue(v)) => {
                            Dim::Value(v)
                        }
                        Some(pb::tensor_shape_proto::dimension::Value::DimParam(p)) => {
                            Dim::Param(p)
                        }
                        None => Dim::Unknown,
                    },
                    denotation: d.denotation,
                })
                .collect()
        })
    };
    let boxed = |t: Option<Box<pb::TypeProto>>| t.map(|t| Box::new(type_info(*t)));
    let kind = match t.value {
        Some(V::TensorType(tt)) => TypeKind::Tensor {
            elem_type: tt.elem_type,
            shape: shape(tt.shape),
        },
        Some(V::SparseTensorType(tt)) => TypeKind::SparseTensor {
            elem_type: tt.elem_type,
            shape: shape(tt.shape),
        },
        Some(V::SequenceType(s)) => TypeKind::Sequence(boxed(s.elem_type)),
        Some(V::MapType(m)) => TypeKind::Map {
            key_type: m.key_type,
            value_type: boxed(m.value_type),
        },
        Some(V::OptionalType(o)) => TypeKind::Optional(boxed(o.elem_type)),
        Some(V::OpaqueType(o)) => TypeKind::Opaque {
            domain: o.domain,
            name: o.name,
        },
        None => TypeKind::Unset,
    };
    TypeInfo {
        kind,
        denotation: t.denotation,
    }
}
