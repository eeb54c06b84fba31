//! tract (tract-onnx 0.23, embedded): always available, no install.
//!
//! tract types a model from its input facts. Declared shapes with symbolic dims would
//! have to unify with the concrete inputs, so the session hands tract a copy without
//! declared input/output shapes or value_info, and sets every input fact from the
//! tensors actually fed. A plan is built once per distinct input signature.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tract_onnx::prelude::*;

use super::check::order_feeds;
use super::{model_label, HostTensor, NamedTensors, RuntimeError};
use crate::error::Result;
use crate::ir::{DType, Graph, IoSpec, Model, TypeKind};

const NAME: &str = "tract";
const HINT: &str = "; try --runtime ort (ONNX Runtime)";

/// ONNX (and ai.onnx.ml) operators tract-onnx 0.23 registers. tract dispatches on
/// the op type alone, whatever the domain.
const ONNX_OPS: &[&str] = &[
    "Abs",
    "Acos",
    "Acosh",
    "Add",
    "And",
    "ArgMax",
    "ArgMin",
    "ArrayFeatureExtractor",
    "Asin",
    "Asinh",
    "Atan",
    "Atanh",
    "Attention",
    "AveragePool",
    "BatchNormalization",
    "BitShift",
    "BitwiseAnd",
    "BitwiseNot",
    "BitwiseOr",
    "BitwiseXor",
    "BlackmanWindow",
    "Cast",
    "CastLike",
    "CategoryMapper",
    "Ceil",
    "Celu",
    "Clip",
    "Compress",
    "Concat",
    "Constant",
    "ConstantOfShape",
    "Conv",
    "ConvInteger",
    "ConvTranspose",
    "Cos",
    "Cosh",
    "CumSum",
    "DFT",
    "DepthToSpace",
    "DequantizeLinear",
    "Div",
    "Dropout",
    "DynamicQuantizeLinear",
    "Einsum",
    "Elu",
    "Equal",
    "Erf",
    "Exp",
    "Expand",
    "EyeLike",
    "Flatten",
    "Floor",
    "GRU",
    "Gather",
    "GatherElements",
    "GatherND",
    "Gelu",
    "Gemm",
    "GlobalAveragePool",
    "GlobalLpPool",
    "GlobalMaxPool",
    "Greater",
    "GreaterOrEqual",
    "GridSample",
    "GroupNormalization",
    "HammingWindow",
    "HannWindow",
    "HardSigmoid",
    "HardSwish",
    "Hardmax",
    "Identity",
    "If",
    "InstanceNormalization",
    "IsInf",
    "IsNaN",
    "LRN",
    "LSTM",
    "LayerNormalization",
    "LeakyRelu",
    "Less",
    "LessOrEqual",
    "LinearClassifier",
    "LinearRegressor",
    "Log",
    "LogSoftmax",
    "LpNormalization",
    "MatMul",
    "MatMulInteger",
    "Max",
    "MaxPool",
    "Mean",
    "MeanVarianceNormalization",
    "MelWeightMatrix",
    "Min",
    "Mish",
    "Mod",
    "Mul",
    "Multinomial",
    "Neg",
    "NonMaxSuppression",
    "NonZero",
    "Normalizer",
    "Not",
    "OneHot",
    "Or",
    "PRelu",
    "Pad",
    "Pow",
    "QLinearConv",
    "QLinearMatMul",
    "QuantizeLinear",
    "RMSNormalization",
    "RNN",
    "RandomNormal",
    "RandomNormalLike",
    "RandomUniform",
    "RandomUniformLike",
    "Range",
    "Reciprocal",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceMax",
    "ReduceMean",
    "ReduceMin",
    "ReduceProd",
    "ReduceSum",
    "ReduceSumSquare",
    "Relu",
    "Reshape",
    "Resize",
    "RotaryEmbedding",
    "Round",
    "STFT",
    "Scan",
    "Scatter",
    "ScatterElements",
    "ScatterND",
    "Selu",
    "Shape",
    "Shrink",
    "Sigmoid",
    "Sign",
    "SimplifiedLayerNormalization",
    "Sin",
    "Sinh",
    "Size",
    "Slice",
    "Softmax",
    "Softplus",
    "Softsign",
    "SpaceToDepth",
    "Split",
    "Sqrt",
    "Squeeze",
    "Sub",
    "Sum",
    "Swish",
    "Tan",
    "Tanh",
    "ThresholdedRelu",
    "Tile",
    "TopK",
    "Transpose",
    "TreeEnsembleClassifier",
    "Trilu",
    "Unsqueeze",
    "Where",
    "Xor",
];

/// com.microsoft operators tract-onnx 0.23 implements with the contrib semantics.
/// (`Attention` is not among them: tract would read it as the ONNX opset-23 op.)
const MS_OPS: &[&str] = &[
    "BiasGelu",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
    "FastGelu",
    "GatherBlockQuantized",
    "Gelu",
    "GroupQueryAttention",
    "MatMulNBits",
    "MultiHeadAttention",
    "QuantizeLinear",
    "QuickGelu",
    "RotaryEmbedding",
    "SimplifiedLayerNormalization",
    "SkipLayerNormalization",
    "SkipSimplifiedLayerNormalization",
];

/// Element types tract can hold.
fn tract_dt(d: DType) -> Option<DatumType> {
    Some(match d {
        DType::F32 => DatumType::F32,
        DType::F16 => DatumType::F16,
        DType::F64 => DatumType::F64,
        DType::I8 => DatumType::I8,
        DType::U8 => DatumType::U8,
        DType::I16 => DatumType::I16,
        DType::U16 => DatumType::U16,
        DType::I32 => DatumType::I32,
        DType::U32 => DatumType::U32,
        DType::I64 => DatumType::I64,
        DType::U64 => DatumType::U64,
        DType::Bool => DatumType::Bool,
        DType::String => DatumType::String,
        _ => return None,
    })
}

fn onnx_dt(d: DatumType) -> Option<DType> {
    Some(match d.unquantized() {
        DatumType::F32 => DType::F32,
        DatumType::F16 => DType::F16,
        DatumType::F64 => DType::F64,
        DatumType::I8 => DType::I8,
        DatumType::U8 => DType::U8,
        DatumType::I16 => DType::I16,
        DatumType::U16 => DType::U16,
        DatumType::I32 => DType::I32,
        DatumType::U32 => DType::U32,
        DatumType::I64 | DatumType::TDim => DType::I64,
        DatumType::U64 => DType::U64,
        DatumType::Bool => DType::Bool,
        DatumType::String => DType::String,
        _ => return None,
    })
}

/// The embedded tract runtime.
pub struct TractRuntime;

impl super::Runtime for TractRuntime {
    fn name(&self) -> &'static str {
        NAME
    }

    fn open(&self, path: &Path) -> Result<Box<dyn super::Session>> {
        let label = model_label(path);
        let s = super::guard::no_panic(NAME, &label, || TractSession::open(path))?;
        Ok(Box::new(s))
    }
}

/// Type and shape inference over `model` by tract (ops it lacks lowered first, as
/// for a session): an op with inputs its schema refuses, an attribute of the wrong
/// kind or shapes that cannot meet fail here with tract's explanation. Symbolic
/// dims stay symbols. Holds one serialized copy of the model while it runs.
/// `Ok(Some(why))` when tract cannot read the model at all (an op it lacks).
pub fn infer_types(model: &Model) -> Result<Option<String>> {
    let label = model
        .source
        .as_deref()
        .map_or_else(|| "model".to_string(), model_label);
    let lowered;
    let m = if super::lowering::needs_lowering(model) {
        let mut copy = model.clone();
        super::lowering::lower_for_tract(&mut copy)?;
        lowered = copy;
        &lowered
    } else {
        model
    };
    if let Some(e) = unsupported(m, &label) {
        return Ok(Some(e.to_string()));
    }
    let bytes = crate::io::to_bytes(m)?;
    tract_onnx::onnx()
        .model_for_read(&mut bytes.as_slice())
        .and_then(|typed| typed.into_typed())
        .map_err(|e| backend(&label, format!("type and shape inference failed: {e:#}")))?;
    Ok(None)
}

/// Why tract cannot run `model` (an op it lacks, an element type it cannot hold),
/// found by reading the IR before tract does.
pub fn unsupported(model: &Model, label: &str) -> Option<RuntimeError> {
    let local: Vec<(&str, &str)> = model
        .functions
        .iter()
        .map(|f| {
            (
                f.domain.as_deref().unwrap_or(""),
                f.name.as_deref().unwrap_or(""),
            )
        })
        .collect();
    first_unsupported(&model.graph, label, &local)
}

fn first_unsupported(g: &Graph, label: &str, local: &[(&str, &str)]) -> Option<RuntimeError> {
    for (v, t) in g.initializers() {
        if tract_dt(t.dtype()).is_none() {
            return Some(RuntimeError::UnsupportedDType {
                runtime: NAME,
                what: "initializer",
                name: g.value_name(v).to_string(),
                dtype: t.dtype().to_string(),
                hint: HINT,
            });
        }
    }
    for (_, n) in g.nodes() {
        let op = n.op_type.as_str();
        let domain = n.domain();
        let reason = if local.contains(&(domain, op)) {
            Some("model-local functions are not expanded by tract")
        } else {
            match domain {
                "" | "ai.onnx.ml" if ONNX_OPS.contains(&op) => None,
                "com.microsoft" if MS_OPS.contains(&op) => None,
                _ => Some("tract-onnx 0.23 has no implementation"),
            }
        };
        if let Some(reason) = reason {
            let qualified = if domain.is_empty() {
                op.to_string()
            } else {
                format!("{domain}::{op}")
            };
            return Some(RuntimeError::UnsupportedOp {
                runtime: NAME,
                model: label.to_string(),
                node: n.name().to_string(),
                op: qualified,
                reason,
                hint: HINT,
            });
        }
    }
    for sub in g.subgraphs() {
        if let Some(e) = first_unsupported(sub, label, local) {
            return Some(e);
        }
    }
    None
}

type Plan = Arc<TypedRunnableModel>;

pub struct TractSession {
    path: PathBuf,
    label: String,
    specs: Vec<IoSpec>,
    output_names: Vec<String>,
    model: InferenceModel,
    /// Position of each tract input in `specs`.
    input_map: Vec<usize>,
    plans: HashMap<Vec<(DType, Vec<usize>)>, Plan>,
}

impl TractSession {
    pub fn open(path: &Path) -> Result<TractSession> {
        let label = model_label(path);
        let mut ir = crate::io::load(path)?;
        if let Some(e) = unsupported(&ir, &label) {
            return Err(e.into());
        }
        let specs = ir.graph.input_specs();
        for s in &specs {
            if let Some(d) = s.dtype.filter(|d| tract_dt(*d).is_none()) {
                return Err(RuntimeError::UnsupportedDType {
                    runtime: NAME,
                    what: "input",
                    name: s.name.clone(),
                    dtype: d.to_string(),
                    hint: HINT,
                }
                .into());
            }
        }
        let output_names: Vec<String> = ir
            .graph
            .outputs
            .iter()
            .map(|o| ir.graph.value_name(o.value).to_string())
            .collect();
        ir.for_each_graph_mut(&mut |g| {
            g.value_info.clear();
            for io in g.inputs.iter_mut().chain(g.outputs.iter_mut()) {
                forget_shape(&mut io.info.ty);
            }
        });
        let bytes = crate::io::to_bytes(&ir)?;
        drop(ir);
        let model = tract_onnx::onnx()
            .model_for_read(&mut bytes.as_slice())
            .map_err(|e| backend(&label, format!("cannot load the model: {e:#}{HINT}")))?;
        let mut input_map = Vec::new();
        for o in model
            .input_outlets()
            .map_err(|e| backend(&label, e))?
            .iter()
        {
            let name = &model.node(o.node).name;
            let pos = specs.iter().position(|s| &s.name == name).ok_or_else(|| {
                backend(
                    &label,
                    format!("tract sees an input '{name}' the model does not declare"),
                )
            })?;
            input_map.push(pos);
        }
        Ok(TractSession {
            path: path.to_path_buf(),
            label,
            specs,
            output_names,
            model,
            input_map,
            plans: HashMap::new(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn plan(&mut self, inputs: &[&HostTensor]) -> Result<Plan> {
        let key: Vec<(DType, Vec<usize>)> =
            inputs.iter().map(|t| (t.dtype, t.shape.clone())).collect();
        if let Some(p) = self.plans.get(&key) {
            return Ok(p.clone());
        }
        let mut model = self.model.clone();
        for (i, &pos) in self.input_map.iter().enumerate() {
            let t = inputs[pos];
            let dt = tract_dt(t.dtype).ok_or_else(|| RuntimeError::UnsupportedDType {
                runtime: NAME,
                what: "input",
                name: self.specs[pos].name.clone(),
                dtype: t.dtype.to_string(),
                hint: HINT,
            })?;
            let fact = InferenceFact::dt_shape(dt, t.shape.clone());
            model = model
                .with_input_fact(i, fact)
                .map_err(|e| backend(&self.label, e))?;
        }
        let plan = model
            .into_optimized()
            .and_then(|m| m.into_runnable())
            .map_err(|e| backend(&self.label, format!("{e:#}{HINT}")))?;
        self.plans.insert(key, plan.clone());
        Ok(plan)
    }
}

/// Drops a declared tensor shape.
fn forget_shape(ty: &mut Option<crate::ir::TypeInfo>) {
    if let Some(crate::ir::TypeInfo {
        kind: TypeKind::Tensor { shape, .. },
        ..
    }) = ty
    {
        *shape = None;
    }
}

fn backend(label: &str, e: impl std::fmt::Display) -> crate::Error {
    RuntimeError::backend(NAME, label, format!("{e:#}")).into()
}

impl super::Session for TractSession {
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

impl TractSession {
    fn run_unguarded(&mut self, feeds: &[(String, HostTensor)]) -> Result<NamedTensors> {
        let ordered = order_feeds(&self.label, &self.specs, feeds)?;
        let plan = self.plan(&ordered)?;
        let mut values: TVec<TValue> = tvec!();
        for &pos in &self.input_map {
            values.push(
                to_tract(ordered[pos])
                    .map_err(|e| backend(&self.label, e))?
                    .into_tvalue(),
            );
        }
        let outputs = plan
            .run(values)
            .map_err(|e| backend(&self.label, format!("{e:#}{HINT}")))?;
        if outputs.len() != self.output_names.len() {
            return Err(backend(
                &self.label,
                format!(
                    "tract returned {} outputs, the model declares {}",
                    outputs.len(),
                    self.output_names.len()
                ),
            ));
        }
        outputs
            .into_iter()
            .zip(&self.output_names)
            .map(|(t, name)| {
                let h = from_tract(&t)
                    .map_err(|e| backend(&self.label, format!("output '{name}': {e}")))?;
                Ok((name.clone(), h))
            })
            .collect()
    }
}

fn to_tract(t: &HostTensor) -> TractResult<Tensor> {
    if t.dtype == DType::String {
        let strings: Vec<String> = t
            .strings
            .iter()
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect();
        let arr = tract_ndarray::ArrayD::from_shape_vec(t.shape.clone(), strings)?;
        return Ok(arr.into_tensor());
    }
    let dt = tract_dt(t.dtype)
        .ok_or_else(|| TractError::msg(format!("tract cannot hold {}", t.dtype)))?;
    if t.dtype == DType::Bool {
        // Rust bools must be 0 or 1; ONNX only promises non-zero.
        let norm: Vec<u8> = t.data.iter().map(|&b| (b != 0) as u8).collect();
        return unsafe { Tensor::from_raw_dt(dt, &t.shape, &norm) };
    }
    unsafe { Tensor::from_raw_dt(dt, &t.shape, &t.data) }
}

fn from_tract(t: &Tensor) -> TractResult<HostTensor> {
    let shape = t.shape().to_vec();
    let dt = t.datum_type();
    if dt == DatumType::String {
        let strings = t
            .to_plain_array_view::<String>()?
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect();
        return HostTensor::from_strings(shape, strings)
            .map_err(|e| TractError::msg(format!("{e}")));
    }
    if dt == DatumType::TDim {
        let t = t.cast_to::<i64>()?;
        return from_tract(&t);
    }
    let dtype = onnx_dt(dt)
        .ok_or_else(|| TractError::msg(format!("tract produced {dt:?}, which has no ONNX type")))?;
    let plain = t.try_as_plain_ram()?;
    HostTensor::from_bytes(dtype, shape, plain.as_bytes().to_vec())
        .map_err(|e| TractError::msg(format!("{e}")))
}
