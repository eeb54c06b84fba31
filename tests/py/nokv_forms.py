"""Writes no-KV variants of the fixtures/decoders forms (same weights) into a folder:
<form>.onnx for each style that can be exported without a cache."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "fixtures"))
from fixturegen import builder  # noqa: E402
from fixturegen.llama import InlineWeights, build_llama  # noqa: E402
from fixturegen.weights import TINY_FORMS, llama_weights  # noqa: E402

out = sys.argv[1]
weights = InlineWeights(llama_weights(TINY_FORMS))
# genai exports always carry a cache; the opset24 builder writes its Attention with past only.
for form in ("decomposed", "dynamo"):
    m = build_llama(TINY_FORMS, form, False, weights, name=f"decoder_{form}_nokv")
    builder.save(m, os.path.join(out, f"{form}.onnx"))
    print(form)

# llama-decomposed with its positions computed in the graph (Range over the sequence
# length) instead of read from position_ids.
import onnx  # noqa: E402
from onnx import helper  # noqa: E402

here = os.path.dirname(os.path.abspath(__file__))
m = onnx.load(os.path.join(here, "..", "..", "fixtures", "llama-decomposed.onnx"))
g = m.graph
g.input.remove(next(i for i in g.input if i.name == "position_ids"))
for n in g.node:
    n.input[:] = ["computed_positions" if x == "position_ids" else x for x in n.input]
g.initializer.extend([
    helper.make_tensor("cp_zero", onnx.TensorProto.INT64, [], [0]),
    helper.make_tensor("cp_one", onnx.TensorProto.INT64, [], [1]),
    helper.make_tensor("cp_axis0", onnx.TensorProto.INT64, [1], [0]),
])
nodes = list(g.node)
del g.node[:]
g.node.extend([
    helper.make_node("Shape", ["input_ids"], ["cp_shape"], name="cp/Shape"),
    helper.make_node("Gather", ["cp_shape", "cp_one"], ["cp_len"], name="cp/Gather", axis=0),
    helper.make_node("Range", ["cp_zero", "cp_len", "cp_one"], ["cp_range"], name="cp/Range"),
    helper.make_node("Unsqueeze", ["cp_range", "cp_axis0"], ["computed_positions"], name="cp/Unsqueeze"),
] + nodes)
onnx.checker.check_model(m)
onnx.save(m, os.path.join(out, "computed-positions.onnx"))
print("computed-positions")
