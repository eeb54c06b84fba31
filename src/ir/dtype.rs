//! Element types of ONNX tensors, with the facts passes and kernels need (bit width,
//! float-ness, names). Codes are TensorProto.DataType.
use std::fmt;

macro_rules! dtypes {
    ($($variant:ident = $code:literal, $name:literal, $bits:literal;)*) => {
        /// A tensor element type. `Other` keeps codes newer than this build so a model
        /// using them still round-trips.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum DType {
            $($variant,)*
            Other(i32),
        }

        impl DType {
            /// The TensorProto.DataType code.
            pub fn code(self) -> i32 {
                match self { $(DType::$variant => $code,)* DType::Other(c) => c }
            }

            pub fn from_code(code: i32) -> DType {
                match code { $($code => DType::$variant,)* c => DType::Other(c) }
            }

            /// Lower-case name as onnx prints it (`float`, `int4`, `float8e4m3fn`, ...).
            pub fn name(self) -> &'static str {
                match self { $(DType::$variant => $name,)* DType::Other(_) => "unknown" }
            }

            /// Storage bits per element (0 for strings and unknown types).
            pub fn bits(self) -> usize {
                match self { $(DType::$variant => $bits,)* DType::Other(_) => 0 }
            }

            pub fn from_name(name: &str) -> Option<DType> {
                match name { $($name => Some(DType::$variant),)* _ => None }
            }
        }
    };
}

dtypes! {
    Undefined = 0, "undefined", 0;
    F32 = 1, "float", 32;
    U8 = 2, "uint8", 8;
    I8 = 3, "int8", 8;
    U16 = 4, "uint16", 16;
    I16 = 5, "int16", 16;
    I32 = 6, "int32", 32;
    I64 = 7, "int64", 64;
    String = 8, "string", 0;
    Bool = 9, "bool", 8;
    F16 = 10, "float16", 16;
    F64 = 11, "double", 64;
    U32 = 12, "uint32", 32;
    U64 = 13, "uint64", 64;
    C64 = 14, "complex64", 64;
    C128 = 15, "complex128", 128;
    BF16 = 16, "bfloat16", 16;
    F8E4M3FN = 17, "float8e4m3fn", 8;
    F8E4M3FNUZ = 18, "float8e4m3fnuz", 8;
    F8E5M2 = 19, "float8e5m2", 8;
    F8E5M2FNUZ = 20, "float8e5m2fnuz", 8;
    U4 = 21, "uint4", 4;
    I4 = 22, "int4", 4;
    F4E2M1 = 23, "float4e2m1", 4;
    F8E8M0 = 24, "float8e8m0", 8;
    U2 = 25, "uint2", 2;
    I2 = 26, "int2", 2;
    F6E2M3 = 27, "float6e2m3", 6;
    F6E3M2 = 28, "float6e3m2", 6;
}

impl DType {
    /// Bytes needed for `count` elements, packed as ONNX stores sub-byte types.
    pub fn byte_len(self, count: usize) -> Option<usize> {
        match self.bits() {
            0 => None,
            b => Some((count * b).div_ceil(8)),
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16 | DType::F64)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DType::Other(c) => write!(f, "dtype#{c}"),
            d => f.write_str(d.name()),
        }
    }
}
