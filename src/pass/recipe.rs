//! Recipes: TOML files naming passes in order, each with its typed config.
//!
//! ```toml
//! [recipe]
//! name = "int4-rtn"
//! description = "4-bit weight-only MatMulNBits, round to nearest"
//!
//! [[pass]]
//! name = "matmul-nbits"
//! bits = 4
//! block-size = 32
//! ```
//! A recipe is validated completely (pass names and configs) before any model is
//! loaded.
use serde::Deserialize;

use super::{registry, Pass};
use crate::error::{Error, Result};

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
struct Header {
    name: String,
    #[serde(default)]
    description: String,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
struct RecipeFile {
    recipe: Header,
    #[serde(default, rename = "pass")]
    passes: Vec<toml::Table>,
}

/// A parsed recipe: the pass tables, still editable (flag overrides) until built.
#[derive(Debug, Clone)]
pub struct Recipe {
    pub name: String,
    pub description: String,
    pub passes: Vec<toml::Table>,
}

/// Recipes shipped in passes/, embedded so `onnxq apply NAME` works after install.
pub const SHIPPED: &[(&str, &str)] = &[
    ("int4-rtn", include_str!("../../passes/int4-rtn.toml")),
    ("int4-hqq", include_str!("../../passes/int4-hqq.toml")),
    ("int4-mixed", include_str!("../../passes/int4-mixed.toml")),
    ("gptq-int4", include_str!("../../passes/gptq-int4.toml")),
    ("awq-int4", include_str!("../../passes/awq-int4.toml")),
    ("quarot-int4", include_str!("../../passes/quarot-int4.toml")),
    (
        "genai-decoder",
        include_str!("../../passes/genai-decoder.toml"),
    ),
    (
        "int4-rtn-qdq",
        include_str!("../../passes/int4-rtn-qdq.toml"),
    ),
    ("bnb4-nf4", include_str!("../../passes/bnb4-nf4.toml")),
    ("fp16", include_str!("../../passes/fp16.toml")),
    ("bf16", include_str!("../../passes/bf16.toml")),
    (
        "int8-dynamic",
        include_str!("../../passes/int8-dynamic.toml"),
    ),
    (
        "int8-static-qdq",
        include_str!("../../passes/int8-static-qdq.toml"),
    ),
    (
        "int8-static-qoperator",
        include_str!("../../passes/int8-static-qoperator.toml"),
    ),
];

impl Recipe {
    pub fn parse(origin: &str, text: &str) -> Result<Recipe> {
        let err = |reason: String| Error::Recipe {
            recipe: origin.to_string(),
            reason,
        };
        let file: RecipeFile = toml::from_str(text).map_err(|e| err(e.to_string()))?;
        let r = Recipe {
            name: file.recipe.name,
            description: file.recipe.description,
            passes: file.passes,
        };
        if r.passes.is_empty() {
            return Err(err("no [[pass]] tables".into()));
        }
        r.build().map_err(|e| err(e.to_string()))?;
        Ok(r)
    }

    /// A shipped recipe by name, or a recipe file by path.
    pub fn load(name_or_path: &str) -> Result<Recipe> {
        if let Some((_, text)) = SHIPPED.iter().find(|(n, _)| *n == name_or_path) {
            return Recipe::parse(name_or_path, text);
        }
        let path = std::path::Path::new(name_or_path);
        if !path.exists() {
            let names: Vec<&str> = SHIPPED.iter().map(|(n, _)| *n).collect();
            return Err(Error::Recipe {
                recipe: name_or_path.to_string(),
                reason: format!(
                    "no such file, and not a shipped recipe{} (shipped: {})",
                    crate::error::did_you_mean(name_or_path, names.iter().copied()),
                    names.join(", ")
                ),
            });
        }
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Recipe::parse(name_or_path, &text)
    }

    /// Sets `key = value` in every pass table whose pass accepts `key`.
    pub fn set(&mut self, key: &str, value: toml::Value) {
        for t in &mut self.passes {
            let name = t.get("name").and_then(|v| v.as_str()).unwrap_or("");
            if registry::accepts(name, key) {
                t.insert(key.to_string(), value.clone());
            }
        }
    }

    /// Builds the configured passes, validating every table.
    pub fn build(&self) -> Result<Vec<Box<dyn Pass>>> {
        self.passes
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let mut t = t.clone();
                let name = match t.remove("name") {
                    Some(toml::Value::String(s)) => s,
                    _ => return Err(Error::invalid(format!("pass #{}: missing `name`", i + 1))),
                };
                registry::build(&name, t)
                    .map_err(|e| Error::invalid(format!("pass #{} ({name}): {e}", i + 1)))
            })
            .collect()
    }
}
