//! A tied embedding stored once: when a decoder's lm_head multiplies by the
//! transpose of its embedding table, the head becomes one MatMulNBits (8 bits by
//! default) and the embedding Gather becomes a GatherBlockQuantized that reads the
//! same packed rows.
//!
//! Why a pass of its own, run before the body's quantizer: quantizing the head at the
//! body's 4 bits writes a second copy of the table (the Gather keeps the fp32 one), so
//! the file grows past onnxruntime's, which leaves the head fp32; and the head at 4 bits
//! costs several percent of perplexity. One 8-bit table is a quarter of the fp32 bytes
//! and loses next to nothing. Later passes see a MatMulNBits head and leave it alone.
use serde::Deserialize;

use super::gather::{GatherBlockQuantized, GatherConfig};
use super::matmul_nbits::{WeightOnly, WeightOnlyConfig};
use crate::error::{Error, Result};
use crate::ir::Model;
use crate::llm::DecoderMap;
use crate::rewrite::matchers::{constant, following_bias_add, weight_matmul};
use crate::rewrite::{Pass, PassCx, PassOutcome};
use crate::transforms::common::nbits::{self as kernels, Format};
use crate::transforms::common::select::{NodeOverride, Selection};

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct TiedConfig {
    /// Bits of the shared table: 4 or 8, what GatherBlockQuantized reads.
    pub head_bits: u8,
    pub block_size: usize,
    pub symmetric: bool,
    /// MatMulNBits accuracy_level of the head.
    pub accuracy_level: i64,
    /// Node name patterns to leave alone (an excluded head keeps its float table).
    pub exclude: Vec<String>,
    /// Per-node settings (see `matmul-nbits`); bits/block size set for the head win.
    pub nodes_config: Option<String>,
}

impl Default for TiedConfig {
    fn default() -> Self {
        TiedConfig {
            head_bits: 8,
            block_size: 32,
            symmetric: true,
            accuracy_level: 0,
            exclude: Vec::new(),
            nodes_config: None,
        }
    }
}

pub const TIED_KEYS: &[&str] = &[
    "head-bits",
    "block-size",
    "symmetric",
    "accuracy-level",
    "exclude",
    "nodes-config",
];

pub struct TiedEmbedding {
    config: TiedConfig,
    selection: Selection,
}

impl TiedEmbedding {
    pub fn new(config: TiedConfig) -> Result<Self> {
        if config.head_bits != 4 && config.head_bits != 8 {
            return Err(Error::invalid(format!(
                "head-bits={} (a shared table is read by GatherBlockQuantized: 4 or 8)",
                config.head_bits
            )));
        }
        super::matmul_nbits::validate(
            config.head_bits,
            config.block_size,
            Format::Matmulnbits,
            kernels::Algorithm::Rtn,
        )?;
        let selection = Selection::new(
            &config.exclude,
            &["MatMul".into(), "Gemm".into()],
            config.nodes_config.as_deref(),
        )?;
        Ok(TiedEmbedding { config, selection })
    }
}

impl Pass for TiedEmbedding {
    fn name(&self) -> &'static str {
        "tied-embedding"
    }

    fn run(&self, model: &mut Model, _cx: &mut PassCx) -> Result<PassOutcome> {
        let mut outcome = PassOutcome::new(self.name());
        // Not a decoder, or an untied head: nothing to share.
        let Ok(map) = DecoderMap::build(&model.graph) else {
            return Ok(outcome);
        };
        let head = &map.lm_head;
        if !map.tied_lm_head || !(head.op == "MatMul" || head.op == "Gemm") {
            return Ok(outcome);
        }
        let (bits, block_size, symmetric) =
            match self.selection.resolve_node(model.graph.node(head.node_id)) {
                NodeOverride::Skip => {
                    outcome.skip(&head.node, "excluded: the tied table stays float");
                    return Ok(outcome);
                }
                NodeOverride::Quantize {
                    bits,
                    block_size,
                    symmetric,
                    ..
                } => (
                    bits.unwrap_or(self.config.head_bits),
                    block_size.unwrap_or(self.config.block_size),
                    symmetric.unwrap_or(self.config.symmetric),
                ),
            };
        if bits != 4 && bits != 8 {
            outcome.skip(
                &head.node,
                format!(
                    "asks for {bits} bits and a shared table is 4 or 8: the head is left to \
                     the weight-only pass, the embedding stays float"
                ),
            );
            return Ok(outcome);
        }
        let opset = model.opset("").unwrap_or(1);
        let g = &mut model.graph;
        let m = weight_matmul(g, head.node_id).map_err(|why| Error::tensor(&head.node, why))?;
        let Some((_, table)) = constant(g, m.weight) else {
            return Err(Error::tensor(
                &head.node,
                "the tied weight is not a constant",
            ));
        };
        let params = kernels::Params {
            bits,
            block_size,
            symmetric,
            algorithm: kernels::Algorithm::Rtn,
        };
        let ready =
            kernels::quantize_weight(table, m.transposed, &params)?.into_ready(Format::Matmulnbits);
        let add = following_bias_add(g, &m);
        let emitter = WeightOnly::new(WeightOnlyConfig {
            bits,
            block_size,
            symmetric,
            accuracy_level: self.config.accuracy_level,
            ..WeightOnlyConfig::default()
        })?
        .labelled("tied-embedding");
        emitter.emit_ready(g, vec![(m, add, 0)], vec![ready], &mut outcome)?;
        let embedding = g
            .nodes()
            .find(|(_, n)| n.name() == map.embedding.node)
            .map(|(id, _)| id)
            .ok_or_else(|| Error::tensor(&map.embedding.node, "the embedding node is gone"))?;
        let gather = GatherBlockQuantized::new(GatherConfig {
            bits,
            block_size,
            symmetric,
        })?;
        gather.rewrite(g, embedding, opset, &mut outcome)?;
        outcome.notes.push(format!(
            "tied lm_head '{}' and embedding '{}': one {bits}-bit table (block {block_size})",
            head.node, map.embedding.node
        ));
        model.require_opset("com.microsoft", 1);
        Ok(outcome)
    }
}
