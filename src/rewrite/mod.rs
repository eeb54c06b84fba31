//! The rewrite layer: the pass interface and the matchers passes share. Matchers read
//! a graph and never change it.
pub mod matchers;
pub mod pass;

pub use pass::{LayerError, Pass, PassCx, PassOutcome, PrecisionRow, Skip, PASS_KEY};
