//! Passes, one file each.
pub mod cleanup;
pub mod quant;
