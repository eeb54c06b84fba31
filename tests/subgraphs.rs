//! Weight-only quantization inside If and Loop bodies (README: "inside `If`/`Loop`
//! bodies"), on fixtures/mlp.onnx: its If has a then-branch MatMul on a weight of
//! its own and an else-branch MatMul on an outer-scope weight; its Loop body MatMul
//! reads an outer-scope weight. Every one must become MatMulNBits, and ONNX Runtime
//! must run the result on both branches (make_feeds seed 0 takes then, seed 1 else).
mod common;

use std::collections::BTreeMap;
use std::path::Path;

use onnxq::ir::Graph;
use onnxq::pass::recipe::Recipe;
use onnxq::pass::{run_pipeline, PassCx};

/// Op counts of `g`, and of each subgraph under "<node name>.<attribute>".
fn ops_per_graph(g: &Graph, path: &str, out: &mut BTreeMap<String, BTreeMap<String, usize>>) {
    let mine = out.entry(path.to_string()).or_default();
    for (_, n) in g.nodes() {
        *mine.entry(n.op_type.clone()).or_default() += 1;
    }
    for (_, n) in g.nodes() {
        for a in &n.attributes {
            for sg in a.subgraphs() {
                ops_per_graph(sg, &format!("{}.{}", n.name(), a.name), out);
            }
        }
    }
}

fn count(ops: &BTreeMap<String, BTreeMap<String, usize>>, graph: &str, op: &str) -> usize {
    ops.get(graph)
        .unwrap_or_else(|| panic!("no graph {graph} in {ops:?}"))
        .get(op)
        .copied()
        .unwrap_or(0)
}

fn ort_f64(py: &Path, args: &[&str]) -> f64 {
    common::py(py, "ort_check.py", args).trim().parse().unwrap()
}

#[test]
fn matmuls_in_if_and_loop_bodies_are_quantized_and_run_on_both_branches() {
    let orig = common::fixtures().join("mlp.onnx");
    let mut m = onnxq::load(&orig).unwrap();
    let r = Recipe::load("int4-rtn").unwrap();
    run_pipeline(&mut m, &r.build().unwrap(), &mut PassCx::default()).unwrap();
    let mut ops = BTreeMap::new();
    ops_per_graph(&m.graph, "main", &mut ops);
    // fc1 (+Add), fc2 (Gemm), fc3 (Constant weight), head (+Add).
    assert_eq!(count(&ops, "main", "MatMulNBits"), 4, "{ops:?}");
    for (graph, what) in [
        ("/branch/If.then_branch", "weight of its own"),
        ("/branch/If.else_branch", "outer-scope weight"),
        ("/loop/Loop.body", "outer-scope weight"),
    ] {
        assert_eq!(
            count(&ops, graph, "MatMulNBits"),
            1,
            "{graph} ({what}): {ops:?}"
        );
        assert_eq!(count(&ops, graph, "MatMul"), 0, "{graph}: {ops:?}");
    }

    // The outer-scope float weights went with the MatMuls that read them.
    for w in ["branch.else.weight", "loop.weight"] {
        assert!(
            !m.graph.initializers().any(|(_, t)| t.name() == w),
            "{w} still in the main graph"
        );
    }

    let Some(py) = common::python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("q.onnx");
    onnxq::save(&m, &out, &Default::default()).unwrap();
    let (o, q) = (orig.to_str().unwrap(), out.to_str().unwrap());
    common::py(&py, "ort_check.py", &["run", q, o]);
    // The If condition is sum(input) > 0.
    assert!(
        ort_f64(&py, &["input-sum", o, "0"]) > 0.0,
        "seed 0 takes then"
    );
    assert!(
        ort_f64(&py, &["input-sum", o, "1"]) <= 0.0,
        "seed 1 takes else"
    );
    for seed in ["0", "1"] {
        let e = ort_f64(&py, &["error", o, q, seed]);
        eprintln!("seed {seed}: rel L2 vs fp32 in ONNX Runtime {e:.4}");
        // 4-bit RTN through five to six MatMuls with 8x outlier channels.
        assert!(e > 0.0 && e < 0.3, "seed {seed}: {e}");
    }
}
