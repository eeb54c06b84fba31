//! A given precision per node: the `onnxq.precision` annotation `mixed-precision`
//! writes, set from a table of node names instead of measured. The accuracy tuning
//! loop (`quantize --max-ppl-increase/--max-error`) writes its plan this way each
//! round; a recipe can pin a plan the loop reported.
//!
//! Matches: main-graph nodes by exact name. A name the model does not have is an
//! error: a stale plan would silently quantize that weight at the pass default.
//! Emits: the annotation only; `matmul-nbits`, `gptq`, `awq`'s quantizer,
//! `tied-embedding` and `gather-block-quantized` read it in place of their own bits
//! and block size ("float" leaves the node float).
use std::collections::BTreeMap;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::ir::Model;
use crate::rewrite::{Pass, PassCx, PassOutcome};
use crate::transforms::common::select::{annotate, Precision};

#[derive(Deserialize, Debug, Clone, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct PlanConfig {
    /// Node name → "intB/bS" (e.g. "int8/b32") or "float".
    pub settings: BTreeMap<String, String>,
}

pub const PLAN_KEYS: &[&str] = &["settings"];

const NAME: &str = "precision-plan";

pub struct PrecisionPlan {
    settings: BTreeMap<String, Precision>,
}

impl PrecisionPlan {
    pub fn new(config: PlanConfig) -> Result<Self> {
        let settings = config
            .settings
            .into_iter()
            .map(|(node, s)| {
                s.parse::<Precision>()
                    .map(|p| (node.clone(), p))
                    .map_err(|e| Error::invalid(format!("{NAME}: node '{node}': {e}")))
            })
            .collect::<Result<_>>()?;
        Ok(PrecisionPlan { settings })
    }
}

impl Pass for PrecisionPlan {
    fn name(&self) -> &'static str {
        NAME
    }

    fn run(&self, model: &mut Model, _cx: &mut PassCx) -> Result<PassOutcome> {
        let mut outcome = PassOutcome::new(NAME);
        let g = &mut model.graph;
        let mut found = std::collections::BTreeSet::new();
        for id in g.node_ids() {
            let Some((name, &p)) = self.settings.get_key_value(g.node(id).name()) else {
                continue;
            };
            annotate(g.node_mut(id), p);
            outcome.count(&format!("nodes {p}"), 1);
            found.insert(name.as_str());
        }
        if found.len() < self.settings.len() {
            let missing: Vec<&str> = self
                .settings
                .keys()
                .map(String::as_str)
                .filter(|n| !found.contains(n))
                .take(5)
                .collect();
            return Err(Error::invalid(format!(
                "{NAME}: the model has no node named {} ({} of {} planned nodes missing)",
                missing
                    .iter()
                    .map(|n| format!("'{n}'"))
                    .collect::<Vec<_>>()
                    .join(", "),
                self.settings.len() - found.len(),
                self.settings.len()
            )));
        }
        outcome.changed = !found.is_empty();
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_name_the_node() {
        let mut settings = BTreeMap::new();
        settings.insert("/m/MatMul".to_string(), "int5".to_string());
        let e = PrecisionPlan::new(PlanConfig { settings })
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains("/m/MatMul"), "{e}");
    }
}
