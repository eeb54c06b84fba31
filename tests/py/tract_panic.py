"""A model tract 0.23 panics on (tract-core's Pad adds negative pads to usize:
'attempt to add with overflow' in pad.rs) while ONNX Runtime runs it: a negative
Pad (a crop, valid ONNX) before a MatMul with a constant weight.

    python tract_panic.py OUT.onnx
"""
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

rng = np.random.default_rng(5)
x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 66])
y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])
nodes = [
    helper.make_node("Pad", ["x", "pads"], ["cropped"], name="crop"),
    helper.make_node("MatMul", ["cropped", "w"], ["y"], name="fc"),
]
inits = [
    numpy_helper.from_array(np.array([0, -1, 0, -1], dtype=np.int64), "pads"),
    numpy_helper.from_array(rng.standard_normal([64, 8]).astype(np.float32), "w"),
]
g = helper.make_graph(nodes, "tract_panic", [x], [y], inits)
m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
m.ir_version = 8
onnx.checker.check_model(m)
onnx.save(m, sys.argv[1])
print("ok")
