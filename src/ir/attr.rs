//! Node attributes. Every AttributeProto field is kept, so an attribute round-trips
//! exactly; `value()` gives the typed view passes use.
use super::{Graph, SparseTensor, Tensor, TypeInfo};

/// AttributeProto.AttributeType codes.
pub mod kind {
    pub const FLOAT: i32 = 1;
    pub const INT: i32 = 2;
    pub const STRING: i32 = 3;
    pub const TENSOR: i32 = 4;
    pub const GRAPH: i32 = 5;
    pub const FLOATS: i32 = 6;
    pub const INTS: i32 = 7;
    pub const STRINGS: i32 = 8;
    pub const TENSORS: i32 = 9;
    pub const GRAPHS: i32 = 10;
    pub const SPARSE_TENSOR: i32 = 11;
    pub const SPARSE_TENSORS: i32 = 12;
    pub const TYPE_PROTO: i32 = 13;
    pub const TYPE_PROTOS: i32 = 14;
}

#[derive(Clone, Debug, Default)]
pub struct Attribute {
    pub name: String,
    pub ref_attr_name: Option<String>,
    pub doc_string: Option<String>,
    pub ty: Option<i32>,
    pub f: Option<f32>,
    pub i: Option<i64>,
    pub s: Option<Vec<u8>>,
    pub t: Option<Tensor>,
    pub g: Option<Box<Graph>>,
    pub sparse_tensor: Option<SparseTensor>,
    pub tp: Option<TypeInfo>,
    pub floats: Vec<f32>,
    pub ints: Vec<i64>,
    pub strings: Vec<Vec<u8>>,
    pub tensors: Vec<Tensor>,
    pub graphs: Vec<Graph>,
    pub sparse_tensors: Vec<SparseTensor>,
    pub type_protos: Vec<TypeInfo>,
}

/// The value an attribute holds, by its declared type.
#[derive(Debug)]
pub enum AttrValue<'a> {
    Float(f32),
    Int(i64),
    String(&'a [u8]),
    Tensor(&'a Tensor),
    Graph(&'a Graph),
    SparseTensor(&'a SparseTensor),
    Type(&'a TypeInfo),
    Floats(&'a [f32]),
    Ints(&'a [i64]),
    Strings(&'a [Vec<u8>]),
    Tensors(&'a [Tensor]),
    Graphs(&'a [Graph]),
    SparseTensors(&'a [SparseTensor]),
    Types(&'a [TypeInfo]),
    /// A reference to an attribute of the enclosing function (`ref_attr_name`).
    Ref(&'a str),
    Undefined,
}

impl Attribute {
    fn named(name: &str, ty: i32) -> Attribute {
        Attribute {
            name: name.to_string(),
            ty: Some(ty),
            ..Default::default()
        }
    }

    pub fn int(name: &str, v: i64) -> Attribute {
        Attribute {
            i: Some(v),
            ..Self::named(name, kind::INT)
        }
    }

    pub fn float(name: &str, v: f32) -> Attribute {
        Attribute {
            f: Some(v),
            ..Self::named(name, kind::FLOAT)
        }
    }

    pub fn string(name: &str, v: &str) -> Attribute {
        Attribute {
            s: Some(v.as_bytes().to_vec()),
            ..Self::named(name, kind::STRING)
        }
    }

    pub fn ints(name: &str, v: Vec<i64>) -> Attribute {
        Attribute {
            ints: v,
            ..Self::named(name, kind::INTS)
        }
    }

    pub fn floats(name: &str, v: Vec<f32>) -> Attribute {
        Attribute {
            floats: v,
            ..Self::named(name, kind::FLOATS)
        }
    }

    pub fn tensor(name: &str, t: Tensor) -> Attribute {
        Attribute {
            t: Some(t),
            ..Self::named(name, kind::TENSOR)
        }
    }

    pub fn value(&self) -> AttrValue<'_> {
        if let Some(r) = &self.ref_attr_name {
            return AttrValue::Ref(r);
        }
        match self.ty.unwrap_or(0) {
            kind::FLOAT => AttrValue::Float(self.f.unwrap_or(0.0)),
            kind::INT => AttrValue::Int(self.i.unwrap_or(0)),
            kind::STRING => AttrValue::String(self.s.as_deref().unwrap_or(&[])),
            kind::TENSOR => self
                .t
                .as_ref()
                .map_or(AttrValue::Undefined, AttrValue::Tensor),
            kind::GRAPH => self
                .g
                .as_deref()
                .map_or(AttrValue::Undefined, AttrValue::Graph),
            kind::SPARSE_TENSOR => self
                .sparse_tensor
                .as_ref()
                .map_or(AttrValue::Undefined, AttrValue::SparseTensor),
            kind::TYPE_PROTO => self
                .tp
                .as_ref()
                .map_or(AttrValue::Undefined, AttrValue::Type),
            kind::FLOATS => AttrValue::Floats(&self.floats),
            kind::INTS => AttrValue::Ints(&self.ints),
            kind::STRINGS => AttrValue::Strings(&self.strings),
            kind::TENSORS => AttrValue::Tensors(&self.tensors),
            kind::GRAPHS => AttrValue::Graphs(&self.graphs),
            kind::SPARSE_TENSORS => AttrValue::SparseTensors(&self.sparse_tensors),
            kind::TYPE_PROTOS => AttrValue::Types(&self.type_protos),
            _ => AttrValue::Undefined,
        }
    }

    /// Every subgraph this attribute holds.
    pub fn subgraphs(&self) -> impl Iterator<Item = &Graph> {
        self.g.as_deref().into_iter().chain(self.graphs.iter())
    }

    pub fn subgraphs_mut(&mut self) -> impl Iterator<Item = &mut Graph> {
        self.g
            .as_deref_mut()
            .into_iter()
            .chain(self.graphs.iter_mut())
    }
}
