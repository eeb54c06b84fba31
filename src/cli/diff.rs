//! `onnxq diff`: a stable, readable diff of two models' graphs.
use std::path::PathBuf;

use clap::ValueEnum;

use crate::error::Result;

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DiffFormat {
    /// A unified diff of the two models' printouts (with context lines).
    #[default]
    Unified,
    /// One line per added (+), removed (-) or changed (~) node, initializer, input,
    /// output or opset: ops, attributes, dtypes, shapes, byte counts; no values.
    Text,
}

#[derive(clap::Args, Debug)]
pub struct DiffArgs {
    /// The model before.
    pub a: PathBuf,
    /// The model after.
    pub b: PathBuf,
    #[arg(long, value_enum, default_value = "unified")]
    pub format: DiffFormat,
}

pub fn run(args: &DiffArgs) -> Result<i32> {
    let a = crate::io::load(&args.a)?;
    let b = crate::io::load(&args.b)?;
    match args.format {
        DiffFormat::Unified => print!("{}", crate::ir::print::diff(&a, &b)),
        DiffFormat::Text => print!("{}", crate::ir::describe::diff_text(&a, &b)),
    }
    Ok(0)
}
