//! Tiny models built with the IR builder, for pass tests.
use onnxq::ir::*;

pub fn weights(n: usize, seed: u32, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
    (0..n)
        .map(|i| {
            s = s.wrapping_mul(1664525).wrapping_add(1013904223);
            let u = (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5;
            // A few outlier channels, as real layers have.
            if i % 61 == 0 {
                u * scale * 8.0
            } else {
                u * scale
            }
        })
        .collect()
}

/// A tensor ValueInfo of `dtype` with `dims`.
pub fn tensor_info(dtype: DType, dims: &[Dim]) -> ValueInfo {
    ValueInfo {
        ty: Some(TypeInfo {
            kind: TypeKind::Tensor {
                elem_type: Some(dtype.code()),
                shape: Some(
                    dims.iter()
                        .map(|d| ShapeDim {
                            dim: d.clone(),
                            denotation: None,
                        })
                        .collect(),
                ),
            },
            denotation: None,
        }),
        ..Default::default()
    }
}

fn float_io(name: &str, dims: &[Dim]) -> (String, ValueInfo) {
    (name.to_string(), tensor_info(DType::F32, dims))
}

/// x[batch, 64] → MatMul(W0) + b0 → Relu → MatMul(W1) → y[batch, 64]; with `extras`
/// also a Gemm (transB, bias), a MatMul through Transpose and one on a Constant node,
/// and an embedding Gather on a second input `ids`.
pub fn mlp(extras: bool) -> Model {
    let mut m = Model {
        ir_version: Some(8),
        opset_import: vec![OpsetImport {
            domain: Some(String::new()),
            version: Some(17),
        }],
        producer_name: Some("onnxq-tests".into()),
        has_graph: true,
        ..Default::default()
    };
    let g = &mut m.graph;
    g.name = Some("mlp".into());
    let batch = Dim::Param("batch".into());
    let (n, i) = float_io("x", &[batch.clone(), Dim::Value(64)]);
    let x = g.add_input(&n, i).unwrap();
    let w0 = g
        .add_initializer(Tensor::from_f32(
            "fc0.weight",
            vec![64, 96],
            &weights(64 * 96, 1, 0.2),
        ))
        .unwrap();
    let b0 = g
        .add_initializer(Tensor::from_f32("fc0.bias", vec![96], &weights(96, 2, 0.1)))
        .unwrap();
    let w1 = g
        .add_initializer(Tensor::from_f32(
            "fc1.weight",
            vec![96, 64],
            &weights(96 * 64, 3, 0.2),
        ))
        .unwrap();
    let mm0 = g
        .add_node(
            NodeSpec::new("", "MatMul")
                .name("fc0/MatMul")
                .input(x)
                .input(w0)
                .output("h0"),
        )
        .unwrap();
    let h0 = g.node(mm0).output(0).unwrap();
    let add = g
        .add_node(
            NodeSpec::new("", "Add")
                .name("fc0/Add")
                .input(h0)
                .input(b0)
                .output("h1"),
        )
        .unwrap();
    let h1 = g.node(add).output(0).unwrap();
    let relu = g
        .add_node(
            NodeSpec::new("", "Relu")
                .name("relu")
                .input(h1)
                .output("h2"),
        )
        .unwrap();
    let h2 = g.node(relu).output(0).unwrap();
    g.add_node(
        NodeSpec::new("", "MatMul")
            .name("fc1/MatMul")
            .input(h2)
            .input(w1)
            .output("y"),
    )
    .unwrap();
    let y = g.find("y").unwrap();
    g.outputs.push(GraphIo {
        value: y,
        info: float_io("y", &[batch.clone(), Dim::Value(64)]).1,
    });
    if extras {
        let w2 = g
            .add_initializer(Tensor::from_f32(
                "fc2.weight",
                vec![32, 96],
                &weights(32 * 96, 4, 0.2),
            ))
            .unwrap();
        let c2 = g
            .add_initializer(Tensor::from_f32("fc2.bias", vec![32], &weights(32, 5, 0.1)))
            .unwrap();
        g.add_node(
            NodeSpec::new("", "Gemm")
                .name("fc2/Gemm")
                .input(h2)
                .input(w2)
                .input(c2)
                .output("y2")
                .attr(Attribute::int("transB", 1)),
        )
        .unwrap();
        let w3 = g
            .add_initializer(Tensor::from_f32(
                "fc3.weight",
                vec![48, 96],
                &weights(48 * 96, 6, 0.2),
            ))
            .unwrap();
        let t = g
            .add_node(
                NodeSpec::new("", "Transpose")
                    .name("fc3/Transpose")
                    .input(w3)
                    .output("fc3.weight.T"),
            )
            .unwrap();
        let w3t = g.node(t).output(0).unwrap();
        g.add_node(
            NodeSpec::new("", "MatMul")
                .name("fc3/MatMul")
                .input(h2)
                .input(w3t)
                .output("y3"),
        )
        .unwrap();
        let c = g
            .add_node(
                NodeSpec::new("", "Constant")
                    .name("fc4/Constant")
                    .output("fc4.weight")
                    .attr(Attribute::tensor(
                        "value",
                        Tensor::from_f32("fc4.weight", vec![96, 16], &weights(96 * 16, 7, 0.2)),
                    )),
            )
            .unwrap();
        let w4 = g.node(c).output(0).unwrap();
        g.add_node(
            NodeSpec::new("", "MatMul")
                .name("fc4/MatMul")
                .input(h2)
                .input(w4)
                .output("y4"),
        )
        .unwrap();
        let ids_info = ValueInfo {
            ty: Some(TypeInfo {
                kind: TypeKind::Tensor {
                    elem_type: Some(DType::I64.code()),
                    shape: Some(vec![
                        ShapeDim {
                            dim: batch.clone(),
                            denotation: None,
                        },
                        ShapeDim {
                            dim: Dim::Value(4),
                            denotation: None,
                        },
                    ]),
                },
                denotation: None,
            }),
            ..Default::default()
        };
        let ids = g.add_input("ids", ids_info).unwrap();
        let emb = g
            .add_initializer(Tensor::from_f32(
                "embed.weight",
                vec![16, 64],
                &weights(16 * 64, 8, 0.5),
            ))
            .unwrap();
        g.add_node(
            NodeSpec::new("", "Gather")
                .name("embed/Gather")
                .input(emb)
                .input(ids)
                .output("e"),
        )
        .unwrap();
        for (name, n_out) in [("y2", 32), ("y3", 48), ("y4", 16)] {
            let v = g.find(name).unwrap();
            g.outputs.push(GraphIo {
                value: v,
                info: float_io(name, &[batch.clone(), Dim::Value(n_out)]).1,
            });
        }
        let e = g.find("e").unwrap();
        g.outputs.push(GraphIo {
            value: e,
            info: float_io("e", &[batch.clone(), Dim::Value(4), Dim::Value(64)]).1,
        });
    }
    m
}
