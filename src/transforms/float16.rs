//! float32 → float16 (or bfloat16) conversion of a whole model, the behaviour of
//! onnxruntime's float16 converter (`onnxruntime.transformers.float16`).
//!
//! Matches: every float32 value of the main graph (types found by propagating the
//! declared types of inputs, initializers and value_info through the ops). Each
//! node either runs in the target type or stays float32 ("blocked": its op is in
//! `op-block-list`, its name matches `node-block-list`, it calls a model-local
//! function, or its op only takes float32 scales, e.g. QLinear*, or a
//! DequantizeLinear below opset 19). Emits: float32 initializers and Constant values
//! converted (float16 clamps to ±max-finite and raises nonzero magnitudes below
//! min-positive, both counted), Cast/ConstantOfShape/Random* type attributes
//! retargeted, and one Cast per value and direction only where a value crosses
//! between a converted and a blocked region (so no Cast pair ever cancels).
//! Initializers read by a blocked node stay float32 (converted readers get a Cast),
//! as the converter does. Inputs a schema keeps float32 (Resize's scales) stay
//! float32. With `keep-io-types` (default), graph inputs and outputs keep their
//! names and float32 types, with Casts at the boundary. Requires: no If/Loop/Scan
//! body holding float values (refused, naming the node).
use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::ir::{
    Attribute, DType, Graph, Model, NodeId, NodeSpec, Tensor, TypeKind, ValueDef, ValueId,
};
use crate::quant::convert::FloatType;
use crate::rewrite::{Pass, PassCx, PassOutcome, PASS_KEY};
use crate::transforms::common::select::glob_match;

/// onnxruntime's float16 converter's default op block list (ops left in float32).
pub const DEFAULT_OP_BLOCK_LIST: &[&str] = &[
    "ArrayFeatureExtractor",
    "Binarizer",
    "CastMap",
    "CategoryMapper",
    "DictVectorizer",
    "FeatureVectorizer",
    "Imputer",
    "LabelEncoder",
    "LinearClassifier",
    "LinearRegressor",
    "Normalizer",
    "OneHotEncoder",
    "RandomUniformLike",
    "SVMClassifier",
    "SVMRegressor",
    "Scaler",
    "TreeEnsembleClassifier",
    "TreeEnsembleRegressor",
    "TreeEnsemble",
    "ZipMap",
    "NonMaxSuppression",
    "TopK",
    "RoiAlign",
    "Range",
    "CumSum",
    "Min",
    "Max",
    "Upsample",
];

/// Ops whose float inputs are float32 by their schema (scales of the integer ops):
/// always blocked, whatever the block list says.
const FLOAT32_ONLY_OPS: &[&str] = &[
    "DynamicQuantizeLinear",
    "QLinearConv",
    "QLinearMatMul",
    "QLinearAdd",
    "QLinearMul",
    "QLinearSigmoid",
    "QLinearLeakyRelu",
    "QLinearConcat",
    "QLinearGlobalAveragePool",
    "QLinearAveragePool",
    "QLinearSoftmax",
    "QLinearReduceMean",
    "QGemm",
    "QAttention",
    "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat",
    "DynamicQuantizeLSTM",
];

/// Inputs that stay float32 in a converted node: (op, input slots).
const FLOAT32_INPUTS: &[(&str, &[usize])] = &[
    ("Resize", &[2]),
    ("GroupNorm", &[1, 2]),
    ("SkipGroupNorm", &[1, 2]),
];

/// Outputs that are float32 whatever the input type: (op, output slots).
const FLOAT32_OUTPUTS: &[(&str, &[usize])] = &[
    ("LayerNormalization", &[1, 2]),
    ("SimplifiedLayerNormalization", &[1]),
    ("SkipLayerNormalization", &[1, 2]),
    ("SkipSimplifiedLayerNormalization", &[1, 2]),
];

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    #[default]
    Float16,
    Bfloat16,
}

impl Target {
    fn dtype(self) -> DType {
        match self {
            Target::Float16 => DType::F16,
            Target::Bfloat16 => DType::BF16,
        }
    }
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Float16Config {
    /// float16 (default) or bfloat16.
    pub to: Target,
    /// Graph inputs and outputs stay float32 (Casts at the boundary).
    pub keep_io_types: bool,
    /// Op types left in float32; unset = [`DEFAULT_OP_BLOCK_LIST`].
    pub op_block_list: Option<Vec<String>>,
    /// Node names (globs) left in float32.
    pub node_block_list: Vec<String>,
    /// float16: nonzero magnitudes below this are raised to it.
    pub min_positive: f32,
    /// float16: magnitudes above this (infinities too) are clamped to it.
    pub max_finite: f32,
}

impl Default for Float16Config {
    fn default() -> Self {
        Float16Config {
            to: Target::Float16,
            keep_io_types: true,
            op_block_list: None,
            node_block_list: Vec::new(),
            min_positive: 5.96e-8,
            max_finite: 65504.0,
        }
    }
}

pub const FLOAT16_KEYS: &[&str] = &[
    "to",
    "keep-io-types",
    "op-block-list",
    "node-block-list",
    "min-positive",
    "max-finite",
];

pub struct Float16 {
    config: Float16Config,
    blocked_ops: HashSet<String>,
}

impl Float16 {
    pub fn new(config: Float16Config) -> Result<Self> {
        if !(config.min_positive >= 0.0 && config.max_finite > config.min_positive) {
            return Err(Error::invalid(format!(
                "float16: min-positive {} and max-finite {} must satisfy 0 <= min-positive < max-finite",
                config.min_positive, config.max_finite
            )));
        }
        let blocked_ops = match &config.op_block_list {
            Some(l) => l.iter().cloned().collect(),
            None => DEFAULT_OP_BLOCK_LIST
                .iter()
                .map(|s| s.to_string())
                .collect(),
        };
        Ok(Float16 {
            config,
            blocked_ops,
        })
    }
}

/// The element type a TypeInfo declares, if it is a dense tensor.
fn declared(ty: &Option<crate::ir::TypeInfo>) -> Option<DType> {
    match ty.as_ref().map(|t| &t.kind) {
        Some(TypeKind::Tensor {
            elem_type: Some(e), ..
        }) => Some(DType::from_code(*e)),
        _ => None,
    }
}

fn retype(ty: &mut Option<crate::ir::TypeInfo>, from: DType, to: DType) {
    if let Some(crate::ir::TypeInfo {
        kind: TypeKind::Tensor { elem_type, .. },
        ..
    }) = ty
    {
        if *elem_type == Some(from.code()) {
            *elem_type = Some(to.code());
        }
    }
}

fn attr_dtype(n: &crate::ir::Node, name: &str) -> Option<DType> {
    n.attr_int(name)
        .filter(|&c| c != 0)
        .map(|c| DType::from_code(c as i32))
}

/// The dtype of a Constant's value, if the node has a dense one.
fn constant_dtype(n: &crate::ir::Node) -> Option<DType> {
    let a = n.attributes.first()?;
    match a.name.as_str() {
        "value" => a.t.as_ref().map(Tensor::dtype),
        "value_float" | "value_floats" => Some(DType::F32),
        "value_int" | "value_ints" => Some(DType::I64),
        "value_string" | "value_strings" => Some(DType::String),
        _ => None,
    }
}

/// Output element types of node `n` given its input types.
fn out_dtypes(n: &crate::ir::Node, ins: &[Option<DType>], model_opset: i64) -> Vec<Option<DType>> {
    let k = n.outputs().len();
    let i = |s: usize| ins.get(s).copied().flatten();
    let all = |d: Option<DType>| vec![d; k];
    let op = n.op_type.as_str();
    match op {
        "Cast" => all(attr_dtype(n, "to")),
        "CastLike" => all(i(1)),
        "Constant" => all(constant_dtype(n)),
        "ConstantOfShape" => all(Some(
            n.attr("value")
                .and_then(|a| a.t.as_ref())
                .map_or(DType::F32, Tensor::dtype),
        )),
        "Shape" | "Size" | "NonZero" | "ArgMax" | "ArgMin" => all(Some(DType::I64)),
        "Equal" | "Less" | "Greater" | "LessOrEqual" | "GreaterOrEqual" | "And" | "Or" | "Xor"
        | "Not" | "IsNaN" | "IsInf" => all(Some(DType::Bool)),
        "TopK" | "MaxPool" => vec![i(0), Some(DType::I64)],
        "Unique" => {
            let mut v = all(Some(DType::I64));
            if let Some(f) = v.first_mut() {
                *f = i(0);
            }
            v
        }
        "Dropout" => vec![i(0), Some(DType::Bool)],
        "QuantizeLinear" => all(i(2).or(attr_dtype(n, "output_dtype")).or(Some(DType::U8))),
        "DequantizeLinear" => all(attr_dtype(n, "output_dtype").or(i(1))),
        "DynamicQuantizeLinear" => vec![Some(DType::U8), Some(DType::F32), Some(DType::U8)],
        "MatMulInteger" | "ConvInteger" => all(Some(DType::I32)),
        "GatherBlockQuantized" => all(i(2)),
        "MatMulIntegerToFloat" => all(i(2)),
        "Where" => all(i(1)),
        "OneHot" => all(i(2)),
        "RandomNormal" | "RandomUniform" => all(attr_dtype(n, "dtype").or(Some(DType::F32))),
        "RandomNormalLike" | "RandomUniformLike" | "EyeLike" | "Bernoulli" => {
            all(attr_dtype(n, "dtype").or(i(0)))
        }
        "Multinomial" => all(attr_dtype(n, "dtype").or(Some(DType::I32))),
        _ => {
            let mut v = all(i(0));
            if let Some((_, slots)) = FLOAT32_OUTPUTS.iter().find(|(o, _)| *o == op) {
                for &s in *slots {
                    if s < v.len() && i(0).is_some_and(DType::is_float) {
                        v[s] = Some(DType::F32);
                    }
                }
            }
            let _ = model_opset;
            v
        }
    }
}

/// Element types of the values of `g` (declared where the file declares them,
/// propagated through the ops otherwise).
fn infer_dtypes(g: &Graph, opset: i64) -> Result<HashMap<ValueId, DType>> {
    let mut d: HashMap<ValueId, DType> = HashMap::new();
    for io in g.inputs.iter().chain(&g.outputs).chain(&g.value_info) {
        if let Some(t) = declared(&io.info.ty) {
            d.entry(io.value).or_insert(t);
        }
    }
    for (v, t) in g.initializers() {
        d.insert(v, t.dtype());
    }
    for id in g.sorted_node_ids()? {
        let n = g.node(id);
        let ins: Vec<Option<DType>> = n
            .inputs()
            .iter()
            .map(|v| v.and_then(|v| d.get(&v).copied()))
            .collect();
        let outs = out_dtypes(n, &ins, opset);
        for (slot, v) in n.outputs().iter().enumerate() {
            if let (Some(v), Some(Some(t))) = (v, outs.get(slot)) {
                d.entry(*v).or_insert(*t);
            }
        }
    }
    Ok(d)
}

/// Whether a subgraph holds float32 values (declared, initializers, constants, casts).
fn mentions_float(g: &Graph) -> bool {
    let io = g
        .inputs
        .iter()
        .chain(&g.outputs)
        .chain(&g.value_info)
        .any(|io| declared(&io.info.ty) == Some(DType::F32));
    let inits = g.initializers().any(|(_, t)| t.dtype() == DType::F32);
    let nodes = g.nodes().any(|(_, n)| match n.op_type.as_str() {
        "Cast" => attr_dtype(n, "to") == Some(DType::F32),
        "Constant" => constant_dtype(n) == Some(DType::F32),
        "ConstantOfShape" => n
            .attr("value")
            .and_then(|a| a.t.as_ref())
            .is_none_or(|t| t.dtype() == DType::F32),
        _ => false,
    });
    io || inits || nodes || g.subgraphs().any(mentions_float)
}

/// Counts of one conversion.
#[derive(Default)]
struct Stats {
    clamped: u64,
    raised: u64,
    tensors: u64,
    bytes_before: u64,
    bytes_after: u64,
}

impl Float16 {
    fn blocked(
        &self,
        model: &Model,
        n: &crate::ir::Node,
        local: &HashSet<(String, String)>,
    ) -> Option<String> {
        let op = n.op_type.as_str();
        if self.blocked_ops.contains(op) {
            return Some(format!("op {op} is in the op block list"));
        }
        if let Some(p) = self
            .config
            .node_block_list
            .iter()
            .find(|p| glob_match(p, n.name()))
        {
            return Some(format!("node matches node-block-list '{p}'"));
        }
        if FLOAT32_ONLY_OPS.contains(&op) {
            return Some(format!("{op} takes float32 scales only"));
        }
        if matches!(op, "DequantizeLinear" | "QuantizeLinear") && n.domain().is_empty() {
            let v = model.opset("").unwrap_or(1);
            if v < 19 {
                return Some(format!(
                    "{op} below opset 19 (model: {v}) takes float32 scales only"
                ));
            }
        }
        if op == "Constant" && constant_dtype(n).is_none() {
            return Some("Constant with a sparse value".into());
        }
        if local.contains(&(n.domain().to_string(), n.op_type.clone())) {
            return Some("calls a model-local function".into());
        }
        None
    }

    fn convert_tensor(&self, t: &Tensor, name: &str, stats: &mut Stats) -> Result<Tensor> {
        let target = self.config.to;
        let mut values = t.to_f32()?;
        if target == Target::Float16 {
            let (lo, hi) = (self.config.min_positive, self.config.max_finite);
            for v in &mut values {
                let a = v.abs();
                if a > hi {
                    *v = hi.copysign(*v);
                    stats.clamped += 1;
                } else if a > 0.0 && a < lo {
                    *v = lo.copysign(*v);
                    stats.raised += 1;
                }
            }
        }
        let ft = match target {
            Target::Float16 => FloatType::F16,
            Target::Bfloat16 => FloatType::BF16,
        };
        let bytes = ft.to_le_bytes(&values);
        stats.tensors += 1;
        stats.bytes_before += values.len() as u64 * 4;
        stats.bytes_after += bytes.len() as u64;
        let mut out =
            Tensor::from_raw(name, target.dtype(), t.dims.clone(), bytes.into()).stored_like(t);
        out.name = t.name.clone();
        out.doc_string = t.doc_string.clone();
        Ok(out)
    }
}

impl Pass for Float16 {
    fn name(&self) -> &'static str {
        "float16"
    }

    fn requires(&self, model: &Model) -> Result<()> {
        refuse_float_subgraphs(&model.graph)
    }

    fn run(&self, model: &mut Model, _cx: &mut PassCx) -> Result<PassOutcome> {
        refuse_float_subgraphs(&model.graph)?;
        let mut outcome = PassOutcome::new(self.name());
        let local: HashSet<(String, String)> = model
            .functions
            .iter()
            .map(|f| {
                (
                    f.domain.clone().unwrap_or_default(),
                    f.name.clone().unwrap_or_default(),
                )
            })
            .collect();
        let opset = model.opset("").unwrap_or(1);
        let g = &model.graph;
        let dtypes = infer_dtypes(g, opset)?;
        let target = self.config.to.dtype();
        let is_f32 = |v: ValueId| dtypes.get(&v) == Some(&DType::F32);

        // Which nodes stay float32, and why.
        let mut blocked: BTreeMap<NodeId, String> = BTreeMap::new();
        for (id, n) in g.nodes() {
            let touches_float = n
                .inputs()
                .iter()
                .chain(n.outputs())
                .flatten()
                .any(|&v| is_f32(v));
            if !touches_float {
                continue;
            }
            if let Some(why) = self.blocked(model, n, &local) {
                outcome.skip(n.name(), format!("kept float32: {why}"));
                blocked.insert(id, why);
            }
        }
        let mut f32_inputs: HashSet<(NodeId, usize)> = HashSet::new();
        for (id, n) in g.nodes() {
            for slot in 0..n.inputs().len() {
                let fixed = FLOAT32_INPUTS
                    .iter()
                    .any(|(o, slots)| *o == n.op_type && slots.contains(&slot));
                if blocked.contains_key(&id) || fixed {
                    f32_inputs.insert((id, slot));
                }
            }
        }
        let wants_f32 = |node: NodeId, slot: usize| f32_inputs.contains(&(node, slot));
        let keep_io = self.config.keep_io_types;

        // Home type of each float32 value: does it hold the target type under its
        // own name?
        let mut float_values: Vec<ValueId> = dtypes
            .iter()
            .filter(|(_, d)| **d == DType::F32)
            .map(|(v, _)| *v)
            .collect();
        float_values.sort();
        for &v in &float_values {
            if let Some(crate::ir::Use::Capture(n)) = g
                .value(v)
                .uses()
                .iter()
                .find(|u| matches!(u, crate::ir::Use::Capture(_)))
            {
                return Err(Error::graph(
                    g.name(),
                    format!(
                        "float16: {} node '{}' captures float32 value '{}' in a subgraph; \
                         converting subgraphs is not supported",
                        g.node(*n).op_type,
                        g.node(*n).name(),
                        g.value_name(v)
                    ),
                ));
            }
        }
        let mut home_target: HashSet<ValueId> = HashSet::new();
        for &v in &float_values {
            let val = g.value(v);
            let readers_want_f32 = val.uses().iter().any(|u| match u {
                crate::ir::Use::Input(n, s) => wants_f32(*n, *s),
                crate::ir::Use::Capture(_) => true,
            });
            let converted = match val.def {
                ValueDef::Input => !keep_io && val.init.is_none(),
                ValueDef::Initializer => !readers_want_f32,
                ValueDef::Node(n, slot) => {
                    let node = g.node(n);
                    let op = node.op_type.as_str();
                    let fixed = FLOAT32_OUTPUTS
                        .iter()
                        .any(|(o, slots)| *o == op && slots.contains(&slot))
                        || (op == "DynamicQuantizeLinear");
                    if blocked.contains_key(&n) || fixed {
                        false
                    } else if op == "Constant" {
                        !readers_want_f32
                    } else {
                        true
                    }
                }
                _ => false,
            };
            if converted {
                home_target.insert(v);
            }
        }

        // ---- mutation ----
        let label = self.name();
        let mut stats = Stats::default();
        let mut casts = 0u64;
        let mut retargeted = 0u64;
        let g = &mut model.graph;
        // Initializers and Constant values.
        for &v in &float_values {
            if !home_target.contains(&v) {
                continue;
            }
            if let Some(t) = g.value(v).init.clone() {
                let name = g.value_name(v).to_string();
                let nt = self.convert_tensor(&t, &name, &mut stats)?;
                g.set_initializer(v, nt);
            }
        }
        for id in g.node_ids() {
            if blocked.contains_key(&id) {
                continue;
            }
            let outs_target = g
                .node(id)
                .outputs()
                .iter()
                .flatten()
                .any(|v| home_target.contains(v));
            if !outs_target {
                continue;
            }
            let op = g.node(id).op_type.clone();
            let tcode = target.code() as i64;
            match op.as_str() {
                "Constant" => {
                    let n = g.node(id);
                    let a = &n.attributes[0];
                    let t = match a.name.as_str() {
                        "value" => a.t.clone().expect("dense Constant value"),
                        "value_float" => Tensor::from_f32("", vec![], &[a.f.unwrap_or(0.0)]),
                        _ => Tensor::from_f32("", vec![a.floats.len() as i64], &a.floats),
                    };
                    let nt = self.convert_tensor(
                        &t,
                        t.name.clone().unwrap_or_default().as_str(),
                        &mut stats,
                    )?;
                    let node = g.node_extras(id);
                    node.attributes = vec![Attribute::tensor("value", nt)];
                    retargeted += 1;
                }
                "ConstantOfShape" => {
                    let t = g
                        .node(id)
                        .attr("value")
                        .and_then(|a| a.t.clone())
                        .unwrap_or_else(|| Tensor::from_f32("", vec![1], &[0.0]));
                    let nt = self.convert_tensor(
                        &t,
                        t.name.clone().unwrap_or_default().as_str(),
                        &mut stats,
                    )?;
                    g.node_extras(id).set_attr(Attribute::tensor("value", nt));
                    retargeted += 1;
                }
                "Cast" => {
                    g.node_extras(id).set_attr(Attribute::int("to", tcode));
                    retargeted += 1;
                }
                "RandomNormal" | "RandomUniform" | "RandomNormalLike" | "RandomUniformLike"
                | "EyeLike" | "Bernoulli" => {
                    let n = g.node(id);
                    if attr_dtype(n, "dtype") == Some(DType::F32)
                        || (matches!(op.as_str(), "RandomNormal" | "RandomUniform")
                            && n.attr("dtype").is_none())
                    {
                        g.node_extras(id).set_attr(Attribute::int("dtype", tcode));
                        retargeted += 1;
                    }
                }
                "DequantizeLinear"
                    if attr_dtype(g.node(id), "output_dtype") == Some(DType::F32) =>
                {
                    g.node_extras(id)
                        .set_attr(Attribute::int("output_dtype", tcode));
                    retargeted += 1;
                }
                _ => {}
            }
        }
        let mut f32_copy: HashMap<ValueId, ValueId> = HashMap::new();
        // Graph outputs: float32 under their names when keep-io-types, else the
        // type their producer now computes.
        for i in 0..g.outputs.len() {
            let v = g.outputs[i].value;
            if !home_target.contains(&v) {
                continue;
            }
            if !keep_io {
                retype(&mut g.outputs[i].info.ty, DType::F32, target);
                continue;
            }
            let name = g.value_name(v).to_string();
            let inner = g.fresh_name(&format!("{name}_{}", target.name()));
            g.rename_value(v, &inner)?;
            let node_name = g.fresh_node_name(&format!("{name}_cast_fp32"));
            let cast = g.add_node(
                NodeSpec::new("", "Cast")
                    .name(node_name)
                    .input(v)
                    .output(name)
                    .attr(Attribute::int("to", DType::F32.code() as i64))
                    .meta(PASS_KEY, label),
            )?;
            let cv = g.node(cast).output(0).expect("Cast output");
            g.outputs[i].value = cv;
            f32_copy.insert(v, cv);
            casts += 1;
        }
        // Casts where a value crosses regions: one per value and direction.
        for &v in &float_values {
            let home_is_target = home_target.contains(&v);
            let readers: Vec<(NodeId, usize)> = g
                .value(v)
                .uses()
                .iter()
                .filter_map(|u| match u {
                    crate::ir::Use::Input(n, s) => Some((*n, *s)),
                    crate::ir::Use::Capture(_) => None,
                })
                .filter(|&(n, s)| wants_f32(n, s) == home_is_target)
                .collect();
            if readers.is_empty() {
                continue;
            }
            let (to, suffix) = if home_is_target {
                (DType::F32, "fp32")
            } else {
                (target, if target == DType::F16 { "fp16" } else { "bf16" })
            };
            if home_is_target {
                if let Some(&cv) = f32_copy.get(&v) {
                    for (n, s) in readers {
                        g.set_input(n, s, Some(cv));
                    }
                    continue;
                }
            }
            let base = g.value_name(v).to_string();
            let out = g.fresh_name(&format!("{base}_{suffix}"));
            let name = g.fresh_node_name(&format!("{base}_cast_{suffix}"));
            let cast = g.add_node(
                NodeSpec::new("", "Cast")
                    .name(name)
                    .input(v)
                    .output(out)
                    .attr(Attribute::int("to", to.code() as i64))
                    .meta(PASS_KEY, label),
            )?;
            let cv = g.node(cast).output(0).expect("Cast output");
            let first = readers[0].0;
            for (n, s) in readers {
                g.set_input(n, s, Some(cv));
            }
            g.place_before(cast, first);
            casts += 1;
        }
        g.toposort()?;
        // Declared types of converted values.
        for io in g.inputs.iter_mut().chain(g.value_info.iter_mut()) {
            if home_target.contains(&io.value) {
                retype(&mut io.info.ty, DType::F32, target);
            }
        }
        let converted_nodes = g
            .nodes()
            .filter(|(id, n)| {
                !blocked.contains_key(id)
                    && n.outputs()
                        .iter()
                        .flatten()
                        .any(|v| home_target.contains(v))
            })
            .count();
        outcome.count("nodes converted", converted_nodes as u64);
        outcome.count("nodes kept float32", blocked.len() as u64);
        outcome.count("casts inserted", casts);
        outcome.count("tensors converted", stats.tensors);
        outcome.count("type attributes retargeted", retargeted);
        outcome.count("values clamped to max-finite", stats.clamped);
        outcome.count("values raised to min-positive", stats.raised);
        if stats.tensors > 0 {
            outcome.notes.push(format!(
                "{} float32 tensors ({} bytes) stored as {} ({} bytes)",
                stats.tensors,
                stats.bytes_before,
                target.name(),
                stats.bytes_after
            ));
        }
        if stats.clamped + stats.raised > 0 {
            outcome.notes.push(format!(
                "{} values clamped to ±{} and {} nonzero values raised to ±{} (outside float16's range)",
                stats.clamped, self.config.max_finite, stats.raised, self.config.min_positive
            ));
        }
        outcome.changed = !home_target.is_empty() || casts > 0;
        Ok(outcome)
    }
}

/// Refuses a graph whose If/Loop/Scan bodies hold float32 values or capture them.
fn refuse_float_subgraphs(g: &Graph) -> Result<()> {
    for (_, n) in g.nodes() {
        if n.attributes
            .iter()
            .flat_map(|a| a.subgraphs())
            .any(mentions_float)
        {
            return Err(Error::graph(
                g.name(),
                format!(
                    "float16: {} node '{}' has a subgraph with float32 values; converting \
                     subgraphs is not supported",
                    n.op_type,
                    n.name()
                ),
            ));
        }
    }
    Ok(())
}
