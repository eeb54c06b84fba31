//! Facts about a whole model that several layers ask for: which ops mean it is
//! already quantized, and which external data files its tensors live in.
use std::collections::BTreeMap;

use super::{Graph, Model, Storage};

/// Ops that mean a model (or part of it) is already quantized.
pub const QUANTIZED_OPS: &[&str] = &[
    "MatMulNBits",
    "MatMulBnb4",
    "GatherBlockQuantized",
    "DequantizeLinear",
    "QuantizeLinear",
    "DynamicQuantizeLinear",
    "MatMulInteger",
    "ConvInteger",
    "QLinearMatMul",
    "QLinearConv",
    "QLinearAdd",
    "DynamicQuantizeMatMul",
    "QAttention",
    "MatMulIntegerToFloat",
];

/// `op_type` for the default domain, `domain::op_type` otherwise (the key of op
/// histograms).
pub fn op_key(domain: &str, op_type: &str) -> String {
    if domain.is_empty() {
        op_type.to_string()
    } else {
        format!("{domain}::{op_type}")
    }
}

impl Model {
    /// Every graph of the model: main graph, subgraphs, function bodies — depth first.
    pub fn for_each_graph(&self, f: &mut dyn FnMut(&Graph)) {
        fn walk(g: &Graph, f: &mut dyn FnMut(&Graph)) {
            f(g);
            for sub in g.subgraphs() {
                walk(sub, f);
            }
        }
        walk(&self.graph, f);
        for func in &self.functions {
            walk(&func.body, f);
        }
    }

    /// How many nodes of each already-quantized op ([`QUANTIZED_OPS`]) the model
    /// has, keyed as [`op_key`].
    pub fn quantized_ops(&self) -> BTreeMap<String, usize> {
        let mut found = BTreeMap::new();
        self.for_each_graph(&mut |g| {
            for (_, n) in g.nodes() {
                if QUANTIZED_OPS.contains(&n.op_type.as_str()) {
                    *found.entry(op_key(n.domain(), &n.op_type)).or_insert(0) += 1;
                }
            }
        });
        found
    }

    /// Nodes (name, domain::op) of domains onnxq has no op definitions for: passes
    /// leave them as they are, and the reference runtimes may not run them.
    pub fn unknown_domain_nodes(&self) -> Vec<(String, String)> {
        const KNOWN: &[&str] = &[
            "",
            "ai.onnx",
            "ai.onnx.ml",
            "ai.onnx.preview.training",
            "com.microsoft",
            "com.microsoft.nchwc",
            "com.microsoft.mlfeaturizers",
            "com.ms.internal.nhwc",
        ];
        let local: Vec<&str> = self
            .functions
            .iter()
            .filter_map(|f| f.domain.as_deref())
            .collect();
        let mut found = Vec::new();
        self.for_each_graph(&mut |g| {
            for (_, n) in g.nodes() {
                if !KNOWN.contains(&n.domain()) && !local.contains(&n.domain()) {
                    found.push((n.name().to_string(), op_key(n.domain(), &n.op_type)));
                }
            }
        });
        found
    }

    /// The external data files the model's tensors (initializers and tensor
    /// attributes) read, with the bytes each holds for it.
    pub fn external_data_files(&self) -> BTreeMap<String, u64> {
        let mut files = BTreeMap::new();
        self.for_each_graph(&mut |g| {
            let attr_tensors = g
                .nodes()
                .flat_map(|(_, n)| n.attributes.iter().filter_map(|a| a.t.as_ref()));
            for t in g.initializers().map(|(_, t)| t).chain(attr_tensors) {
                if let Storage::External { origin, .. } = &t.storage {
                    *files.entry(origin.location.clone()).or_insert(0) += t.stored_len() as u64;
                }
            }
        });
        files
    }
}
