//! ONNX Runtime's adapter file (`.onnx_adapter`): a flatbuffer with file identifier
//! "TORT" whose root table `Adapter` holds `format_version`, `adapter_version`,
//! `model_version` and a vector of `Parameter { name, dims, data_type, raw_data }`
//! (onnxruntime/lora/adapter_format/adapter_schema.fbs). Tables are built by hand
//! with the flatbuffers crate so no schema compiler is needed at build time.
use std::path::Path;

use flatbuffers::{FlatBufferBuilder, WIPOffset};

use crate::error::{Error, Result};
use crate::ir::DType;

/// The format version ONNX Runtime's loader accepts.
const FORMAT_VERSION: i32 = 1;
const FILE_IDENTIFIER: &str = "TORT";

// vtable slots (field index * 2 + 4) of the schema's tables.
const PARAM_NAME: u16 = 4;
const PARAM_DIMS: u16 = 6;
const PARAM_DATA_TYPE: u16 = 8;
const PARAM_RAW_DATA: u16 = 10;
const ADAPTER_FORMAT_VERSION: u16 = 4;
const ADAPTER_ADAPTER_VERSION: u16 = 6;
const ADAPTER_MODEL_VERSION: u16 = 8;
const ADAPTER_PARAMETERS: u16 = 10;

/// One named tensor of an adapter: little-endian bytes in ONNX's layout.
#[derive(Clone, Debug, PartialEq)]
pub struct AdapterParam {
    pub name: String,
    pub dims: Vec<i64>,
    pub dtype: DType,
    pub raw: Vec<u8>,
}

/// The file's bytes. The schema's TensorDataType codes are ONNX's TensorProto codes.
pub fn encode(params: &[AdapterParam], adapter_version: i32, model_version: i32) -> Vec<u8> {
    let mut fbb = FlatBufferBuilder::with_capacity(
        params.iter().map(|p| p.raw.len() + 128).sum::<usize>() + 64,
    );
    // An unreferenced empty u64 vector raises the buffer's alignment to 8, so offsets
    // from its end that are multiples of 8 are 8-aligned in memory too.
    fbb.create_vector::<u64>(&[]);
    let mut offsets = Vec::with_capacity(params.len());
    for p in params {
        let name = fbb.create_string(&p.name);
        let dims = fbb.create_vector(&p.dims);
        // The schema asks `force_align: 8` for raw_data (readers may view it as 8-byte
        // elements): pad so the bytes start on an 8-byte boundary of the final buffer.
        let written = fbb.unfinished_data().len();
        for _ in 0..(8 - (written + p.raw.len()) % 8) % 8 {
            fbb.push::<u8>(0);
        }
        let raw = fbb.create_vector(&p.raw);
        let t = fbb.start_table();
        fbb.push_slot_always::<WIPOffset<_>>(PARAM_NAME, name);
        fbb.push_slot_always::<WIPOffset<_>>(PARAM_DIMS, dims);
        fbb.push_slot_always::<WIPOffset<_>>(PARAM_RAW_DATA, raw);
        fbb.push_slot::<i32>(PARAM_DATA_TYPE, p.dtype.code(), 0);
        offsets.push(fbb.end_table(t));
    }
    let params_vec = fbb.create_vector(&offsets);
    let root = fbb.start_table();
    fbb.push_slot_always::<WIPOffset<_>>(ADAPTER_PARAMETERS, params_vec);
    fbb.push_slot::<i32>(ADAPTER_FORMAT_VERSION, FORMAT_VERSION, 0);
    fbb.push_slot::<i32>(ADAPTER_ADAPTER_VERSION, adapter_version, 0);
    fbb.push_slot::<i32>(ADAPTER_MODEL_VERSION, model_version, 0);
    let root = fbb.end_table(root);
    fbb.finish(root, Some(FILE_IDENTIFIER));
    fbb.finished_data().to_vec()
}

/// Writes the adapter file atomically (a half-written adapter would load as garbage).
pub fn write_onnx_adapter(path: &Path, params: &[AdapterParam]) -> Result<()> {
    let bytes = encode(params, 1, 1);
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| Error::io(dir, e))?;
    std::io::Write::write_all(&mut tmp, &bytes).map_err(|e| Error::io(path, e))?;
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}
