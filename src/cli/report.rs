//! What `--report FILE.json` and `--json` say per node, and the process facts
//! (peak memory) every report carries.
use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::ir::{AttrValue, Model};
use crate::pass::{PassOutcome, PASS_KEY};

/// The input model's facts a per-node report needs, taken before the passes run:
/// initializer sizes and which node reads which initializer.
pub struct Before {
    inits: BTreeMap<String, u64>,
    readers: BTreeMap<String, Vec<String>>,
}

impl Before {
    pub fn of(model: &Model) -> Before {
        let g = &model.graph;
        let inits = g
            .initializers()
            .map(|(v, t)| (g.value_name(v).to_string(), t.stored_len() as u64))
            .collect();
        let mut readers: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (_, n) in g.nodes() {
            for v in n.inputs().iter().flatten() {
                if g.initializer(*v).is_some() {
                    readers
                        .entry(g.value_name(*v).to_string())
                        .or_default()
                        .push(n.name().to_string());
                }
            }
        }
        Before { inits, readers }
    }
}

/// One node in the report: a node a pass wrote (with its setting, the bytes of the
/// weights it replaced and of its own, and the layer error when the pass measured
/// one), or a candidate a pass skipped (with why).
#[derive(Serialize, Debug, Clone)]
pub struct NodeReport {
    pub node: String,
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub op: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pass: Option<String>,
    /// The nodes of the input it replaces (found through the weights it took over).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub replaces: Vec<String>,
    /// Its integer and string attributes (bits, block_size, accuracy_level, ...).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub setting: BTreeMap<String, serde_json::Value>,
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// Relative output error on calibration data (calibrated passes): plain RTN and
    /// the pass's own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Per-node entries for the main graph of `after`, quantized nodes by name, then
/// skipped candidates in pass order.
pub fn nodes(before: &Before, after: &Model, outcomes: &[PassOutcome]) -> Vec<NodeReport> {
    let g = &after.graph;
    let now: BTreeSet<&str> = g.initializers().map(|(v, _)| g.value_name(v)).collect();
    let removed: Vec<(&String, &u64)> = before
        .inits
        .iter()
        .filter(|(n, _)| !now.contains(n.as_str()))
        .collect();
    let errors: BTreeMap<&str, serde_json::Value> = outcomes
        .iter()
        .flat_map(|o| &o.layers)
        .map(|l| {
            (
                l.name.as_str(),
                serde_json::json!({ "rtn": l.rtn, "after": l.after }),
            )
        })
        .collect();
    let mut out = Vec::new();
    for (_, n) in g.nodes() {
        let Some((_, pass)) = n.metadata_props.iter().find(|(k, _)| k == PASS_KEY) else {
            continue;
        };
        let mut report = NodeReport {
            node: n.name().to_string(),
            status: "quantized",
            op: Some(if n.domain().is_empty() {
                n.op_type.clone()
            } else {
                format!("{}::{}", n.domain(), n.op_type)
            }),
            pass: Some(pass.clone()),
            replaces: Vec::new(),
            setting: setting(n),
            bytes_before: 0,
            bytes_after: 0,
            error: None,
            reason: None,
        };
        let mut replaced: BTreeSet<&str> = BTreeSet::new();
        for v in n.inputs().iter().flatten() {
            let Some(t) = g.initializer(*v) else { continue };
            let name = g.value_name(*v);
            if before.inits.contains_key(name) {
                continue;
            }
            report.bytes_after += t.stored_len() as u64;
            // New tensors are named after the weight they replace (w → w_Q4, ...).
            if let Some((old, _)) = removed
                .iter()
                .filter(|(old, _)| name.starts_with(old.as_str()))
                .max_by_key(|(old, _)| old.len())
            {
                replaced.insert(old.as_str());
            }
        }
        for old in replaced {
            report.bytes_before += before.inits[old];
            for r in before.readers.get(old).into_iter().flatten() {
                if !report.replaces.contains(r) {
                    report.replaces.push(r.clone());
                }
            }
        }
        report.error = std::iter::once(report.node.as_str())
            .chain(report.replaces.iter().map(String::as_str))
            .find_map(|k| errors.get(k).cloned());
        out.push(report);
    }
    out.sort_by(|a, b| a.node.cmp(&b.node));
    for o in outcomes {
        for s in &o.skipped {
            out.push(NodeReport {
                node: s.node.clone(),
                status: "skipped",
                op: None,
                pass: Some(o.pass.clone()),
                replaces: Vec::new(),
                setting: BTreeMap::new(),
                bytes_before: 0,
                bytes_after: 0,
                error: None,
                reason: Some(s.reason.clone()),
            });
        }
    }
    out
}

fn setting(n: &crate::ir::Node) -> BTreeMap<String, serde_json::Value> {
    n.attributes
        .iter()
        .filter_map(|a| {
            let v = match a.value() {
                AttrValue::Int(i) => serde_json::json!(i),
                AttrValue::Float(f) => serde_json::json!(f),
                AttrValue::String(s) => serde_json::json!(String::from_utf8_lossy(s)),
                _ => return None,
            };
            Some((a.name.clone(), v))
        })
        .collect()
}

/// Peak resident memory of this process so far (VmHWM), in bytes; None off Linux.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Prints one JSON object as a line on stdout (the `--json` stream).
pub fn json_line(value: &impl Serialize) {
    if let Ok(line) = serde_json::to_string(value) {
        println!("{line}");
    }
}
