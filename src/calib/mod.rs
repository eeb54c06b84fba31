//! Calibration: reading sample inputs (.npy/.npz through crate::tensorfile),
//! running the float model on them through a crate::runtime::Runtime, and reducing
//! the activations seen to ranges.
pub mod capture;
pub mod data;
pub mod feeds;
pub mod hessian;
pub mod observe;
pub mod text;
pub mod tokenizer;

pub use data::Source;
pub use feeds::CalibData;
pub use observe::{calibrate, channel_absmax, Calibration, Method};
