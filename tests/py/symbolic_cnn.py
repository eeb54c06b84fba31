"""A small CNN whose input dims are unnamed symbols (unk__12, 3, image_height,
image_width), as converters write them, plus calibration samples for it.

    python symbolic_cnn.py OUT_DIR

writes OUT_DIR/cnn.onnx and OUT_DIR/calib/sample_{0,1}.npz (x: [1, 3, 40, 40]).
Two stride-2 7x7 convolutions without padding need an image of at least 19x19,
so the 16 a sequence default would give does not run; 32 does.
"""
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

out = sys.argv[1]
os.makedirs(os.path.join(out, "calib"), exist_ok=True)
rng = np.random.default_rng(3)


def init(name, shape, scale=0.2):
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["unk__12", 3, "image_height", "image_width"])
y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["unk__12", 16])
nodes = [
    helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", kernel_shape=[7, 7], strides=[2, 2]),
    helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
    helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", kernel_shape=[7, 7], strides=[2, 2]),
    helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
    helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
    helper.make_node("Flatten", ["g"], ["f"], name="flatten", axis=1),
    helper.make_node("MatMul", ["f", "w3"], ["h"], name="fc1"),
    helper.make_node("Relu", ["h"], ["hr"], name="relu3"),
    helper.make_node("Gemm", ["hr", "w4", "b4"], ["y"], name="fc2"),
]
inits = [
    init("w1", [32, 3, 7, 7]),
    init("b1", [32], 0.05),
    init("w2", [64, 32, 7, 7], 0.05),
    init("b2", [64], 0.05),
    init("w3", [64, 64]),
    init("w4", [64, 16]),
    init("b4", [16], 0.05),
]
g = helper.make_graph(nodes, "symbolic_cnn", [x], [y], inits)
m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
m.ir_version = 8
onnx.checker.check_model(m)
onnx.save(m, os.path.join(out, "cnn.onnx"))
for i in range(2):
    np.savez(
        os.path.join(out, "calib", f"sample_{i}.npz"),
        x=rng.standard_normal([1, 3, 40, 40]).astype(np.float32),
    )
print("ok")

# The same model with no declared input shape: nothing to make inputs from.
del m.graph.input[0].type.tensor_type.shape.dim[:]
m.graph.input[0].type.tensor_type.ClearField("shape")
onnx.save(m, os.path.join(out, "cnn_noshape.onnx"))
