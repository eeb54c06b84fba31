//! Types generated from proto/onnx.proto. Only `crate::io` names them.
#![allow(clippy::all, missing_docs)]
include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
