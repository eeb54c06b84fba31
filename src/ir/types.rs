//! Value types (TypeProto) and shapes, as the IR keeps them.
use super::DType;

/// One dimension of a tensor shape.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Dim {
    Value(i64),
    Param(String),
    Unknown,
}

/// A dimension with its optional denotation, as stored in TensorShapeProto.
#[derive(Clone, Debug, PartialEq)]
pub struct ShapeDim {
    pub dim: Dim,
    pub denotation: Option<String>,
}

/// TypeProto. Elem types stay raw codes (`Option<i32>`) so presence round-trips.
#[derive(Clone, Debug, PartialEq)]
pub struct TypeInfo {
    pub kind: TypeKind,
    pub denotation: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum TypeKind {
    Tensor {
        elem_type: Option<i32>,
        shape: Option<Vec<ShapeDim>>,
    },
    SparseTensor {
        elem_type: Option<i32>,
        shape: Option<Vec<ShapeDim>>,
    },
    Sequence(Option<Box<TypeInfo>>),
    Map {
        key_type: Option<i32>,
        value_type: Option<Box<TypeInfo>>,
    },
    Optional(Option<Box<TypeInfo>>),
    Opaque {
        domain: Option<String>,
        name: Option<String>,
    },
    /// A TypeProto with no `value` set.
    Unset,
}

impl TypeInfo {
    /// A dense tensor type with a fully known shape.
    pub fn tensor(dtype: DType, dims: &[i64]) -> TypeInfo {
        TypeInfo {
            kind: TypeKind::Tensor {
                elem_type: Some(dtype.code()),
                shape: Some(
                    dims.iter()
                        .map(|&d| ShapeDim {
                            dim: Dim::Value(d),
                            denotation: None,
                        })
                        .collect(),
                ),
            },
            denotation: None,
        }
    }

    /// Element type and dims when this is a (dense) tensor type.
    pub fn tensor_parts(&self) -> Option<(Option<DType>, Option<Vec<Dim>>)> {
        match &self.kind {
            TypeKind::Tensor { elem_type, shape } => Some((
                elem_type.map(DType::from_code),
                shape
                    .as_ref()
                    .map(|s| s.iter().map(|d| d.dim.clone()).collect()),
            )),
            _ => None,
        }
    }
}

/// What ValueInfoProto says about a value besides its name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ValueInfo {
    pub ty: Option<TypeInfo>,
    pub doc_string: Option<String>,
    pub metadata_props: Vec<(String, String)>,
}

/// A graph input or output as a runtime sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct IoSpec {
    pub name: String,
    pub dtype: Option<DType>,
    pub dims: Option<Vec<Dim>>,
}
