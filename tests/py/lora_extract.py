"""`onnxq lora extract` around ONNX Runtime.

    lora_extract.py bake INJECTED ADAPTER OUT
        Writes INJECTED with the adapter's values baked in as initializers, shaped like
        an unmerged PEFT export: A/B named `base_model.model.<module>.lora_{A,B}.default.weight`,
        no longer graph inputs, and B stored halved with a Mul by a shared 2.0 after its
        MatMul (PEFT's `* scaling`).
    lora_extract.py check BASE BAKED EXTRACTED EXTRACTED_ADAPTER INJECTED_ADAPTER
        Prints one JSON object: EXTRACTED with its adapter active vs BAKED, EXTRACTED
        with no adapter vs BASE, BAKED vs BASE, and the largest difference between the
        extracted adapter's parameters and the injected one's (same names required).
"""
from __future__ import annotations

import json
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from lora_check import feeds_for, rel, session


def adapter_params(path):
    """Copies: the arrays ONNX Runtime hands out view memory the reader frees."""
    a = ort.AdapterFormat.read_adapter(path)
    out = {k: np.array(v.numpy(), copy=True) for k, v in a.get_parameters().items()}
    del a
    return out


def bake(injected, adapter, out):
    m = onnx.load(injected)
    g = m.graph
    params = adapter_params(adapter)
    keep = [i for i in g.input if i.name not in params]
    del g.input[:]
    g.input.extend(keep)
    inits = [t for t in g.initializer if t.name not in params]
    renamed = {}
    for name, value in params.items():
        stem, which = name.rsplit(".lora_", 1)
        which = which.split(".")[0]
        new = f"base_model.model.{stem}.lora_{which}.default.weight"
        renamed[name] = new
        if which == "B":
            value = value * np.float32(0.5)
        inits.append(numpy_helper.from_array(value, new))
    inits.append(numpy_helper.from_array(np.array(2.0, dtype=np.float32), "lora_scaling"))
    del g.initializer[:]
    g.initializer.extend(inits)
    nodes = []
    for n in g.node:
        for i, x in enumerate(n.input):
            if x in renamed:
                n.input[i] = renamed[x]
        nodes.append(n)
        if n.op_type == "MatMul" and n.input[1].endswith(".lora_B.default.weight"):
            out_name = n.output[0]
            n.output[0] = out_name + "_unscaled"
            nodes.append(
                helper.make_node("Mul", [n.output[0], "lora_scaling"], [out_name], name=n.name + "_scale")
            )
    del g.node[:]
    g.node.extend(nodes)
    onnx.save(m, out)


def check(base, baked, extracted, extracted_adapter, injected_adapter):
    feeds = feeds_for(session(base))
    base_logits = session(base).run(["logits"], feeds)[0]
    baked_logits = session(baked).run(["logits"], feeds)[0]
    sess = session(extracted)
    la = ort.LoraAdapter()
    la.Load(extracted_adapter)
    ro = ort.RunOptions()
    ro.add_active_adapter(la)
    got = sess.run(["logits"], feeds, ro)[0]
    plain = sess.run(["logits"], feeds)[0]
    ours, theirs = adapter_params(extracted_adapter), adapter_params(injected_adapter)
    assert sorted(ours) == sorted(theirs), (sorted(ours), sorted(theirs))
    diff = max(float(np.abs(ours[k] - theirs[k]).max()) for k in ours)
    print(
        json.dumps(
            {
                "with_adapter_vs_baked": rel(got, baked_logits),
                "no_adapter_vs_base": rel(plain, base_logits),
                "baked_vs_base": rel(baked_logits, base_logits),
                "params_max_abs": diff,
                "params": len(ours),
            }
        )
    )


if __name__ == "__main__":
    cmd, *rest = sys.argv[1:]
    {"bake": bake, "check": check}[cmd](*rest)
