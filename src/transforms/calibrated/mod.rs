//! Calibrated weight-only passes (GPTQ, AWQ): they run the float model on samples
//! and use what the activations show to choose or adjust the quantized weights.
pub mod awq;
pub mod gptq;
pub mod mixed;

use super::common::select::Selection;
use crate::calib::CalibData;
use crate::error::{Error, Result};

/// The calibration keys GPTQ and AWQ share, as configured.
pub(crate) struct CalibKeys<'a> {
    pub samples: usize,
    pub seqlen: usize,
    pub runtime: &'a str,
    pub exclude: &'a [String],
    pub include_ops: &'a [String],
    pub calib: Option<&'a str>,
    pub text: Option<&'a str>,
    pub tokenizer: Option<&'a str>,
}

/// Checks a calibrated pass's shared keys and opens its selection and data.
pub(crate) fn calibrated_setup(pass: &str, k: CalibKeys) -> Result<(Selection, CalibData)> {
    if k.samples == 0 || k.seqlen == 0 {
        return Err(Error::invalid(format!(
            "{pass} calib-samples and calib-seqlen must be at least 1"
        )));
    }
    k.runtime
        .parse::<crate::runtime::RuntimeKind>()
        .map_err(Error::invalid)?;
    let selection = Selection::new(k.exclude, k.include_ops, None)?;
    let data = CalibData::open(k.calib, k.text, k.tokenizer)?;
    Ok((selection, data))
}
