//! Reading and writing ONNX files. The only module that sees protobuf types.
mod external;
mod generation;
mod load;
mod save;
mod sink;
pub mod spill;

pub use load::{from_bytes_in, load, tensor_from_pb_bytes};
pub use save::{
    save, tensor_to_pb_bytes, to_bytes, Layout, SaveOptions, SaveReport, PROTOBUF_LIMIT,
};
pub use sink::{release_pages, AtomicFile};
