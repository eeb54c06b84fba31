//! bitsandbytes-style 4-bit (NF4 / FP4) weights as com.microsoft MatMulBnb4.
//!
//! Matches: MatMul with a constant 2-D float weight (as `weight-only` does; Gemm is
//! left alone because MatMulBnb4 has no bias). Emits: MatMulBnb4(A, B, absmax) with
//! B the [N, K] weight flattened and block-quantized, absmax per block.
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::ir::float_tensor;
use crate::ir::{Attribute, DType, Graph, Model, NodeSpec, Tensor};
use crate::quant::bnb4::QuantType;
use crate::rewrite::matchers::{constant, weight_matmul};
use crate::rewrite::{Pass, PassCx, PassOutcome, PASS_KEY};
use crate::transforms::common::nbits::read_f32;
use crate::transforms::common::qtypes::remove_orphans;
use crate::transforms::common::select::{NodeOverride, Selection};

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Bnb4Config {
    pub quant_type: QuantTypeName,
    pub block_size: usize,
    pub exclude: Vec<String>,
}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum QuantTypeName {
    #[default]
    Nf4,
    Fp4,
}

impl Default for Bnb4Config {
    fn default() -> Self {
        Bnb4Config {
            quant_type: QuantTypeName::Nf4,
            block_size: 64,
            exclude: Vec::new(),
        }
    }
}

pub const BNB4_KEYS: &[&str] = &["quant-type", "block-size", "exclude"];

pub struct Bnb4 {
    config: Bnb4Config,
    selection: Selection,
}

impl Bnb4 {
    pub fn new(config: Bnb4Config) -> Result<Self> {
        if config.block_size < 16 || !config.block_size.is_power_of_two() {
            return Err(Error::invalid(format!(
                "block size {} must be a power of two, at least 16",
                config.block_size
            )));
        }
        let selection = Selection::new(&config.exclude, &["MatMul".to_string()], None)?;
        Ok(Bnb4 { config, selection })
    }

    fn run_graph(&self, g: &mut Graph, outcome: &mut PassOutcome) -> Result<()> {
        let qt = match self.config.quant_type {
            QuantTypeName::Nf4 => QuantType::Nf4,
            QuantTypeName::Fp4 => QuantType::Fp4,
        };
        let ids = g.node_ids();
        for id in ids {
            if !g.contains_node(id) || !g.node(id).is("", "MatMul") {
                continue;
            }
            let name = g.node(id).name().to_string();
            let m = match weight_matmul(g, id) {
                Ok(m) => m,
                Err(reason) => {
                    outcome.skip(&name, reason);
                    continue;
                }
            };
            if self.selection.resolve(&name) == NodeOverride::Skip {
                outcome.skip(&name, "excluded");
                continue;
            }
            let tensor = constant(g, m.weight).expect("matched").1.clone();
            let w = read_f32(&tensor)?;
            // MatMulBnb4 wants the [N, K] (torch Linear) layout flattened.
            let q = if m.transposed {
                crate::quant::bnb4::quantize_nk(&w, m.n, m.k, self.config.block_size, qt)
            } else {
                crate::quant::bnb4::quantize_kn(&w, m.k, m.n, self.config.block_size, qt)
            }
            .map_err(|e| Error::tensor(tensor.name(), e.to_string()))?;
            let base = g.value_name(m.weight).to_string();
            let b_name = g.fresh_name(&format!("{base}_Bnb4"));
            let packed_len = q.packed.len() as i64;
            let b = g.add_initializer(
                Tensor::from_raw(
                    b_name,
                    DType::U8,
                    vec![packed_len],
                    bytes::Bytes::from(q.packed),
                )
                .stored_like(&tensor),
            )?;
            let a_name = g.fresh_name(&format!("{base}_absmax"));
            let absmax_len = q.absmax.len() as i64;
            let absmax = g.add_initializer(
                float_tensor(&a_name, tensor.dtype(), vec![absmax_len], &q.absmax)
                    .stored_like(&tensor),
            )?;
            let a = g.node(id).input(0).ok_or_else(|| Error::Node {
                node: name.clone(),
                op: "MatMul".into(),
                reason: "no A input".into(),
            })?;
            let spec = NodeSpec::new("com.microsoft", "MatMulBnb4")
                .name(g.fresh_node_name(&format!("{name}_Bnb4")))
                .inputs([Some(a), Some(b), Some(absmax)])
                .attr(Attribute::int("K", m.k as i64))
                .attr(Attribute::int("N", m.n as i64))
                .attr(Attribute::int("block_size", self.config.block_size as i64))
                .attr(Attribute::int(
                    "quant_type",
                    if qt == QuantType::Nf4 { 1 } else { 0 },
                ))
                .meta(PASS_KEY, "bnb4");
            g.swap_node(id, spec)?;
            remove_orphans(g, &m);
            outcome.count("matmuls quantized", 1);
            outcome.changed = true;
        }
        Ok(())
    }
}

impl Pass for Bnb4 {
    fn name(&self) -> &'static str {
        "bnb4"
    }

    fn run(&self, model: &mut Model, _cx: &mut PassCx) -> Result<PassOutcome> {
        crate::transforms::common::run_contrib_rewrite(model, self.name(), &mut |g, o| {
            self.run_graph(g, o)
        })
    }
}
