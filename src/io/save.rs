//! IR → protobuf, with the tensor layout decided here: inline, kept where it was, or
//! moved to external data files; protobuf's 2 GB limit handled by moving the largest
//! initializers out. All files are written atomically, data files before the model;
//! data files an overwritten output still reads are replaced under fresh names (see
//! `generation`), so a kill never pairs a model with the wrong data.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use prost::Message;

use super::generation::DataNames;
use super::load::EXTERNAL;
use super::sink::{release_pages, AtomicFile, PendingRename, ProtoSink};
use crate::error::{Error, Result};
use crate::ir::*;
use crate::proto as pb;

/// Protobuf cannot encode or parse messages of 2 GiB or more.
pub const PROTOBUF_LIMIT: u64 = (1 << 31) - 1;

/// Where tensor data goes.
#[derive(Clone, Debug, PartialEq)]
pub enum Layout {
    /// Tensors that were external stay external: the input's `<model>.data` becomes
    /// `<output>.data`, other data files keep their names (all go to `<output>.data`
    /// when writing next to the input); new tensors follow the tensor they replace;
    /// everything else stays inline.
    Keep,
    /// Everything inline (fails beyond the protobuf limit).
    Inline,
    /// Initializers of at least `threshold` bytes go to one data file `file`
    /// (relative to the model), the rest inline.
    External { file: String, threshold: usize },
    /// Tensors read from external data point at the same bytes (location, offset,
    /// length) and are not written: for a temporary model whose directory links to
    /// the source's data files. Everything else as `Keep`.
    Reference,
}

#[derive(Clone, Debug)]
pub struct SaveOptions {
    pub layout: Layout,
    /// Largest model file to write; beyond it the largest initializers move to
    /// external data. Injectable so tests can exercise the 2 GB path cheaply.
    pub size_limit: u64,
}

impl Default for SaveOptions {
    fn default() -> Self {
        SaveOptions {
            layout: Layout::Keep,
            size_limit: PROTOBUF_LIMIT,
        }
    }
}

/// What a save wrote.
#[derive(Clone, Debug, Default)]
pub struct SaveReport {
    pub model_bytes: u64,
    /// External data files (relative names) and their sizes.
    pub data_files: BTreeMap<String, u64>,
    /// Initializers moved to external data because of the size limit.
    pub moved_for_limit: usize,
}

const SMALL_ALIGN: u64 = 64;
/// Large tensors start on a page so runtimes can map them in place.
const PAGE_ALIGN: u64 = 4096;
const PAGE_ALIGN_MIN: usize = 64 * 1024;
/// Mapped tensors are copied out this much at a time, releasing pages after each.
const COPY_SLICE: usize = 8 << 20;
/// A margin under the limit for the non-tensor part of the model.
const LIMIT_MARGIN: u64 = 16 << 20;

/// Saves `model` to `path` (and its external data next to it).
pub fn save(model: &Model, path: &Path, opts: &SaveOptions) -> Result<SaveReport> {
    let out_name = path
        .file_name()
        .ok_or_else(|| Error::invalid(format!("{}: not a file path", path.display())))?
        .to_string_lossy()
        .to_string();
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let default_file = format!("{out_name}.data");
    let rename_origins = writes_next_to_source(model, path);

    // Dry run: decide placement, measure what stays inline.
    let mut plan = Placer {
        layout: opts.layout.clone(),
        default_file: default_file.clone(),
        rename_origins,
        source_data: model
            .source
            .as_ref()
            .and_then(|p| p.file_name())
            .map(|n| format!("{}.data", n.to_string_lossy())),
        force_min: usize::MAX,
        sinks: None,
        inline_inits: Vec::new(),
        moved_for_limit: 0,
        names: DataNames::in_dir(&dir),
    };
    let dry = plan.model(model)?;
    let size = dry.encoded_len() as u64;
    drop(dry);
    if size > opts.size_limit {
        if plan.layout == Layout::Inline {
            return Err(Error::invalid(format!(
                "{}: the model is {size} bytes inline, over the {} byte protobuf limit; \
                 save with external data instead",
                path.display(),
                opts.size_limit
            )));
        }
        let mut sizes = std::mem::take(&mut plan.inline_inits);
        sizes.sort_unstable_by(|a, b| b.cmp(a));
        let target = opts
            .size_limit
            .saturating_sub(LIMIT_MARGIN.min(opts.size_limit / 4));
        let mut remaining = size;
        let mut force_min = usize::MAX;
        for s in sizes {
            if remaining <= target {
                break;
            }
            remaining = remaining.saturating_sub(s as u64);
            force_min = s;
        }
        plan.force_min = force_min;
    }

    plan.inline_inits.clear();
    plan.sinks = Some(DataSinks {
        dir: dir.clone(),
        files: BTreeMap::new(),
    });
    let proto = plan.model(model)?;
    let mut data = plan.sinks.take().expect("set above");
    let mut report = SaveReport {
        moved_for_limit: plan.moved_for_limit,
        ..Default::default()
    };
    let mut pending: Vec<PendingRename> = Vec::new();
    for (name, f) in std::mem::take(&mut data.files) {
        report.data_files.insert(name, f.position());
        pending.push(f.finish()?);
    }
    let mut out = AtomicFile::create(path)?;
    let mut sink = ProtoSink::new(&mut out);
    proto
        .encode(&mut sink)
        .map_err(|e| Error::invalid(format!("{}: encoding failed: {e}", path.display())))?;
    sink.finish()?;
    report.model_bytes = out.position();
    if report.model_bytes > opts.size_limit {
        return Err(Error::invalid(format!(
            "{}: the model part is still {} bytes after moving tensors out (limit {})",
            path.display(),
            report.model_bytes,
            opts.size_limit
        )));
    }
    let model_file = out.finish()?;
    for p in pending {
        p.commit()?;
    }
    model_file.commit()?;
    plan.names.remove_displaced();
    Ok(report)
}

/// Serialises a model with every tensor inline (for runtimes fed from memory).
pub fn to_bytes(model: &Model) -> Result<Vec<u8>> {
    let mut plan = Placer::inline();
    let proto = plan.model(model)?;
    if proto.encoded_len() as u64 > PROTOBUF_LIMIT {
        return Err(Error::invalid(
            "the model is over 2 GB inline; save it to a file with external data",
        ));
    }
    Ok(proto.encode_to_vec())
}

/// Serialises one tensor as a TensorProto (data inline).
pub fn tensor_to_pb_bytes(t: &Tensor) -> Result<Vec<u8>> {
    let mut plan = Placer::inline();
    Ok(plan.tensor(t, false)?.encode_to_vec())
}

/// True when the output goes into the input's folder under another name: keeping
/// external file names there would overwrite the data the input model points at.
fn writes_next_to_source(model: &Model, out: &Path) -> bool {
    let Some(src) = &model.source else {
        return false;
    };
    let canon_dir = |p: &Path| {
        p.parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .canonicalize()
            .ok()
    };
    let same_dir = canon_dir(src).is_some() && canon_dir(src) == canon_dir(out);
    let same_file = src.file_name() == out.file_name();
    same_dir && !same_file
}

struct DataSinks {
    dir: PathBuf,
    files: BTreeMap<String, AtomicFile>,
}

impl DataSinks {
    /// Appends a tensor's bytes; when they are a file map (`mapped`), in slices whose
    /// pages are dropped once written, so a large tensor never becomes resident whole.
    fn append(&mut self, location: &str, tensor: &str, bytes: &[u8], mapped: bool) -> Result<u64> {
        if !self.files.contains_key(location) {
            let path = super::external::contained_path(&self.dir, location).map_err(|reason| {
                Error::ExternalData {
                    tensor: tensor.to_string(),
                    location: location.to_string(),
                    reason,
                }
            })?;
            self.files
                .insert(location.to_string(), AtomicFile::create(&path)?);
        }
        let f = self.files.get_mut(location).expect("inserted above");
        f.align_to(if bytes.len() >= PAGE_ALIGN_MIN {
            PAGE_ALIGN
        } else {
            SMALL_ALIGN
        })?;
        let offset = f.position();
        if mapped {
            for part in bytes.chunks(COPY_SLICE) {
                f.write_all(part)?;
                release_pages(part);
            }
        } else {
            f.write_all(bytes)?;
        }
        Ok(offset)
    }
}

struct Placer {
    layout: Layout,
    default_file: String,
    rename_origins: bool,
    /// `<input model>.data`: the conventional data file of the input, renamed after
    /// the output so two outputs in one folder never share (and overwrite) it.
    source_data: Option<String>,
    /// Initializers at least this large go external regardless (size limit).
    force_min: usize,
    /// None in the dry run.
    sinks: Option<DataSinks>,
    /// Sizes of initializers placed inline (dry run).
    inline_inits: Vec<usize>,
    moved_for_limit: usize,
    names: DataNames,
}

impl Placer {
    /// Everything inline, nothing written anywhere but the returned proto.
    fn inline() -> Placer {
        Placer {
            layout: Layout::Inline,
            default_file: String::new(),
            rename_origins: false,
            source_data: None,
            force_min: usize::MAX,
            sinks: None,
            inline_inits: Vec::new(),
            moved_for_limit: 0,
            names: DataNames::default(),
        }
    }
}

fn entries(props: &[(String, String)]) -> Vec<pb::StringStringEntryProto> {
    props
        .iter()
        .map(|(k, v)| pb::StringStringEntryProto {
            key: Some(k.clone()),
            value: Some(v.clone()),
        })
        .collect()
}

fn opsets(v: &[OpsetImport]) -> Vec<pb::OperatorSetIdProto> {
    v.iter()
        .map(|o| pb::OperatorSetIdProto {
            domain: o.domain.clone(),
            version: o.version,
        })
        .collect()
}

impl Placer {
    fn model(&mut self, m: &Model) -> Result<pb::ModelProto> {
        Ok(pb::ModelProto {
            ir_version: m.ir_version,
            opset_import: opsets(&m.opset_import),
            producer_name: m.producer_name.clone(),
            producer_version: m.producer_version.clone(),
            domain: m.domain.clone(),
            model_version: m.model_version,
            doc_string: m.doc_string.clone(),
            graph: if m.has_graph || m.graph.node_count() > 0 {
                Some(self.graph(&m.graph)?)
            } else {
                None
            },
            metadata_props: entries(&m.metadata_props),
            training_info: m
                .training_info
                .iter()
                .map(|t| {
                    Ok(pb::TrainingInfoProto {
                        initialization: t
                            .initialization
                            .as_ref()
                            .map(|g| self.graph(g))
                            .transpose()?,
                        algorithm: t.algorithm.as_ref().map(|g| self.graph(g)).transpose()?,
                        initialization_binding: entries(&t.initialization_binding),
                        update_binding: entries(&t.update_binding),
                    })
                })
                .collect::<Result<_>>()?,
            functions: m
                .functions
                .iter()
                .map(|f| self.function(f))
                .collect::<Result<_>>()?,
            configuration: m
                .configuration
                .iter()
                .map(|b| {
                    pb::DeviceConfigurationProto::decode(b.clone())
                        .map_err(|e| Error::invalid(e.to_string()))
                })
                .collect::<Result<_>>()?,
        })
    }

    fn function(&mut self, f: &Function) -> Result<pb::FunctionProto> {
        let body = &f.body;
        Ok(pb::FunctionProto {
            name: f.name.clone(),
            input: body
                .inputs
                .iter()
                .map(|io| body.value_name(io.value).to_string())
                .collect(),
            output: body
                .outputs
                .iter()
                .map(|io| body.value_name(io.value).to_string())
                .collect(),
            attribute: f.attribute.clone(),
            attribute_proto: f
                .attribute_proto
                .iter()
                .map(|a| self.attribute(a))
                .collect::<Result<_>>()?,
            node: self.nodes(body)?,
            doc_string: f.doc_string.clone(),
            opset_import: opsets(&f.opset_import),
            domain: f.domain.clone(),
            overload: f.overload.clone(),
            value_info: body
                .value_info
                .iter()
                .map(|io| value_info(body, io))
                .collect(),
            metadata_props: entries(&f.metadata_props),
        })
    }

    fn nodes(&mut self, g: &Graph) -> Result<Vec<pb::NodeProto>> {
        let ids = if g.needs_sort() {
            g.sorted_node_ids()?
        } else {
            g.node_ids()
        };
        let name_of =
            |v: &Option<ValueId>| v.map(|v| g.value_name(v).to_string()).unwrap_or_default();
        ids.into_iter()
            .map(|id| {
                let n = g.node(id);
                Ok(pb::NodeProto {
                    input: n.inputs().iter().map(name_of).collect(),
                    output: n.outputs().iter().map(name_of).collect(),
                    name: n.name.clone(),
                    op_type: Some(n.op_type.clone()),
                    domain: n.domain.clone(),
                    overload: n.overload.clone(),
                    attribute: n
                        .attributes
                        .iter()
                        .map(|a| self.attribute(a))
                        .collect::<Result<_>>()?,
                    doc_string: n.doc_string.clone(),
                    metadata_props: entries(&n.metadata_props),
                    device_configurations: n
                        .device_configurations
                        .iter()
                        .map(|b| {
                            pb::NodeDeviceConfigurationProto::decode(b.clone())
                                .map_err(|e| Error::invalid(e.to_string()))
                        })
                        .collect::<Result<_>>()?,
                })
            })
            .collect()
    }

    fn graph(&mut self, g: &Graph) -> Result<pb::GraphProto> {
        Ok(pb::GraphProto {
            node: self.nodes(g)?,
            name: g.name.clone(),
            initializer: g
                .initializers()
                .map(|(_, t)| self.tensor(t, true))
                .collect::<Result<_>>()?,
            sparse_initializer: g
                .sparse_initializers
                .iter()
                .map(|s| self.sparse(s))
                .collect::<Result<_>>()?,
            doc_string: g.doc_string.clone(),
            input: g.inputs.iter().map(|io| value_info(g, io)).collect(),
            output: g.outputs.iter().map(|io| value_info(g, io)).collect(),
            value_info: g.value_info.iter().map(|io| value_info(g, io)).collect(),
            quantization_annotation: g
                .quantization_annotation
                .iter()
                .map(|a| pb::TensorAnnotation {
                    tensor_name: a.tensor_name.clone(),
                    quant_parameter_tensor_names: entries(&a.quant_parameter_tensor_names),
                })
                .collect(),
            metadata_props: entries(&g.metadata_props),
        })
    }

    fn attribute(&mut self, a: &Attribute) -> Result<pb::AttributeProto> {
        Ok(pb::AttributeProto {
            name: Some(a.name.clone()),
            ref_attr_name: a.ref_attr_name.clone(),
            doc_string: a.doc_string.clone(),
            r#type: a.ty,
            f: a.f,
            i: a.i,
            s: a.s.clone(),
            t: a.t.as_ref().map(|t| self.tensor(t, false)).transpose()?,
            g: a.g.as_deref().map(|g| self.graph(g)).transpose()?,
            sparse_tensor: a
                .sparse_tensor
                .as_ref()
                .map(|s| self.sparse(s))
                .transpose()?,
            tp: a.tp.as_ref().map(type_proto),
            floats: a.floats.clone(),
            ints: a.ints.clone(),
            strings: a.strings.clone(),
            tensors: a
                .tensors
                .iter()
                .map(|t| self.tensor(t, false))
                .collect::<Result<_>>()?,
            graphs: a
                .graphs
                .iter()
                .map(|g| self.graph(g))
                .collect::<Result<_>>()?,
            sparse_tensors: a
                .sparse_tensors
                .iter()
                .map(|s| self.sparse(s))
                .collect::<Result<_>>()?,
            type_protos: a.type_protos.iter().map(type_proto).collect(),
        })
    }

    fn sparse(&mut self, s: &SparseTensor) -> Result<pb::SparseTensorProto> {
        Ok(pb::SparseTensorProto {
            values: s
                .values
                .as_ref()
                .map(|t| self.tensor(t, false))
                .transpose()?,
            indices: s
                .indices
                .as_ref()
                .map(|t| self.tensor(t, false))
                .transpose()?,
            dims: s.dims.clone(),
        })
    }

    fn map_location(&self, location: &str) -> String {
        if self.rename_origins || self.source_data.as_deref() == Some(location) {
            self.default_file.clone()
        } else {
            location.to_string()
        }
    }

    /// The data file a tensor goes to (a fresh name when that file exists), or None
    /// for inline.
    fn placement(&mut self, t: &Tensor, initializer: bool) -> Option<String> {
        let location = self.requested_placement(t, initializer)?;
        Some(self.names.name_for(&location))
    }

    fn requested_placement(&mut self, t: &Tensor, initializer: bool) -> Option<String> {
        let size = t.stored_len();
        // As onnx does: only tensors held as raw bytes move to external data; typed
        // fields (float_data, ...) stay where the producer put them.
        let numeric = !matches!(t.dtype(), DType::String | DType::Undefined)
            && !matches!(t.storage, Storage::Fields { .. });
        let decided = match (&self.layout, &t.storage) {
            (Layout::Inline, _) => None,
            (Layout::Keep, Storage::External { origin, .. }) => {
                Some(self.map_location(&origin.location))
            }
            (Layout::Keep, _) if initializer && numeric => {
                t.external_hint.as_deref().map(|h| self.map_location(h))
            }
            (Layout::Keep | Layout::Reference, _) => None,
            (Layout::External { file, threshold }, _)
                if initializer && numeric && size >= *threshold =>
            {
                Some(file.clone())
            }
            (Layout::External { .. }, _) => None,
        };
        if decided.is_none() && initializer && numeric && self.layout != Layout::Inline {
            if size >= self.force_min {
                self.moved_for_limit += 1;
                return Some(self.default_file.clone());
            }
            if self.sinks.is_none() {
                self.inline_inits.push(size);
            }
        }
        decided
    }

    fn tensor(&mut self, t: &Tensor, initializer: bool) -> Result<pb::TensorProto> {
        let mut p = pb::TensorProto {
            dims: t.dims.clone(),
            data_type: t.dtype_code,
            segment: t.segment.as_ref().map(|s| pb::tensor_proto::Segment {
                begin: s.begin,
                end: s.end,
            }),
            name: t.name.clone(),
            doc_string: t.doc_string.clone(),
            data_location: t.data_location,
            metadata_props: entries(&t.metadata_props),
            ..Default::default()
        };
        if let (Layout::Reference, Storage::External { origin, bytes }) = (&self.layout, &t.storage)
        {
            let mut ext = vec![
                ("location".to_string(), origin.location.clone()),
                ("offset".to_string(), origin.offset.to_string()),
                ("length".to_string(), bytes.len().to_string()),
            ];
            ext.extend(
                origin
                    .entries
                    .iter()
                    .filter(|(k, _)| !matches!(k.as_str(), "location" | "offset" | "length"))
                    .cloned(),
            );
            p.external_data = entries(&ext);
            p.data_location = Some(EXTERNAL);
            return Ok(p);
        }
        match self.placement(t, initializer) {
            Some(location) => {
                let raw = t.raw_bytes()?;
                // Mapped input and spilled tensors are files: the pages the copy
                // faults in are dropped as it goes, so memory stays near one slice
                // however large the model.
                let mapped = match &t.storage {
                    Storage::External { .. } => true,
                    Storage::Raw(b) => super::spill::is_spilled(b),
                    Storage::Fields { .. } => false,
                };
                let offset = match &mut self.sinks {
                    Some(s) => s.append(&location, t.name(), &raw, mapped)?,
                    None => 0,
                };
                let mut ext = vec![
                    ("location".to_string(), location),
                    ("offset".to_string(), offset.to_string()),
                    ("length".to_string(), raw.len().to_string()),
                ];
                // Other keys (checksum, ...) describe the same bytes: keep them.
                if let Storage::External { origin, .. } = &t.storage {
                    ext.extend(
                        origin
                            .entries
                            .iter()
                            .filter(|(k, _)| {
                                !matches!(k.as_str(), "location" | "offset" | "length")
                            })
                            .cloned(),
                    );
                }
                p.external_data = entries(&ext);
                p.data_location = Some(EXTERNAL);
            }
            None => match &t.storage {
                Storage::Raw(b) => p.raw_data = Some(b.clone()),
                Storage::External { bytes, .. } => {
                    p.raw_data = Some(bytes.clone());
                    p.data_location = None;
                }
                Storage::Fields { fields, raw } => {
                    let f = fields.as_ref().clone();
                    p.float_data = f.float_data;
                    p.int32_data = f.int32_data;
                    p.string_data = f.string_data;
                    p.int64_data = f.int64_data;
                    p.double_data = f.double_data;
                    p.uint64_data = f.uint64_data;
                    p.raw_data = raw.clone();
                }
            },
        }
        Ok(p)
    }
}

fn value_info(g: &Graph, io: &GraphIo) -> pb::ValueInfoProto {
    pb::ValueInfoProto {
        name: Some(g.value_name(io.value).to_string()),
        r#type: io.info.ty.as_ref().map(type_proto),
        doc_string: io.info.doc_string.clone(),
        metadata_props: entries(&io.info.metadata_props),
    }
}

pub(crate) fn type_proto(t: &TypeInfo) -> pb::TypeProto {
    use pb::type_proto as tp;
    let shape = |s: &Option<Vec<ShapeDim>>| {
        s.as_ref().map(|dims| pb::TensorShapeProto {
            dim: dims
                .iter()
                .map(|d| pb::tensor_shape_proto::Dimension {
                    denotation: d.denotation.clone(),
                    value: match &d.dim {
                        Dim::Value(v) => {
                            Some(pb::tensor_shape_proto::dimension::Value::DimValue(*v))
                        }
                        Dim::Param(p) => Some(pb::tensor_shape_proto::dimension::Value::DimParam(
                            p.clone(),
                        )),
                        Dim::Unknown => None,
                    },
                })
                .collect(),
        })
    };
    let boxed = |t: &Option<Box<TypeInfo>>| t.as_ref().map(|t| Box::new(type_proto(t)));
    let value = match &t.kind {
        TypeKind::Tensor {
            elem_type,
            shape: s,
        } => Some(tp::Value::TensorType(tp::Tensor {
            elem_type: *elem_type,
            shape: shape(s),
        })),
        TypeKind::SparseTensor {
            elem_type,
            shape: s,
        } => Some(tp::Value::SparseTensorType(tp::SparseTensor {
            elem_type: *elem_type,
            shape: shape(s),
        })),
        TypeKind::Sequence(e) => Some(tp::Value::SequenceType(Box::new(tp::Sequence {
            elem_type: boxed(e),
        }))),
        TypeKind::Map {
            key_type,
            value_type,
        } => Some(tp::Value::MapType(Box::new(tp::Map {
            key_type: *key_type,
            value_type: boxed(value_type),
        }))),
        TypeKind::Optional(e) => Some(tp::Value::OptionalType(Box::new(tp::Optional {
            elem_type: boxed(e),
        }))),
        TypeKind::Opaque { domain, name } => Some(tp::Value::OpaqueType(tp::Opaque {
            domain: domain.clone(),
            name: name.clone(),
        })),
        TypeKind::Unset => None,
    };
    pb::TypeProto {
        value,
        denotation: t.denotation.clone(),
    }
}
