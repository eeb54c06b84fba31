//! `--log-level`: how much the commands say on stderr. Results (tables, JSON) go to
//! stdout whatever the level; errors are always printed.
use std::sync::atomic::{AtomicU8, Ordering};

use clap::ValueEnum;

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Level {
    /// Errors only.
    Error = 0,
    /// Warnings too (an unchanged copy, an already quantized model).
    Warn = 1,
    /// Per-pass summaries, what was written, progress bars on a terminal.
    #[default]
    Info = 2,
    /// Everything --explain prints: each skipped candidate with why, every layer.
    Debug = 3,
}

static LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);

pub fn set(level: Level) {
    LEVEL.store(level as u8, Ordering::Relaxed);
}

pub fn enabled(level: Level) -> bool {
    level as u8 <= LEVEL.load(Ordering::Relaxed)
}

pub fn info(message: &str) {
    if enabled(Level::Info) {
        eprintln!("{message}");
    }
}
