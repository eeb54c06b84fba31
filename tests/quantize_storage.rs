//! How quantized weights are stored: a tied embedding and lm_head sharing one
//! quantized tensor, float16/bfloat16 weights keeping their scale type, and spilled
//! tensors writing the same bytes as in-memory ones, and a tied head quantized by
//! GPTQ (--tied-head calibrated) whose codes the embedding reads.
mod common;

use std::path::Path;
use std::process::Command;

use common::run::*;
use onnxq::ir::float_tensor;
use onnxq::ir::{Attribute, DType, Dim, GraphIo, NodeSpec, Tensor, TypeInfo, TypeKind};

/// A toy tied LM: e = Gather(embed, ids), logits = MatMul(e, Transpose(embed)); the
/// table [vocab, hidden] is of `dtype`; outputs e and logits.
fn tied_lm(vocab: usize, hidden: usize, dtype: DType) -> onnxq::Model {
    let mut m = onnxq::Model {
        ir_version: Some(8),
        opset_import: vec![onnxq::ir::OpsetImport {
            domain: Some(String::new()),
            version: Some(17),
        }],
        producer_name: Some("onnxq-tests".into()),
        has_graph: true,
        ..Default::default()
    };
    let g = &mut m.graph;
    g.name = Some("tied".into());
    let batch = Dim::Param("batch".into());
    let ids = g
        .add_input(
            "ids",
            common::build::tensor_info(DType::I64, &[batch.clone(), Dim::Value(5)]),
        )
        .unwrap();
    let emb = g
        .add_initializer(float_tensor(
            "embed.weight",
            dtype,
            vec![vocab as i64, hidden as i64],
            &common::build::weights(vocab * hidden, 11, 0.5),
        ))
        .unwrap();
    let gather = g
        .add_node(
            NodeSpec::new("", "Gather")
                .name("/embed/Gather")
                .input(emb)
                .input(ids)
                .output("e"),
        )
        .unwrap();
    let t = g
        .add_node(
            NodeSpec::new("", "Transpose")
                .name("/lm_head/Transpose")
                .input(emb)
                .output("embed.weight.T")
                .attr(Attribute::ints("perm", vec![1, 0])),
        )
        .unwrap();
    let e = g.node(gather).output(0).unwrap();
    let et = g.node(t).output(0).unwrap();
    let mm = g
        .add_node(
            NodeSpec::new("", "MatMul")
                .name("/lm_head/MatMul")
                .input(e)
                .input(et)
                .output("logits"),
        )
        .unwrap();
    let logits = g.node(mm).output(0).unwrap();
    let h = Dim::Value(hidden as i64);
    g.outputs.push(GraphIo {
        value: e,
        info: common::build::tensor_info(dtype, &[batch.clone(), Dim::Value(5), h]),
    });
    g.outputs.push(GraphIo {
        value: logits,
        info: common::build::tensor_info(dtype, &[batch, Dim::Value(5), Dim::Value(vocab as i64)]),
    });
    m
}

/// The same model with every float32 initializer, Constant and graph input/output
/// turned into `dtype` (float16 or bfloat16).
fn with_float_type(mut m: onnxq::Model, dtype: DType) -> onnxq::Model {
    let cast = |t: &Tensor| float_tensor(t.name(), dtype, t.dims.clone(), &t.to_f32().unwrap());
    let g = &mut m.graph;
    let inits: Vec<_> = g
        .initializers()
        .filter(|(_, t)| t.dtype() == DType::F32)
        .map(|(v, t)| (v, cast(t)))
        .collect();
    for (v, t) in inits {
        g.set_initializer(v, t);
    }
    for id in g.node_ids() {
        for a in g.node_mut(id).attributes.iter_mut() {
            if let Some(t) = a.t.as_mut().filter(|t| t.dtype() == DType::F32) {
                *t = cast(t);
            }
        }
    }
    for io in g.inputs.iter_mut().chain(g.outputs.iter_mut()) {
        if let Some(TypeInfo {
            kind: TypeKind::Tensor { elem_type, .. },
            ..
        }) = io.info.ty.as_mut()
        {
            if *elem_type == Some(DType::F32.code()) {
                *elem_type = Some(dtype.code());
            }
        }
    }
    m
}

/// Bytes of all initializers of the main graph, by dtype.
fn initializer_bytes(m: &onnxq::Model) -> u64 {
    m.graph
        .initializers()
        .map(|(_, t)| t.stored_len() as u64)
        .sum()
}

fn init<'m>(m: &'m onnxq::Model, name: &str) -> &'m Tensor {
    let v = m
        .graph
        .find(name)
        .unwrap_or_else(|| panic!("no value '{name}'"));
    m.graph
        .initializer(v)
        .unwrap_or_else(|| panic!("'{name}' is not an initializer"))
}

/// The one node of `op` (panics unless exactly one).
fn only<'m>(m: &'m onnxq::Model, op: &str) -> &'m onnxq::ir::Node {
    let nodes: Vec<_> = m
        .graph
        .nodes()
        .filter(|(_, n)| n.op_type == op)
        .map(|(_, n)| n)
        .collect();
    assert_eq!(nodes.len(), 1, "{op} nodes: {}", nodes.len());
    nodes[0]
}

fn input_name(m: &onnxq::Model, n: &onnxq::ir::Node, slot: usize) -> String {
    m.graph.value_name(n.input(slot).unwrap()).to_string()
}

/// Checks the GatherBlockQuantized reads MatMulNBits' B (through a Reshape), scales
/// and zero points; returns B's name.
fn assert_gather_reads_lm_head(m: &onnxq::Model) -> String {
    let gbq = only(m, "GatherBlockQuantized");
    let reshape = m.graph.node(
        m.graph
            .producer(gbq.input(0).unwrap())
            .expect("GatherBlockQuantized data is computed"),
    );
    assert_eq!(reshape.op_type, "Reshape");
    let b = input_name(m, reshape, 0);
    let b_value = m.graph.find(&b).unwrap();
    let readers: Vec<_> = m.graph.value(b_value).uses().to_vec();
    assert_eq!(
        readers.len(),
        2,
        "B is read by the Reshape and the lm_head only"
    );
    let mm = readers
        .iter()
        .find_map(|u| match *u {
            onnxq::ir::Use::Input(n, 1) if m.graph.node(n).op_type == "MatMulNBits" => {
                Some(m.graph.node(n))
            }
            _ => None,
        })
        .expect("a MatMulNBits reads B");
    assert_eq!(input_name(m, reshape, 0), b);
    assert_eq!(input_name(m, gbq, 2), input_name(m, mm, 2), "scales");
    assert_eq!(gbq.input(3).is_some(), mm.input(3).is_some(), "zero points");
    if gbq.input(3).is_some() {
        assert_eq!(input_name(m, gbq, 3), input_name(m, mm, 3));
    }
    for a in ["bits", "block_size"] {
        assert_eq!(gbq.attr_int(a), mm.attr_int(a), "{a}");
    }
    b
}

#[test]
fn tied_embedding_and_lm_head_share_one_quantized_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let orig = fixture_arg("llama-decomposed-tied.onnx");
    let table_bytes = init(
        &onnxq::load(Path::new(&orig)).unwrap(),
        "model.embed_tokens.weight",
    )
    .stored_len() as u64;
    for (i, extra) in [&[][..], &["--asymmetric"][..], &["--bits", "8"][..]]
        .iter()
        .enumerate()
    {
        let run = |name: &str, flags: &[&str]| {
            let out = tmp.path().join(format!("{i}-{name}.onnx"));
            // The weight-only pass's own sharing, without the tied-embedding pass.
            let mut args = vec![
                orig.as_str(),
                out.to_str().unwrap(),
                "--no-verify",
                "--tied-head",
                "separate",
            ];
            args.extend_from_slice(flags);
            args.extend_from_slice(extra);
            let o = quantize_cli(&args);
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            (out, String::from_utf8_lossy(&o.stderr).to_string())
        };
        let (shared, err) = run("shared", &["--embeddings"]);
        assert!(err.contains("tied embedding stored once"), "{err}");
        let (lm_only, _) = run("lm-only", &[]);
        let s = onnxq::load(&shared).unwrap();
        let l = onnxq::load(&lm_only).unwrap();
        let b = assert_gather_reads_lm_head(&s);
        assert_eq!(init(&s, &b).dims[0], 320);
        // The float table is gone and nothing replaced it but the 2 x int64 shape of
        // the Reshape: the quantized table is stored once.
        assert_eq!(
            initializer_bytes(&s),
            initializer_bytes(&l) - table_bytes + 16,
            "{extra:?}"
        );
        // The file holds it once as well.
        let file = |p: &Path| std::fs::metadata(p).unwrap().len() as i64;
        let d = file(&lm_only) - file(&shared);
        assert!(
            (d - table_bytes as i64).abs() < 2048,
            "{extra:?}: {d} bytes smaller, table {table_bytes}"
        );
        // tract (lowered) runs it and agrees with the float model as before.
        let e = rel_l2(Path::new(&orig), &shared);
        eprintln!("{extra:?}: rel L2 (tract) {e:.4}");
        assert!(e > 0.0 && e < 0.35, "{extra:?}: {e}");

        // Quantizing the table twice (embedding pass first, so nothing is shared)
        // gives the same values: ORT's outputs must be identical.
        let Some(py) = common::python() else { continue };
        let recipe = format!(
            "[recipe]\nname='t'\n[[pass]]\nname='gather-block-quantized'\nbits={bits}\nsymmetric={sym}\n[[pass]]\nname='matmul-nbits'\nbits={bits}\nsymmetric={sym}\n",
            bits = if extra.contains(&"8") { 8 } else { 4 },
            sym = !extra.contains(&"--asymmetric"),
        );
        let twice = apply(&onnxq::load(Path::new(&orig)).unwrap(), &recipe);
        let g = only(&twice, "GatherBlockQuantized");
        assert!(twice.graph.initializer(g.input(0).unwrap()).is_some());
        let twice = save(&twice, tmp.path(), &format!("{i}-twice.onnx"));
        assert!(file(&twice) > file(&shared) + 1000);
        common::py(
            &py,
            "ort_check.py",
            &["run", shared.to_str().unwrap(), &orig],
        );
        let e: f64 = common::py(
            &py,
            "ort_check.py",
            &["error", twice.to_str().unwrap(), shared.to_str().unwrap()],
        )
        .trim()
        .parse()
        .unwrap();
        assert!(e < 1e-6, "{extra:?}: shared vs quantized twice in ORT: {e}");
    }
}

/// Dequantizes the MatMulNBits-layout weight `b` (rows × cols) of model `m`.
fn dequantize_b(m: &onnxq::Model, mm: &onnxq::ir::Node, rows: usize, cols: usize) -> Vec<f32> {
    let b = init(m, &input_name(m, mm, 1));
    let scales = init(m, &input_name(m, mm, 2)).to_f32().unwrap();
    let zp = mm.input(3).map(|z| {
        m.graph
            .initializer(z)
            .unwrap()
            .raw_bytes()
            .unwrap()
            .into_owned()
    });
    let params = onnxq::quant::nbits::QuantParams::new(
        mm.attr_int("bits").unwrap() as u8,
        mm.attr_int("block_size").unwrap() as usize,
        zp.is_none(),
    )
    .unwrap();
    onnxq::quant::nbits::BlockQuant::from_parts(
        params,
        rows,
        cols,
        b.raw_bytes().unwrap().into_owned(),
        scales,
        zp,
    )
    .unwrap()
    .dequantize_rows()
}

fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}

#[test]
fn tied_table_whose_hidden_size_is_not_a_multiple_of_the_block_is_shared_and_sliced() {
    let tmp = tempfile::tempdir().unwrap();
    // hidden 80 = 2.5 blocks of 32: the last block is padded in B; 3 blocks make an
    // odd number of 4-bit zero points per row.
    for (dtype, tag) in [(DType::F32, "f32"), (DType::F16, "f16")] {
        let model = tied_lm(100, 80, dtype);
        let orig = save(&model, tmp.path(), &format!("tied-{tag}.onnx"));
        for sym in [true, false] {
            let out = tmp.path().join(format!("q-{tag}-{sym}.onnx"));
            let mut args = vec![
                orig.to_str().unwrap(),
                out.to_str().unwrap(),
                "--embeddings",
                "--runtime",
                "tract",
            ];
            if !sym {
                args.push("--asymmetric");
            }
            let o = quantize_cli(&args);
            let err = String::from_utf8_lossy(&o.stderr);
            // Verified by tract (through the lowering, which sees through the Reshape).
            assert!(o.status.success(), "{err}");
            assert!(err.contains("padding is sliced off"), "{err}");
            let q = onnxq::load(&out).unwrap();
            assert_gather_reads_lm_head(&q);
            let slice = only(&q, "Slice");
            assert_eq!(q.graph.value_name(slice.output(0).unwrap()), "e");
            // Nothing float is left but the 3 Slice constants and the Reshape shape.
            let b = q
                .graph
                .initializers()
                .filter(|(_, t)| t.dtype() == DType::U8 && t.dims.len() == 3)
                .count();
            assert_eq!(b, 1);
            assert!(!q
                .graph
                .initializers()
                .any(|(_, t)| t.dtype() == dtype && t.dims.len() == 2 && t.dims[1] == 80));
            let scales = init(&q, &input_name(&q, only(&q, "MatMulNBits"), 2));
            assert_eq!(scales.dtype(), dtype);
            // The reference: the same graph with the shared weight dequantized.
            let deq = dequantize_b(&q, only(&q, "MatMulNBits"), 100, 80);
            let w = init(&onnxq::load(&orig).unwrap(), "embed.weight")
                .to_f32()
                .unwrap();
            let e = rel_err(&deq, &w);
            assert!(e < 0.15, "{tag} sym={sym}: weight rel err {e}");
            let mut reference = model.clone();
            let v = reference.graph.find("embed.weight").unwrap();
            reference
                .graph
                .set_initializer(v, float_tensor("embed.weight", dtype, vec![100, 80], &deq));
            let reference = save(&reference, tmp.path(), &format!("ref-{tag}-{sym}.onnx"));
            let e_ref = rel_l2(&reference, &out);
            let e_orig = rel_l2(&orig, &out);
            eprintln!(
                "{tag} sym={sym}: tract rel L2 vs dequantized {e_ref:.2e}, vs float {e_orig:.4}"
            );
            let tol = if dtype == DType::F16 { 2e-3 } else { 1e-5 };
            assert!(e_ref < tol, "{tag} sym={sym}: {e_ref}");
            let Some(py) = common::python() else { continue };
            common::py(&py, "ort_check.py", &["run", out.to_str().unwrap()]);
            let e: f64 = common::py(
                &py,
                "ort_check.py",
                &["error", reference.to_str().unwrap(), out.to_str().unwrap()],
            )
            .trim()
            .parse()
            .unwrap();
            eprintln!("{tag} sym={sym}: ORT rel L2 vs dequantized {e:.2e}");
            assert!(e < tol, "{tag} sym={sym}: ORT {e}");
        }
    }
}

/// Runs `onnxq quantize` with verification (relative L2 at most 0.4 on every
/// output); returns the worst verify rel L2 over the outputs.
fn quantize_verified(orig: &Path, out: &Path, flags: &[&str]) -> f64 {
    let report = out.with_extension("json");
    let mut args = vec![
        orig.to_str().unwrap(),
        out.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
        "--max-rel-l2",
        "0.4",
    ];
    args.extend_from_slice(flags);
    let o = quantize_cli(&args);
    assert!(
        o.status.success(),
        "{flags:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(
        r["verify"]["thresholds"]["max_rel_l2"], 0.4,
        "{flags:?}: {r}"
    );
    assert_eq!(r["verify"]["passed"], true, "{flags:?}: {r}");
    r["verify"]["report"]["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["rel_l2"].as_f64().unwrap())
        .fold(0.0, f64::max)
}

#[test]
fn float16_weights_quantize_in_every_format_with_float16_scales() {
    let tmp = tempfile::tempdir().unwrap();
    let model32 = common::build::mlp(true);
    let model = with_float_type(model32.clone(), DType::F16);
    let orig = save(&model, tmp.path(), "mlp16.onnx");
    let orig32 = save(&model32, tmp.path(), "mlp32.onnx");
    let py = common::python();
    let variants: &[&[&str]] = &[
        &[],
        &["--algorithm", "hqq"],
        &["--algorithm", "bnb4"],
        &["--format", "qdq"],
        &["--format", "qdq", "--asymmetric"],
        &["--embeddings"],
        &["--embeddings", "--asymmetric", "--bits", "8"],
    ];
    for (i, v) in variants.iter().enumerate() {
        // Verified against the float16 original (ORT when installed, else tract);
        // the error is the one the same settings give the float32 model (4-bit on
        // this MLP's outlier channels: 0.15-0.30; 8-bit 0.01).
        let out = tmp.path().join(format!("v{i}.onnx"));
        let e16 = quantize_verified(&orig, &out, v);
        let e32 = quantize_verified(&orig32, &tmp.path().join(format!("w{i}.onnx")), v);
        eprintln!("{v:?}: verify rel L2 float16 {e16:.4}, float32 {e32:.4}");
        assert!(e16 > 0.0 && e16 < 0.4, "{v:?}: {e16}");
        assert!(
            (e16 - e32).abs() < 0.01 + 0.05 * e32,
            "{v:?}: {e16} vs {e32}"
        );
        // Every new scale tensor is float16, like the weights.
        let q = onnxq::load(&out).unwrap();
        let scales: Vec<_> = q
            .graph
            .initializers()
            .filter(|(_, t)| {
                let n = t.name();
                n.ends_with("_scales") || n.ends_with("_scale") || n.ends_with("_absmax")
            })
            .collect();
        assert!(!scales.is_empty(), "{v:?}");
        for (_, t) in scales {
            assert_eq!(t.dtype(), DType::F16, "{v:?}: {}", t.name());
        }
        assert!(!q.graph.initializers().any(|(_, t)| t.dtype() == DType::F32));
        let Some(py) = &py else { continue };
        common::py(py, "check_model.py", &[out.to_str().unwrap()]);
        common::py(
            py,
            "ort_check.py",
            &["run", out.to_str().unwrap(), orig.to_str().unwrap()],
        );
        let e: f64 = common::py(
            py,
            "ort_check.py",
            &["error", orig.to_str().unwrap(), out.to_str().unwrap()],
        )
        .trim()
        .parse()
        .unwrap();
        eprintln!("{v:?}: rel L2 in onnxruntime {e:.4}");
        assert!(e < 0.3, "{v:?}: {e}");
    }
}

#[test]
fn bfloat16_weights_keep_bfloat16_scales_and_say_verification_was_skipped() {
    // ONNX Runtime's CPU provider runs no bfloat16 MatMul, MatMulNBits, Gather...
    // (neither does tract): the original does not run on this machine, so the
    // output keeps the model's type (bfloat16 scales, as the ops' specs require:
    // scales have A's type) and verification is skipped with a warning. The check
    // here is the weights themselves, dequantized.
    let tmp = tempfile::tempdir().unwrap();
    let model = with_float_type(common::build::mlp(true), DType::BF16);
    let orig = save(&model, tmp.path(), "mlp-bf16.onnx");
    let w0 = init(&model, "fc0.weight").to_f32().unwrap(); // [64, 96] = [K, N]
    let variants: &[&[&str]] = &[
        &[],
        &["--asymmetric"],
        &["--algorithm", "hqq"],
        &["--algorithm", "bnb4"],
        &["--format", "qdq"],
        &["--embeddings"],
    ];
    let py = common::python();
    for (i, v) in variants.iter().enumerate() {
        let out = tmp.path().join(format!("b{i}.onnx"));
        let mut args = vec![orig.to_str().unwrap(), out.to_str().unwrap()];
        args.extend_from_slice(v);
        let o = quantize_cli(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{v:?}: {err}");
        assert!(err.contains("verification skipped"), "{v:?}: {err}");
        let q = onnxq::load(&out).unwrap();
        for (_, t) in q.graph.initializers() {
            assert!(t.dtype() != DType::F32, "{v:?}: {} is float32", t.name());
        }
        if v.is_empty() || v.contains(&"--asymmetric") || v.contains(&"hqq") {
            let mm = q
                .graph
                .nodes()
                .map(|(_, n)| n)
                .find(|n| n.op_type == "MatMulNBits" && n.name().starts_with("fc0"))
                .unwrap();
            assert_eq!(init(&q, &input_name(&q, mm, 2)).dtype(), DType::BF16);
            // B rows are W's columns: compare transposed.
            let deq = dequantize_b(&q, mm, 96, 64);
            let deq_kn: Vec<f32> = (0..64 * 96).map(|i| deq[(i % 96) * 64 + i / 96]).collect();
            let e = rel_err(&deq_kn, &w0);
            eprintln!("{v:?}: fc0 weight rel err {e:.4}");
            assert!(e < 0.15, "{v:?}: {e}");
        }
        if v.contains(&"--embeddings") {
            let g = only(&q, "GatherBlockQuantized");
            assert_eq!(init(&q, &input_name(&q, g, 2)).dtype(), DType::BF16);
        }
        if let Some(py) = &py {
            common::py(py, "check_model.py", &[out.to_str().unwrap()]);
        }
    }
}

#[test]
fn spilled_and_in_memory_quantization_write_identical_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let orig = fixture_arg("llama-decomposed-tied.onnx");
    // In process: with a 1-byte threshold every new tensor is spilled (a map of the
    // spill file), yet the saved bytes equal those of an in-memory run.
    let model = onnxq::load(Path::new(&orig)).unwrap();
    let recipe = "[recipe]\nname='t'\n[[pass]]\nname='matmul-nbits'\nsymmetric=false\n[[pass]]\nname='gather-block-quantized'\nsymmetric=false\n";
    let mut saved = Vec::new();
    for spill in [Some(1), None] {
        onnxq::io::spill::set_min_bytes(spill);
        let q = apply(&model, recipe);
        let spilled = q
            .graph
            .initializers()
            .filter(|(_, t)| match &t.storage {
                onnxq::ir::Storage::Raw(b) => onnxq::io::spill::is_spilled(b),
                _ => false,
            })
            .count();
        let new = q
            .graph
            .initializers()
            .filter(|(_, t)| t.name().ends_with("_scales") || t.dtype() == DType::U8)
            .count();
        assert!(new >= 30, "{new}");
        assert_eq!(spilled, if spill.is_some() { new } else { 0 }, "{spill:?}");
        let p = save(&q, tmp.path(), &format!("{spill:?}.onnx"));
        saved.push(std::fs::read(p).unwrap());
    }
    onnxq::io::spill::set_min_bytes(None);
    assert!(saved[0] == saved[1]);
    // The CLI, set by the environment, inline and with external data.
    for layout in [
        &[][..],
        &["--external-data", "w.bin", "--size-threshold", "0"][..],
    ] {
        let mut files = Vec::new();
        for (i, (k, v)) in [("ONNXQ_SPILL_MIN_BYTES", "1"), ("ONNXQ_SPILL", "off")]
            .into_iter()
            .enumerate()
        {
            let dir = tmp.path().join(format!("cli{i}-{}", layout.len()));
            std::fs::create_dir_all(&dir).unwrap();
            let out = dir.join("q.onnx");
            let o = Command::new(common::onnxq_bin())
                .env(k, v)
                .args(["quantize", &orig, out.to_str().unwrap(), "--no-verify"])
                .args(["--embeddings", "--algorithm", "hqq"])
                .args(layout)
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            let mut names: Vec<_> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            names.sort();
            files.push(
                names
                    .into_iter()
                    .map(|n| (n.clone(), std::fs::read(dir.join(n)).unwrap()))
                    .collect::<Vec<_>>(),
            );
        }
        assert_eq!(files[0].len(), 1 + !layout.is_empty() as usize);
        assert!(files[0] == files[1], "{layout:?}");
    }
}

#[test]
fn a_tied_table_quantized_differently_for_the_lm_head_is_not_shared_and_says_why() {
    // --bits 2: the lm_head gets 2 bits, embeddings at least 4: two tensors.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("q.onnx");
    let orig = fixture_arg("llama-decomposed-tied.onnx");
    let o = quantize_cli(&[
        &orig,
        out.to_str().unwrap(),
        "--no-verify",
        "--tied-head",
        "separate",
        "--embeddings",
        "--bits",
        "2",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("is not shared with its lm_head")
            && err.contains("bits 2, block size 32; the embedding asks for bits 4"),
        "{err}"
    );
    let q = onnxq::load(&out).unwrap();
    let gbq = only(&q, "GatherBlockQuantized");
    assert!(q.graph.initializer(gbq.input(0).unwrap()).is_some());
    assert_eq!(gbq.attr_int("bits"), Some(4));
}

#[test]
fn a_calibrated_tied_head_is_quantized_by_gptq_and_shared_with_the_embedding() {
    // --tied-head calibrated: GPTQ quantizes the transposed table as the head, and the
    // embedding Gather reads those codes; against the RTN-quantized shared table at
    // the same 4 bits, the head's error on the calibration inputs is lower.
    let tmp = tempfile::tempdir().unwrap();
    let orig = fixture_arg("llama-decomposed-tied.onnx");
    let o = Path::new(&orig);
    let table_bytes = init(&onnxq::load(o).unwrap(), "model.embed_tokens.weight").stored_len();
    let common = ["--algorithm", "gptq", "--calib-samples", "8"];
    let calibrated = tmp.path().join("calibrated.onnx");
    let mut flags = common.to_vec();
    flags.extend(["--tied-head", "calibrated"]);
    let e_calibrated = quantize_verified(o, &calibrated, &flags);
    let rtn_head = tmp.path().join("rtn-head.onnx");
    let mut flags = common.to_vec();
    flags.extend(["--tied-head", "shared", "--tied-head-bits", "4"]);
    let e_rtn_head = quantize_verified(o, &rtn_head, &flags);
    let separate = tmp.path().join("separate.onnx");
    let mut flags = common.to_vec();
    flags.extend(["--tied-head", "separate", "--exclude", "lm_head"]);
    let _ = quantize_verified(o, &separate, &flags);

    let q = onnxq::load(&calibrated).unwrap();
    let b = assert_gather_reads_lm_head(&q);
    let gbq = only(&q, "GatherBlockQuantized");
    assert_eq!(gbq.attr_int("bits"), Some(4));
    assert_eq!(init(&q, &b).dims[0], 320);
    // One 4-bit copy of the table in place of the float one.
    let file = |p: &Path| std::fs::metadata(p).unwrap().len() as f64;
    let saved = file(&separate) - file(&calibrated);
    assert!(
        saved > 0.8 * table_bytes as f64,
        "{saved} bytes saved, table {table_bytes}"
    );
    eprintln!("rel L2: GPTQ head {e_calibrated:.4}, RTN head {e_rtn_head:.4}");
    assert!(
        e_calibrated < e_rtn_head,
        "GPTQ head {e_calibrated} against RTN head {e_rtn_head}"
    );
}
