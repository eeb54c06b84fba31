#!/usr/bin/env python3
"""All-in weight bytes of a (quantized) decoder, counted from the file, and the
parameters they hold, counted from the float model.

  .venv/bin/python benches/real_decoder/weight_bytes.py FLOAT.onnx MODEL.onnx

Prints one JSON line: params, weight_bytes, bpw (= 8 * weight_bytes / params), file_bytes.

Parameters: every distinct 2-D float initializer read as a MatMul/Gemm weight (directly
or through a Transpose: a tied lm_head counts once with its embedding) or as a Gather
table of hidden-size rows (embeddings, not rotary caches); norms and biases excluded.
Weight bytes: what the model stores for those weights: MatMulNBits B, scales and zero
points; GatherBlockQuantized data, scales and zero points; float MatMul/Gemm weights and
Gather tables; each initializer once, followed through Transpose, Reshape (a tied table
read by GatherBlockQuantized) and Cast (float16 scales, onnxq --scale-type f16). The same
counting as tests/mixed.rs and onnxq's mixed-precision budget.
"""
from __future__ import annotations

import json
import os
import sys

import onnx
from onnx import numpy_helper


def load(path: str) -> onnx.ModelProto:
    return onnx.load(path, load_external_data=False)


def tensor_bytes(t: onnx.TensorProto) -> int:
    ext = {e.key: e.value for e in t.external_data}
    if "length" in ext:
        return int(ext["length"])
    if t.raw_data:
        return len(t.raw_data)
    return numpy_helper.to_array(t).nbytes


def hidden_size(m: onnx.ModelProto, inits: dict) -> int | None:
    # The embedding is the Gather table with the most rows (vocabulary), not a
    # rotary cache (positions).
    tables = [inits[n.input[0]].dims for n in m.graph.node
              if n.op_type == "Gather" and n.input[0] in inits and len(inits[n.input[0]].dims) == 2]
    return int(max(tables, key=lambda d: d[0])[1]) if tables else None


def walk(m: onnx.ModelProto, slots_of, hidden: int | None, count) -> int:
    inits = {t.name: t for t in m.graph.initializer}
    producer = {o: n for n in m.graph.node for o in n.output}
    seen: set[str] = set()
    total = 0
    for n in m.graph.node:
        slots = slots_of(n)
        for s in slots:
            if s >= len(n.input) or not n.input[s]:
                continue
            v = n.input[s]
            p = producer.get(v)
            if p is not None and p.op_type in ("Transpose", "Cast", "Reshape"):
                v = p.input[0]
            t = inits.get(v)
            if t is None or v in seen:
                continue
            quantized = n.domain == "com.microsoft"
            float_ok = len(t.dims) == 2 and (n.op_type != "Gather" or hidden is None or t.dims[1] == hidden)
            if quantized or float_ok:
                seen.add(v)
                total += count(t)
    return total


def main() -> None:
    fp, q = sys.argv[1], sys.argv[2]
    fm = load(fp)
    finits = {t.name: t for t in fm.graph.initializer}
    hidden = hidden_size(fm, finits)

    def float_slots(n):
        if n.op_type in ("MatMul", "Gemm") and n.domain in ("", "ai.onnx"):
            return [1]
        if n.op_type == "Gather" and n.domain in ("", "ai.onnx"):
            return [0]
        return []

    def numel(t):
        k = 1
        for d in t.dims:
            k *= int(d)
        return k

    params = walk(fm, float_slots, hidden, numel)

    def q_slots(n):
        if n.domain == "com.microsoft" and n.op_type == "MatMulNBits":
            return [1, 2, 3]
        if n.domain == "com.microsoft" and n.op_type == "GatherBlockQuantized":
            return [0, 2, 3]
        return float_slots(n)

    qm = load(q)
    weight = walk(qm, q_slots, hidden, tensor_bytes)
    d = os.path.dirname(os.path.abspath(q))
    base = os.path.basename(q)
    files = [f for f in os.listdir(d) if f == base or f.startswith(base + ".") or f.startswith(base + "_")]
    file_bytes = sum(os.path.getsize(os.path.join(d, f)) for f in files)
    print(json.dumps({"params": params, "weight_bytes": weight, "bpw": 8 * weight / params, "file_bytes": file_bytes}))


if __name__ == "__main__":
    main()
