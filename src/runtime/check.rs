//! Checks named inputs against a model's declared inputs before a runtime sees
//! them, so a wrong name, dtype or shape is reported by name instead of as a
//! backend failure deep inside a kernel.
use std::collections::BTreeMap;

use super::{HostTensor, RuntimeError};
use crate::error::Result;
use crate::ir::{Dim, IoSpec};

/// `float[batch_size,48]`-style description of a declared input.
pub fn describe_spec(s: &IoSpec) -> String {
    let dt = s.dtype.map_or("?".to_string(), |d| d.to_string());
    match &s.dims {
        None => format!("{dt}[?]"),
        Some(dims) => {
            let d: Vec<String> = dims
                .iter()
                .map(|d| match d {
                    Dim::Value(v) => v.to_string(),
                    Dim::Param(p) => p.clone(),
                    Dim::Unknown => "?".into(),
                })
                .collect();
            format!("{dt}[{}]", d.join(","))
        }
    }
}

/// Matches `feeds` to `specs`: every declared input fed once, nothing unknown,
/// dtypes equal, ranks and fixed dims equal, one value per symbolic dim. Returns
/// the tensors in declaration order.
pub fn order_feeds<'a>(
    model: &str,
    specs: &[IoSpec],
    feeds: &'a [(String, HostTensor)],
) -> Result<Vec<&'a HostTensor>> {
    let by_name: BTreeMap<&str, &HostTensor> = feeds.iter().map(|(n, t)| (n.as_str(), t)).collect();
    for (name, _) in feeds {
        if !specs.iter().any(|s| &s.name == name) {
            return Err(RuntimeError::UnknownInput {
                model: model.to_string(),
                name: name.clone(),
                expected: specs
                    .iter()
                    .map(|s| format!("{}: {}", s.name, describe_spec(s)))
                    .collect::<Vec<_>>()
                    .join(", "),
            }
            .into());
        }
    }
    let mut bound: BTreeMap<&str, (usize, &str)> = BTreeMap::new();
    let mut out = Vec::with_capacity(specs.len());
    for s in specs {
        let t = by_name
            .get(s.name.as_str())
            .ok_or_else(|| RuntimeError::MissingInput {
                model: model.to_string(),
                name: s.name.clone(),
                declared: describe_spec(s),
            })?;
        if let Some(dt) = s.dtype {
            if dt != t.dtype {
                return Err(RuntimeError::InputDType {
                    model: model.to_string(),
                    name: s.name.clone(),
                    expected: dt.to_string(),
                    got: t.dtype.to_string(),
                }
                .into());
            }
        }
        if let Some(dims) = &s.dims {
            let shape_err = || RuntimeError::InputShape {
                model: model.to_string(),
                name: s.name.clone(),
                got: t.shape.clone(),
                declared: describe_spec(s),
            };
            if dims.len() != t.shape.len() {
                return Err(shape_err().into());
            }
            for (d, &n) in dims.iter().zip(&t.shape) {
                match d {
                    Dim::Value(v) if *v >= 0 && *v as usize != n => return Err(shape_err().into()),
                    Dim::Param(p) => match bound.get(p.as_str()) {
                        Some(&(first, first_input)) if first != n => {
                            return Err(RuntimeError::DimConflict {
                                model: model.to_string(),
                                dim: p.clone(),
                                first,
                                first_input: first_input.to_string(),
                                second: n,
                                second_input: s.name.clone(),
                            }
                            .into())
                        }
                        _ => {
                            bound.insert(p, (n, &s.name));
                        }
                    },
                    _ => {}
                }
            }
        }
        out.push(*t);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::DType;

    fn spec(name: &str, dims: Vec<Dim>) -> IoSpec {
        IoSpec {
            name: name.into(),
            dtype: Some(DType::F32),
            dims: Some(dims),
        }
    }

    fn feed(name: &str, shape: Vec<usize>) -> (String, HostTensor) {
        let n = shape.iter().product::<usize>();
        (
            name.into(),
            HostTensor::from_f32(shape, &vec![0.0; n]).unwrap(),
        )
    }

    #[test]
    fn errors_name_the_input_and_the_declaration() {
        let specs = [
            spec("a", vec![Dim::Param("batch".into()), Dim::Value(4)]),
            spec("b", vec![Dim::Param("batch".into())]),
        ];
        let ok = [feed("a", vec![2, 4]), feed("b", vec![2])];
        assert_eq!(order_feeds("m", &specs, &ok).unwrap().len(), 2);

        let e = order_feeds("m", &specs, &[feed("a", vec![2, 5]), feed("b", vec![2])])
            .unwrap_err()
            .to_string();
        assert!(e.contains("'a'") && e.contains("float[batch,4]"), "{e}");

        let e = order_feeds("m", &specs, &[feed("a", vec![2, 4]), feed("b", vec![3])])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("'batch'") && e.contains("2") && e.contains("3"),
            "{e}"
        );

        let e = order_feeds("m", &specs, &[feed("a", vec![2, 4])])
            .unwrap_err()
            .to_string();
        assert!(e.contains("no value given for input 'b'"), "{e}");

        let e = order_feeds(
            "m",
            &specs,
            &[
                feed("a", vec![2, 4]),
                feed("b", vec![2]),
                feed("c", vec![1]),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("no input named 'c'"), "{e}");

        let i = (
            "b".to_string(),
            HostTensor::from_i64(vec![2], &[1, 2]).unwrap(),
        );
        let e = order_feeds("m", &specs, &[feed("a", vec![2, 4]), i])
            .unwrap_err()
            .to_string();
        assert!(e.contains("must be float, got int64"), "{e}");
    }
}
