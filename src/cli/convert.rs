//! `onnxq convert`: re-save a model with another tensor layout, changing nothing else.
use std::path::PathBuf;

use crate::error::Result;
use crate::io::{Layout, SaveOptions};

/// Where tensor data goes on save; shared by every command that writes a model.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct LayoutArgs {
    /// Put initializers of at least --size-threshold bytes into this one external data
    /// file (relative to the output model).
    #[arg(long, value_name = "FILE", conflicts_with = "inline")]
    pub external_data: Option<String>,
    /// Store every tensor inside the model file (fails over protobuf's 2 GB limit).
    #[arg(long)]
    pub inline: bool,
    /// Smallest initializer (bytes) moved to --external-data.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub size_threshold: usize,
}

impl LayoutArgs {
    /// Default: keep the input's layout (external stays external, inline stays
    /// inline, new tensors follow the tensor they replace).
    pub fn save_options(&self) -> SaveOptions {
        let layout = if self.inline {
            Layout::Inline
        } else if let Some(file) = &self.external_data {
            Layout::External {
                file: file.clone(),
                threshold: self.size_threshold,
            }
        } else {
            Layout::Keep
        };
        SaveOptions {
            layout,
            ..SaveOptions::default()
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct ConvertArgs {
    /// Model to read.
    pub input: PathBuf,
    /// Model to write (written atomically; external data files go next to it).
    pub output: PathBuf,
    #[command(flatten)]
    pub layout: LayoutArgs,
}

pub fn run(args: &ConvertArgs) -> Result<i32> {
    let model = crate::io::load(&args.input)?;
    let report = crate::io::save(&model, &args.output, &args.layout.save_options())?;
    eprintln!(
        "wrote {} ({} bytes)",
        args.output.display(),
        report.model_bytes
    );
    for (f, n) in &report.data_files {
        eprintln!("  external data {f}: {n} bytes");
    }
    if report.moved_for_limit > 0 {
        eprintln!(
            "  {} initializers moved to external data to stay under protobuf's 2 GB limit",
            report.moved_for_limit
        );
    }
    Ok(0)
}
