//! Where a calibrated pass's samples come from (files, a tokenized text, or seeded
//! random inputs) and the feed builder that turns them into model inputs.
use std::collections::BTreeMap;
use std::path::Path;

use super::data::{check_token_ids, Source};
use super::observe::Feeds;
use super::text::{feeds_for_tokens, TextSamples};
use super::tokenizer::Tokenizer;
use crate::error::{Error, Result};
use crate::ir::Model;
use crate::rewrite::PassOutcome;
use crate::runtime::inputs::InputHints;

/// Where calibration inputs come from, checked when the pass is built.
#[derive(Clone)]
pub enum CalibData {
    Files(Source),
    /// Token ids of the whole text.
    Text(Vec<i64>),
    Random,
}

impl CalibData {
    pub fn open(
        calib: Option<&str>,
        text: Option<&str>,
        tokenizer: Option<&str>,
    ) -> Result<CalibData> {
        match (calib, text, tokenizer) {
            (Some(_), Some(_), _) => Err(Error::invalid(
                "calib and calib-text are exclusive: give one source of calibration data",
            )),
            (Some(p), None, _) => Ok(CalibData::Files(Source::open(Path::new(p))?)),
            (None, Some(t), Some(tok)) => {
                let tok = Tokenizer::from_file(Path::new(tok))?;
                let text = super::text::read_text(Path::new(t))?;
                let ids = tok.input_ids(&text)?;
                if ids.is_empty() {
                    return Err(Error::invalid(format!(
                        "{t}: the calibration text has no tokens"
                    )));
                }
                Ok(CalibData::Text(ids))
            }
            (None, Some(_), None) => Err(Error::invalid(
                "calib-text needs a tokenizer (tokenizer = \"tokenizer.json\")",
            )),
            (None, None, _) => Ok(CalibData::Random),
        }
    }

    /// A feed builder for `model` and how many samples it gives. A text shorter than
    /// one window, or one whose token ids overflow the model's embedding table, is
    /// refused (naming the table).
    pub fn feeds<'a>(
        &'a self,
        model: &Model,
        samples: usize,
        seqlen: usize,
        seed: u64,
        outcome: &mut PassOutcome,
    ) -> Result<(usize, Box<Feeds<'a>>)> {
        let specs = model.graph.input_specs();
        match self {
            CalibData::Files(src) => {
                let hints = InputHints::from_model(model);
                let n = src.len().min(samples.max(1));
                outcome
                    .notes
                    .push(format!("calibration: {n} of {}", src.describe()));
                Ok((n, Box::new(move |i| src.sample(i, &specs, &hints))))
            }
            CalibData::Text(ids) => {
                let w = TextSamples::windows(ids, samples, seqlen, seed);
                if ids.len() < seqlen {
                    return Err(Error::invalid(format!(
                        "the calibration text has {} tokens, fewer than one window of \
                         {seqlen} (calib-seqlen): give more text or shorter windows",
                        ids.len()
                    )));
                }
                if ids.len() < samples.saturating_mul(seqlen) {
                    outcome.notes.push(format!(
                        "the calibration text has {} tokens, fewer than {samples} × {seqlen}: \
                         windows overlap",
                        ids.len()
                    ));
                }
                check_token_ids(model, ids)?;
                outcome.notes.push(format!(
                    "calibration: {} windows of {} tokens from a text of {} tokens (seed {seed})",
                    w.windows.len(),
                    w.windows[0].len(),
                    w.tokens
                ));
                let n = w.windows.len();
                Ok((
                    n,
                    Box::new(move |i| feeds_for_tokens(&specs, &w.windows[i])),
                ))
            }
            CalibData::Random => {
                outcome.notes.push(format!(
                    "no calibration data: {samples} seeded random inputs (seed {seed})"
                ));
                Ok((samples, random_feeds(model, samples, seed)))
            }
        }
    }

    /// Calibration feeds of `data` for `model` and how many samples they give: every
    /// file of a calibration set, `samples` seeded windows of `seqlen` tokens of a text
    /// (refused when the tokenizer's ids do not fit the model's embedding table), or
    /// `samples` seeded random inputs (noted in the report with `what` they are for).
    pub fn feeds_for<'a>(
        &'a self,
        model: &Model,
        samples: usize,
        seqlen: usize,
        seed: u64,
        what: &str,
        outcome: &mut PassOutcome,
    ) -> Result<(usize, Box<Feeds<'a>>)> {
        match self {
            CalibData::Random => {
                outcome.notes.push(format!(
                    "no calibration data: {what} come from {samples} seeded random inputs (seed \
                     {seed}) shaped like the model's inputs; give calibration files or a text and \
                     tokenizer for statistics that match real data"
                ));
                Ok((samples, random_feeds(model, samples, seed)))
            }
            CalibData::Files(_) => self.feeds(model, usize::MAX, seqlen, seed, outcome),
            CalibData::Text(_) => self.feeds(model, samples, seqlen, seed, outcome),
        }
    }
}

/// `samples` seeded random inputs shaped like `model`'s.
fn random_feeds(model: &Model, samples: usize, seed: u64) -> Box<Feeds<'static>> {
    let specs = model.graph.input_specs();
    let hints = InputHints::from_model(model);
    let src = Source::Random {
        samples,
        seed,
        dims: BTreeMap::new(),
    };
    Box::new(move |i| src.sample(i, &specs, &hints))
}
