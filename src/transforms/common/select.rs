//! Which nodes a quantization pass touches: op types, `--exclude` name patterns and
//! a per-node config file.
use serde::Deserialize;

use super::qtypes::ActivationType;
use crate::error::{Error, Result};
use crate::ir::Node;

/// What to do with one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeOverride {
    Skip,
    /// Quantize, with any of the pass-wide settings overridden.
    Quantize {
        bits: Option<u8>,
        block_size: Option<usize>,
        symmetric: Option<bool>,
        /// Static int8: the type of the node's quantized activations.
        activation_type: Option<ActivationType>,
    },
}

impl Default for NodeOverride {
    fn default() -> Self {
        NodeOverride::Quantize {
            bits: None,
            block_size: None,
            symmetric: None,
            activation_type: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Entry {
    Word(String),
    Settings(Settings),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Settings {
    bits: Option<u8>,
    block_size: Option<usize>,
    symmetric: Option<bool>,
    activation_type: Option<ActivationType>,
    #[serde(default)]
    skip: bool,
}

pub struct Selection {
    exclude: Vec<String>,
    include_ops: Vec<String>,
    /// Pattern → override, in file order (first match wins).
    per_node: Vec<(String, NodeOverride)>,
}

impl Selection {
    pub fn new(
        exclude: &[String],
        include_ops: &[String],
        nodes_config: Option<&str>,
    ) -> Result<Self> {
        let mut per_node = Vec::new();
        if let Some(path) = nodes_config {
            let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
            let map: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(&text).map_err(|e| Error::invalid(format!("{path}: {e}")))?;
            for (pattern, v) in map {
                let entry: Entry = serde_json::from_value(v)
                    .map_err(|e| Error::invalid(format!("{path}: node '{pattern}': {e}")))?;
                let o = match entry {
                    Entry::Word(w) if w == "skip" => NodeOverride::Skip,
                    Entry::Word(w) => return Err(Error::invalid(format!("{path}: node '{pattern}': unknown setting '{w}' (use \"skip\" or an object)"))),
                    Entry::Settings(s) if s.skip => NodeOverride::Skip,
                    Entry::Settings(s) => NodeOverride::Quantize {
                        bits: s.bits,
                        block_size: s.block_size,
                        symmetric: s.symmetric,
                        activation_type: s.activation_type,
                    },
                };
                per_node.push((pattern, o));
            }
        }
        Ok(Selection {
            exclude: exclude.to_vec(),
            include_ops: include_ops.to_vec(),
            per_node,
        })
    }

    pub fn overrides(&self) -> impl Iterator<Item = &NodeOverride> {
        self.per_node.iter().map(|(_, o)| o)
    }

    /// Refuses per-node settings a pass does not take (`takes` names those it
    /// does: "bits", "block-size", "symmetric", "activation-type"), naming the
    /// pattern: a silently ignored override would quantize a node the user meant
    /// otherwise.
    pub fn refuse_unless(&self, takes: &[&str], pass: &str) -> Result<()> {
        for (pattern, o) in &self.per_node {
            let NodeOverride::Quantize {
                bits,
                block_size,
                symmetric,
                activation_type,
            } = o
            else {
                continue;
            };
            for (set, key) in [
                (bits.is_some(), "bits"),
                (block_size.is_some(), "block-size"),
                (symmetric.is_some(), "symmetric"),
                (activation_type.is_some(), "activation-type"),
            ] {
                if set && !takes.contains(&key) {
                    return Err(Error::invalid(format!(
                        "nodes-config: node '{pattern}': {pass} does not take '{key}'"
                    )));
                }
            }
        }
        Ok(())
    }

    pub fn op_included(&self, op: &str) -> bool {
        self.include_ops.iter().any(|o| o == op)
    }

    pub fn resolve(&self, node: &str) -> NodeOverride {
        if self.exclude.iter().any(|p| glob_match(p, node)) {
            return NodeOverride::Skip;
        }
        self.per_node
            .iter()
            .find(|(p, _)| glob_match(p, node))
            .map(|(_, o)| *o)
            .unwrap_or_default()
    }

    /// [`Selection::resolve`] for a node, after its precision annotation (set by
    /// `mixed-precision`): an exclusion wins, then the annotation, then the per-node
    /// config.
    pub fn resolve_node(&self, node: &Node) -> NodeOverride {
        let by_name = self.resolve(node.name());
        if by_name == NodeOverride::Skip {
            return by_name;
        }
        match annotation(node) {
            Some(Precision::Float) => NodeOverride::Skip,
            Some(Precision::Nbits { bits, block_size }) => match by_name {
                NodeOverride::Quantize {
                    symmetric,
                    activation_type,
                    ..
                } => NodeOverride::Quantize {
                    bits: Some(bits),
                    block_size: Some(block_size),
                    symmetric,
                    activation_type,
                },
                NodeOverride::Skip => NodeOverride::Skip,
            },
            None => by_name,
        }
    }
}

/// Node metadata key of the precision `mixed-precision` chose for a weight's node,
/// read by the weight quantizers that follow it.
pub const PRECISION_KEY: &str = "onnxq.precision";

/// A precision chosen for one weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Precision {
    /// Left in its float type.
    Float,
    Nbits {
        bits: u8,
        block_size: usize,
    },
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Precision::Float => write!(f, "float"),
            Precision::Nbits { bits, block_size } => write!(f, "int{bits}/b{block_size}"),
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s == "float" {
            return Ok(Precision::Float);
        }
        let bad = || format!("'{s}' is not a precision (float or intB/bS)");
        let (b, s2) = s.split_once("/b").ok_or_else(bad)?;
        let bits = b
            .strip_prefix("int")
            .ok_or_else(bad)?
            .parse()
            .map_err(|_| bad())?;
        let block_size = s2.parse().map_err(|_| bad())?;
        Ok(Precision::Nbits { bits, block_size })
    }
}

/// The precision annotation of a node, if it has a valid one.
pub fn annotation(node: &Node) -> Option<Precision> {
    node.metadata_props
        .iter()
        .find(|(k, _)| k == PRECISION_KEY)
        .and_then(|(_, v)| v.parse().ok())
}

/// Sets (or replaces) a node's precision annotation.
pub fn annotate(node: &mut Node, p: Precision) {
    node.metadata_props.retain(|(k, _)| k != PRECISION_KEY);
    node.metadata_props
        .push((PRECISION_KEY.to_string(), p.to_string()));
}

/// `*` matches any run of characters; everything else matches itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let mut rest = text;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            match rest.strip_prefix(part) {
                Some(r) => rest = r,
                None => return false,
            }
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            match rest.find(part) {
                Some(pos) => rest = &rest[pos + part.len()..],
                None => return false,
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs() {
        assert!(glob_match("*lm_head*", "/lm_head/MatMul"));
        assert!(glob_match("model.layers.0.*", "model.layers.0.mlp"));
        assert!(!glob_match("model.layers.0.*", "model.layers.1.mlp"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxbyy"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exact2"));
    }
}
