//! `onnxq eval`: how well a decoder predicts a text, and how far a (quantized) model
//! strays from a reference on it. Perplexity in sliding windows (Hugging Face's
//! strided evaluation, [`windows`]); with a reference, the KL divergence of the two
//! next-token distributions, top-1 agreement on the same positions, and how long
//! greedy generations from prompts taken from the text stay identical.
//!
//! Layering: above verify (it runs models through runtime and reads them with llm
//! and calib's tokenizer); only cli uses it.
pub mod decoder;
pub mod greedy;
mod report;
pub mod stats;
pub mod windows;

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::calib::tokenizer::Tokenizer;
use crate::error::{Error, Result};
use crate::runtime::{self, RuntimeOptions};
pub use decoder::{Decoder, DecoderIoNames};
pub use windows::{plan, Window};

/// What to evaluate and how.
#[derive(Clone, Debug)]
pub struct EvalOptions {
    /// Score at most the first this many tokens of the text (None: all).
    pub tokens: Option<usize>,
    /// Tokens per forward pass (None: 512, or the positions the model's rotary
    /// caches hold when fewer).
    pub window: Option<usize>,
    /// Tokens between window starts (None: half the window).
    pub stride: Option<usize>,
    /// Greedy prompts taken from the text (with a reference).
    pub prompts: usize,
    pub prompt_tokens: usize,
    pub generate_tokens: usize,
    pub runtime: RuntimeOptions,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            tokens: None,
            window: None,
            stride: None,
            prompts: 4,
            prompt_tokens: 16,
            generate_tokens: 16,
            runtime: RuntimeOptions::default(),
        }
    }
}

/// How the model compares with the reference.
#[derive(Serialize, Clone, Debug)]
pub struct ReferenceStats {
    pub reference: PathBuf,
    pub reference_perplexity: f64,
    /// KL(reference ‖ model) of the next-token distributions, over the scored tokens.
    pub kl_mean: f64,
    pub kl_p99: f64,
    pub kl_max: f64,
    /// Scored positions where both models put the same token first.
    pub top1_agreement: f64,
    pub greedy: GreedyStats,
}

#[derive(Serialize, Clone, Debug)]
pub struct GreedyStats {
    pub prompts: usize,
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    /// Generated tokens shared before the first difference, over all generated tokens.
    pub agreement: f64,
    /// Prompts whose generations are identical.
    pub identical: usize,
    /// Whether steps fed one token and the KV cache (else the sequence was recomputed).
    pub kv_cache: bool,
}

#[derive(Serialize, Clone, Debug)]
pub struct EvalReport {
    pub model: PathBuf,
    pub runtime: String,
    pub perplexity: f64,
    /// Mean negative log-likelihood (nats per token).
    pub nll_mean: f64,
    /// Tokens scored.
    pub tokens: usize,
    /// Tokens of the text evaluated (the first one is context only).
    pub text_tokens: usize,
    pub window: usize,
    pub stride: usize,
    pub windows: usize,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub reference: Option<ReferenceStats>,
    pub notes: Vec<String>,
}

impl EvalReport {
    /// The report as a readable table.
    pub fn table(&self) -> String {
        report::table(self)
    }
}

/// The text of `path` with CRLF line ends made LF, so a file saved on Windows
/// tokenizes as the same text.
pub fn read_text(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    Ok(text.replace("\r\n", "\n"))
}

/// Token ids of the text file with the tokenizer file.
pub fn tokenize(text: &Path, tokenizer: &Path) -> Result<Vec<i64>> {
    let tok = Tokenizer::from_file(tokenizer)?;
    tok.input_ids(&read_text(text)?)
}

/// Positions the model's rotary caches hold (rows of a cos table read by position),
/// when it has such tables.
fn max_positions(path: &Path) -> Option<usize> {
    let model = crate::io::load(path).ok()?;
    let g = &model.graph;
    let map = crate::llm::DecoderMap::build(g).ok()?;
    let cos = map.layers.first()?.attention.rotary.as_ref()?.cos.clone()?;
    let v = g.find(&cos)?;
    let table = match g.initializer(v) {
        Some(t) => t,
        None => {
            let node = g.node(g.producer(v)?);
            if node.op_type != "Gather" {
                return None;
            }
            g.initializer(node.input(0)?)?
        }
    };
    usize::try_from(*table.dims.first()?).ok()
}

struct Scored {
    nll: f64,
    count: usize,
    /// KL(reference ‖ model) per scored position, with a reference (for the p99).
    kl: Vec<f64>,
    top1_same: usize,
}

/// Evaluates `model` (and compares it with `reference`) on the token ids `ids`.
pub fn evaluate(
    model: &Path,
    reference: Option<&Path>,
    ids: &[i64],
    opts: &EvalOptions,
    progress: &indicatif::ProgressBar,
) -> Result<EvalReport> {
    let mut notes = Vec::new();
    let ids = &ids[..opts.tokens.unwrap_or(ids.len()).min(ids.len())];
    let limit = max_positions(model);
    let window = match opts.window {
        Some(w) => w,
        None => limit.map_or(512, |p| p.min(512)),
    };
    if let Some(p) = limit.filter(|&p| window > p) {
        notes.push(format!(
            "the window ({window}) is longer than the {p} positions of the model's rotary \
             tables"
        ));
    }
    let stride = opts.stride.unwrap_or(window.div_ceil(2));
    windows::check(window, stride)?;
    // A text shorter than the window is one pass over all of it.
    let window = window.min(ids.len());
    let stride = stride.min(window);
    let plan = windows::plan(ids.len(), window, stride)?;
    let sel = runtime::select(&opts.runtime)?;
    if let Some(why) = &sel.fallback {
        notes.push(format!("running on tract; ONNX Runtime not used: {why}"));
    }
    let rt = sel.runtime.as_ref();
    let mut dec = Decoder::open(rt, model)?;
    notes.push(format!(
        "{}: inputs by {}",
        model.display(),
        dec.names.source
    ));
    let mut refdec = match reference {
        Some(r) => {
            let d = Decoder::open(rt, r)?;
            notes.push(format!("{}: inputs by {}", r.display(), d.names.source));
            Some(d)
        }
        None => None,
    };
    let prompts = if refdec.is_some() { opts.prompts } else { 0 };
    progress.set_length((plan.len() + prompts) as u64);

    let mut own = Scored {
        nll: 0.0,
        count: 0,
        kl: Vec::new(),
        top1_same: 0,
    };
    let mut ref_nll = 0.0;
    for w in &plan {
        let (logits, _) = dec.forward(&ids[w.start..w.end], None)?;
        let ref_logits = match refdec.as_mut() {
            Some(r) => {
                let (l, _) = r.forward(&ids[w.start..w.end], None)?;
                if l.vocab != logits.vocab {
                    return Err(Error::invalid(format!(
                        "the model has {} logits per token, the reference {}",
                        logits.vocab, l.vocab
                    )));
                }
                Some(l)
            }
            None => None,
        };
        for (t, &id) in ids.iter().enumerate().take(w.end).skip(w.score_from) {
            let row = t - w.start - 1;
            let target = usize::try_from(id)
                .ok()
                .filter(|&i| i < logits.vocab)
                .ok_or_else(|| {
                    Error::invalid(format!(
                        "token id {} is outside the model's {} logits: the tokenizer does not \
                         match the model",
                        id, logits.vocab
                    ))
                })?;
            let lp = stats::log_softmax(logits.row(row));
            own.nll -= lp[target];
            own.count += 1;
            if let Some(rl) = &ref_logits {
                let lr = stats::log_softmax(rl.row(row));
                ref_nll -= lr[target];
                own.kl.push(stats::kl(&lr, &lp));
                if stats::argmax(rl.row(row)) == stats::argmax(logits.row(row)) {
                    own.top1_same += 1;
                }
            }
        }
        progress.inc(1);
    }
    let n = own.count as f64;
    let reference_stats = match (reference, refdec.as_mut()) {
        (Some(path), Some(r)) => {
            let greedy = greedy_agreement(&mut dec, r, ids, window, opts, progress)?;
            Some(ReferenceStats {
                reference: path.to_path_buf(),
                reference_perplexity: (ref_nll / n).exp(),
                kl_mean: own.kl.iter().sum::<f64>() / n,
                kl_p99: stats::quantile(&own.kl, 0.99),
                kl_max: own.kl.iter().copied().fold(0.0, f64::max),
                top1_agreement: own.top1_same as f64 / n,
                greedy,
            })
        }
        _ => None,
    };
    Ok(EvalReport {
        model: model.to_path_buf(),
        runtime: rt.name().to_string(),
        perplexity: (own.nll / n).exp(),
        nll_mean: own.nll / n,
        tokens: own.count,
        text_tokens: ids.len(),
        window,
        stride,
        windows: plan.len(),
        reference: reference_stats,
        notes,
    })
}

/// Greedy generations of both models from prompts spread evenly over the text.
fn greedy_agreement(
    dec: &mut Decoder,
    reference: &mut Decoder,
    ids: &[i64],
    window: usize,
    opts: &EvalOptions,
    progress: &indicatif::ProgressBar,
) -> Result<GreedyStats> {
    // Prompt and generation stay within one window: the positions the model was
    // evaluated at.
    let steps = opts.generate_tokens.min(window.saturating_sub(1));
    let plen = opts.prompt_tokens.min(window - steps).min(ids.len()).max(1);
    let kv_cache = dec.names.has_cache() && reference.names.has_cache();
    let mut shared = 0;
    let mut identical = 0;
    let span = ids.len() - plen;
    for p in 0..opts.prompts {
        let start = if opts.prompts > 1 {
            span * p / (opts.prompts - 1)
        } else {
            0
        };
        let prompt = &ids[start..start + plen];
        let a = greedy::generate(dec, prompt, steps, kv_cache)?;
        let b = greedy::generate(reference, prompt, steps, kv_cache)?;
        let same = greedy::common_prefix(&a, &b);
        shared += same;
        if same == steps {
            identical += 1;
        }
        progress.inc(1);
    }
    let total = opts.prompts * steps;
    Ok(GreedyStats {
        prompts: opts.prompts,
        prompt_tokens: plen,
        generated_tokens: steps,
        agreement: if total == 0 {
            1.0
        } else {
            shared as f64 / total as f64
        },
        identical,
        kv_cache,
    })
}
