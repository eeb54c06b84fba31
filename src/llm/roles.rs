//! The decoder's inputs and outputs by role (ids, positions, mask, past/present KV
//! pairs, logits) as names a session is fed by: from the decoder map, else from the
//! usual exporter names when the map cannot read a model (a quantized form it does
//! not know).
use super::DecoderMap;
use crate::error::{Error, Result};
use crate::ir::Graph;

/// One past input and the present output that continues it.
#[derive(Clone, Debug)]
pub struct KvPair {
    pub past: String,
    pub present: String,
}

/// Names of the decoder's inputs and outputs by role.
#[derive(Clone, Debug)]
pub struct DecoderIoNames {
    pub input_ids: String,
    pub position_ids: Option<String>,
    pub attention_mask: Option<String>,
    pub kv: Vec<KvPair>,
    pub logits: String,
    /// How the roles were found (the map, or names when it could not be built).
    pub source: String,
}

impl DecoderIoNames {
    /// Roles from the decoder map of `g`, else from input and output names.
    pub fn of(g: &Graph) -> Result<DecoderIoNames> {
        match DecoderMap::build(g) {
            Ok(map) => Self::from_map(&map),
            Err(e) => Self::from_names(g, &e.to_string()),
        }
    }

    fn from_map(map: &DecoderMap) -> Result<DecoderIoNames> {
        let io = &map.io;
        let logits = io
            .logits
            .as_ref()
            .ok_or_else(|| Error::invalid("the decoder's logits are not a graph output"))?;
        let mut kv = Vec::new();
        for past in &io.past {
            let present = io
                .present
                .iter()
                .find(|p| p.layer == past.layer)
                .ok_or_else(|| {
                    Error::invalid(format!(
                        "layer {}: the past KV inputs have no present outputs to continue from",
                        past.layer
                    ))
                })?;
            kv.push(KvPair {
                past: past.key.name.clone(),
                present: present.key.name.clone(),
            });
            kv.push(KvPair {
                past: past.value.name.clone(),
                present: present.value.name.clone(),
            });
        }
        Ok(DecoderIoNames {
            input_ids: io.input_ids.name.clone(),
            position_ids: io.position_ids.as_ref().map(|t| t.name.clone()),
            attention_mask: io.attention_mask.as_ref().map(|t| t.name.clone()),
            kv,
            logits: logits.name.clone(),
            source: "decoder map".into(),
        })
    }

    fn from_names(g: &Graph, why: &str) -> Result<DecoderIoNames> {
        let inputs: Vec<String> = g
            .inputs
            .iter()
            .map(|i| g.value_name(i.value).to_string())
            .collect();
        let outputs: Vec<String> = g
            .outputs
            .iter()
            .map(|o| g.value_name(o.value).to_string())
            .collect();
        let find = |key: &str| inputs.iter().find(|n| n.contains(key)).cloned();
        let input_ids = find("input_ids").ok_or_else(|| {
            Error::invalid(format!(
                "not readable as a decoder ({why}), and no input is named input_ids"
            ))
        })?;
        let past: Vec<&String> = inputs.iter().filter(|n| n.contains("past")).collect();
        let present: Vec<&String> = outputs.iter().filter(|n| n.contains("present")).collect();
        if past.len() != present.len() {
            return Err(Error::invalid(format!(
                "not readable as a decoder ({why}); by name it has {} past inputs but {} \
                 present outputs",
                past.len(),
                present.len()
            )));
        }
        let logits = outputs
            .iter()
            .find(|n| n.contains("logits"))
            .or_else(|| outputs.first())
            .cloned()
            .ok_or_else(|| Error::invalid("the model has no outputs"))?;
        Ok(DecoderIoNames {
            input_ids,
            position_ids: find("position_ids"),
            attention_mask: find("attention_mask"),
            kv: past
                .into_iter()
                .zip(present)
                .map(|(p, q)| KvPair {
                    past: p.clone(),
                    present: q.clone(),
                })
                .collect(),
            logits,
            source: format!("input and output names (decoder map: {why})"),
        })
    }

    pub fn has_cache(&self) -> bool {
        !self.kv.is_empty()
    }
}
