//! `onnxq diff`: a stable, readable diff of two models' graphs.
use std::path::PathBuf;

use crate::error::Result;

#[derive(clap::Args, Debug)]
pub struct DiffArgs {
    /// The model before.
    pub a: PathBuf,
    /// The model after.
    pub b: PathBuf,
}

pub fn run(args: &DiffArgs) -> Result<i32> {
    let a = crate::io::load(&args.a)?;
    let b = crate::io::load(&args.b)?;
    print!("{}", crate::ir::print::diff(&a, &b));
    Ok(0)
}
