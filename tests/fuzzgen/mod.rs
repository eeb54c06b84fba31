//! Inputs for fuzzing, shared by tests/fuzz.rs (seeded, stable Rust) and the
//! cargo-fuzz targets under fuzz/ (driven by libFuzzer's bytes): byte mutations of
//! real models, and small random graphs with the weights quantizers get wrong, each
//! with a pass configuration drawn from valid and invalid settings.
use onnxq::ir::*;

/// Where the choices come from: a seeded generator or the fuzzer's input bytes.
pub trait Draw {
    fn next(&mut self) -> u64;
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}

/// splitmix64: small, seedable, the same sequence everywhere.
pub struct SplitMix(pub u64);

impl Draw for SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// The fuzzer's bytes, eight at a time; zeros once they run out.
#[allow(dead_code)] // used by the fuzz/ targets, not by tests/fuzz.rs
pub struct Bytes<'a>(pub &'a [u8]);

impl Draw for Bytes<'_> {
    fn next(&mut self) -> u64 {
        let n = self.0.len().min(8);
        let mut b = [0u8; 8];
        b[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        u64::from_le_bytes(b)
    }
}

/// Values that make parsers misbehave when they land in a varint or a length.
pub const INTERESTING: &[&[u8]] = &[
    &[0x00],
    &[0xff],
    &[0x7f],
    &[0x80, 0x01],
    &[0xff, 0xff, 0xff, 0xff, 0x0f],
    &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
    &[0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f],
    &[
        0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01,
    ],
];

pub fn mutate(rng: &mut impl Draw, seed: &[u8], other: &[u8]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        if b.is_empty() {
            b.push(rng.next() as u8);
        }
        let at = rng.below(b.len());
        match rng.below(8) {
            0 => b[at] ^= 1 << rng.below(8),
            1 => b[at] = rng.next() as u8,
            2 => b.truncate(at),
            3 => {
                let v = rng.pick(INTERESTING);
                let end = (at + v.len()).min(b.len());
                b.splice(at..end, v.iter().copied());
            }
            4 => {
                let v = rng.pick(INTERESTING);
                b.splice(at..at, v.iter().copied());
            }
            5 => {
                let len = rng.below(64).min(b.len() - at);
                b.drain(at..at + len);
            }
            6 => {
                // Duplicate a run: repeated fields, nested lengths off by a chunk.
                let len = rng.below(128).min(b.len() - at);
                let chunk = b[at..at + len].to_vec();
                let to = rng.below(b.len());
                b.splice(to..to, chunk);
            }
            _ => {
                if !other.is_empty() {
                    let from = rng.below(other.len());
                    let len = rng.below(256).min(other.len() - from);
                    b.splice(at..at, other[from..from + len].iter().copied());
                }
            }
        }
    }
    b
}

pub fn info(dtype: DType, dims: &[Dim]) -> ValueInfo {
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

/// Weight values with the cases quantizers get wrong: zero blocks, NaN, Inf, huge,
/// subnormal, constant rows.
pub fn values(rng: &mut impl Draw, n: usize) -> Vec<f32> {
    let mode = rng.below(8);
    let mut v: Vec<f32> = (0..n)
        .map(|_| ((rng.next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2)
        .collect();
    match mode {
        0 => v.iter_mut().for_each(|x| *x = 0.0),
        1 => {
            let start = rng.below(n);
            let len = rng.below(64).min(n - start);
            v[start..start + len].iter_mut().for_each(|x| *x = 0.0);
        }
        2 if n > 0 => v[rng.below(n)] = f32::NAN,
        3 if n > 0 => v[rng.below(n)] = *rng.pick(&[f32::INFINITY, f32::NEG_INFINITY]),
        4 => v.iter_mut().for_each(|x| *x *= 1e37),
        5 => v.iter_mut().for_each(|x| *x *= 1e-42),
        6 => v.iter_mut().for_each(|x| *x = 0.125),
        _ => {}
    }
    v
}

/// A small random graph: x[batch, K] through 1..4 MatMul/Gemm layers whose weights
/// come as initializers, Constant nodes or through a Transpose, plus maybe an
/// embedding Gather on `ids`.
pub fn random_model(rng: &mut impl Draw) -> Model {
    let mut m = Model {
        ir_version: Some(8),
        opset_import: vec![OpsetImport {
            domain: Some(String::new()),
            version: Some(*rng.pick(&[13, 17, 21])),
        }],
        producer_name: Some("onnxq-fuzz".into()),
        has_graph: true,
        ..Default::default()
    };
    let g = &mut m.graph;
    g.name = Some("fuzz".into());
    let batch = Dim::Param("batch".into());
    let sizes = [1usize, 3, 8, 16, 17, 31, 32, 33, 48, 64, 100, 128];
    let mut k = *rng.pick(&sizes);
    let x = g
        .add_input(
            "x",
            info(DType::F32, &[batch.clone(), Dim::Value(k as i64)]),
        )
        .unwrap();
    let mut h = x;
    for layer in 0..1 + rng.below(4) {
        let n = *rng.pick(&sizes);
        let out = format!("h{layer}");
        let w = values(rng, k * n);
        let name = format!("layer{layer}.weight");
        match rng.below(4) {
            0 => {
                let wv = g
                    .add_initializer(Tensor::from_f32(&name, vec![k as i64, n as i64], &w))
                    .unwrap();
                g.add_node(
                    NodeSpec::new("", "MatMul")
                        .name(format!("mm{layer}"))
                        .input(h)
                        .input(wv)
                        .output(&out),
                )
                .unwrap();
            }
            1 => {
                let wv = g
                    .add_initializer(Tensor::from_f32(&name, vec![n as i64, k as i64], &w))
                    .unwrap();
                let b = g
                    .add_initializer(Tensor::from_f32(
                        format!("layer{layer}.bias"),
                        vec![n as i64],
                        &values(rng, n),
                    ))
                    .unwrap();
                g.add_node(
                    NodeSpec::new("", "Gemm")
                        .name(format!("gemm{layer}"))
                        .input(h)
                        .input(wv)
                        .input(b)
                        .output(&out)
                        .attr(Attribute::int("transB", 1)),
                )
                .unwrap();
            }
            2 => {
                let wv = g
                    .add_initializer(Tensor::from_f32(&name, vec![n as i64, k as i64], &w))
                    .unwrap();
                let t = g
                    .add_node(
                        NodeSpec::new("", "Transpose")
                            .name(format!("t{layer}"))
                            .input(wv)
                            .output(format!("{name}.T")),
                    )
                    .unwrap();
                let wt = g.node(t).output(0).unwrap();
                g.add_node(
                    NodeSpec::new("", "MatMul")
                        .name(format!("mm{layer}"))
                        .input(h)
                        .input(wt)
                        .output(&out),
                )
                .unwrap();
            }
            _ => {
                let c = g
                    .add_node(
                        NodeSpec::new("", "Constant")
                            .name(format!("c{layer}"))
                            .output(&name)
                            .attr(Attribute::tensor(
                                "value",
                                Tensor::from_f32(&name, vec![k as i64, n as i64], &w),
                            )),
                    )
                    .unwrap();
                let wv = g.node(c).output(0).unwrap();
                g.add_node(
                    NodeSpec::new("", "MatMul")
                        .name(format!("mm{layer}"))
                        .input(h)
                        .input(wv)
                        .output(&out),
                )
                .unwrap();
            }
        }
        h = g.find(&out).unwrap();
        k = n;
    }
    g.outputs.push(GraphIo {
        value: h,
        info: info(DType::F32, &[batch.clone(), Dim::Value(k as i64)]),
    });
    if rng.chance(2) {
        let vocab = 1 + rng.below(40);
        let d = *rng.pick(&[16usize, 32, 33, 64]);
        let ids = g
            .add_input("ids", info(DType::I64, &[batch.clone(), Dim::Value(2)]))
            .unwrap();
        let table = g
            .add_initializer(Tensor::from_f32(
                "embed.weight",
                vec![vocab as i64, d as i64],
                &values(rng, vocab * d),
            ))
            .unwrap();
        g.add_node(
            NodeSpec::new("", "Gather")
                .name("embed")
                .input(table)
                .input(ids)
                .output("e"),
        )
        .unwrap();
        let e = g.find("e").unwrap();
        g.outputs.push(GraphIo {
            value: e,
            info: info(DType::F32, &[batch, Dim::Value(2), Dim::Value(d as i64)]),
        });
    }
    m
}

/// A config for pass `name`, drawn from its valid and some invalid settings.
pub fn random_config(rng: &mut impl Draw, name: &str) -> toml::Table {
    let mut t = toml::Table::new();
    let int = |v: i64| toml::Value::Integer(v);
    match name {
        "matmul-nbits" => {
            t.insert("bits".into(), int(*rng.pick(&[2, 3, 4, 8])));
            t.insert("block-size".into(), int(*rng.pick(&[16, 32, 64, 128, 256])));
            t.insert("symmetric".into(), toml::Value::Boolean(rng.chance(2)));
            t.insert("algorithm".into(), (*rng.pick(&["rtn", "hqq"])).into());
            t.insert("format".into(), (*rng.pick(&["matmulnbits", "qdq"])).into());
        }
        "gather-block-quantized" => {
            t.insert("bits".into(), int(*rng.pick(&[4, 8])));
            t.insert("block-size".into(), int(*rng.pick(&[16, 32, 64, 128])));
            t.insert("symmetric".into(), toml::Value::Boolean(rng.chance(2)));
        }
        "bnb4" => {
            t.insert("quant-type".into(), (*rng.pick(&["nf4", "fp4"])).into());
            t.insert("block-size".into(), int(*rng.pick(&[16, 32, 64, 256])));
        }
        "gptq" | "awq" => {
            t.insert("bits".into(), int(*rng.pick(&[4, 8])));
            t.insert("block-size".into(), int(*rng.pick(&[16, 32, 128])));
            t.insert("calib-samples".into(), int(2));
            t.insert("runtime".into(), "tract".into());
        }
        "int8-static-qdq" | "smooth-quant" => {
            t.insert("calib-samples".into(), int(2));
            t.insert("runtime".into(), "tract".into());
        }
        _ => {}
    }
    t
}
