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
