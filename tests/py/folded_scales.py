"""Checks that onnxruntime folds onnxq's float16 scales (scale-type pass: a float16
initializer behind a Cast to float) into float32 initializers when it loads a model,
so MatMulNBits/GatherBlockQuantized see constant float32 scales and prepack them as
they do without the Cast.

  folded_scales.py MODEL

Saves the model as onnxruntime optimizes it (basic level: constant folding) and
requires: at least one Cast read by a quantized op in MODEL, and in the optimized model
every MatMulNBits/GatherBlockQuantized scale a float32 initializer. Exit 0 on success.
"""
import os
import sys
import tempfile

import onnx
import onnxruntime as ort

QUANTIZED = ("MatMulNBits", "GatherBlockQuantized")


def main():
    src = sys.argv[1]
    m = onnx.load(src, load_external_data=False)
    producer = {o: n for n in m.graph.node for o in n.output}
    cast = [n.name for n in m.graph.node if n.op_type in QUANTIZED
            and n.input[2] in producer and producer[n.input[2]].op_type == "Cast"]
    if not cast:
        sys.exit(f"{src}: no quantized op reads its scales through a Cast")
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "optimized.onnx")
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = out
        ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
        opt = onnx.load(out, load_external_data=False)
    inits = {t.name: t for t in opt.graph.initializer}
    ops = [n for n in opt.graph.node if n.op_type in QUANTIZED]
    bad = [n.name for n in ops if n.input[2] not in inits
           or inits[n.input[2]].data_type != onnx.TensorProto.FLOAT]
    if not ops or bad:
        sys.exit(f"{len(ops)} quantized ops; scales not a float32 initializer after loading: {bad[:5]}")
    print(f"{len(cast)} ops read scales through a Cast; after loading, all {len(ops)} read float32 initializers")


if __name__ == "__main__":
    main()
