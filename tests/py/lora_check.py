"""LoRA with ONNX Runtime's own adapter API (onnxruntime.LoraAdapter,
RunOptions.add_active_adapter), against references merged here in numpy.

    lora_check.py BASE INJECTED [--merged NAME=MODEL]... --adapter NAME=PEFT_DIR=FILE...

BASE is the model the adapters were injected into (float, or MatMulNBits whose
weights are dequantized here). For each adapter the reference is BASE with
W + scale * B @ A folded in by HF tensor name (independent of onnxq's decoder
map), scale = lora_alpha / r (rank_pattern / alpha_pattern / use_rslora as PEFT).
Prints one JSON object: per adapter the relative error of the injected model with
the adapter active (one session, adapters switched in turn), of `onnxq lora merge`
outputs, and the base check with no adapter active.
"""
from __future__ import annotations

import json
import math
import struct
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

SAFE_DTYPES = {"F32": np.float32, "F16": np.float16}


def read_safetensors(path):
    """The safetensors layout: u64 header length, JSON header, raw little-endian data."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    body = data[8 + n :]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        arr = np.frombuffer(body[a:b], dtype=SAFE_DTYPES[info["dtype"]]).reshape(info["shape"])
        out[name] = arr.astype(np.float32)
    return out


def key_matches(key, module):
    return module == key or module.endswith("." + key)


def peft_deltas(peft_dir):
    """{module: scale * B @ A} as [N, K] float64."""
    cfg = json.load(open(f"{peft_dir}/adapter_config.json"))
    tensors = read_safetensors(f"{peft_dir}/adapter_model.safetensors")
    out = {}
    for name, a in tensors.items():
        if not name.endswith(".lora_A.weight"):
            continue
        module = name[: -len(".lora_A.weight")]
        b = tensors[module + ".lora_B.weight"]
        short = module.removeprefix("base_model.model.")
        r = next((v for k, v in cfg.get("rank_pattern", {}).items() if key_matches(k, short)), cfg["r"])
        alpha = next(
            (v for k, v in cfg.get("alpha_pattern", {}).items() if key_matches(k, short)), cfg["lora_alpha"]
        )
        scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
        out[short] = scale * (b.astype(np.float64) @ a.astype(np.float64))
    return out


def dequantize_nbits(model):
    """Replaces every MatMulNBits by MatMul on its dequantized [K, N] weight, named as
    the weight it came from (the `_Q4` suffix dropped): the float model the
    quantized one computes."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    new_nodes = []
    for node in g.node:
        if node.op_type != "MatMulNBits":
            new_nodes.append(node)
            continue
        at = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        k, n, bits, block = at["K"], at["N"], at["bits"], at["block_size"]
        codes = numpy_helper.to_array(inits[node.input[1]])
        scales = numpy_helper.to_array(inits[node.input[2]]).astype(np.float64).reshape(n, -1)
        nblocks = scales.shape[1]
        assert bits == 4, "only 4-bit MatMulNBits is dequantized here"
        lo = codes & 0x0F
        hi = codes >> 4
        q = np.stack([lo, hi], axis=-1).reshape(n, nblocks * block).astype(np.float64)
        if len(node.input) > 3 and node.input[3]:
            zp = numpy_helper.to_array(inits[node.input[3]]).reshape(n, -1)
            zl = np.stack([zp & 0x0F, zp >> 4], axis=-1).reshape(n, -1)[:, :nblocks].astype(np.float64)
        else:
            zl = np.full((n, nblocks), 8.0)
        w = (q.reshape(n, nblocks, block) - zl[:, :, None]) * scales[:, :, None]
        w = w.reshape(n, nblocks * block)[:, :k]
        name = node.input[1]
        for suffix in ("_Q4", "_Q8", "_Q2"):
            name = name.removesuffix(suffix)
        if name in inits:  # a tied lm_head: the embedding table keeps its name
            name += "_dequantized"
        g.initializer.append(numpy_helper.from_array(w.T.astype(np.float32), name))
        mm = onnx.helper.make_node("MatMul", [node.input[0], name], list(node.output[:1]), name=node.name)
        new_nodes.append(mm)
    del g.node[:]
    g.node.extend(new_nodes)
    return model


def weight_slot(model, module):
    """(initializer name, column offset, transposed) of a PEFT module in one of the
    fixture forms: `{m}.weight` ([K,N], or [N,K] behind a Transpose), `{m}.weight_t`,
    or onnxruntime-genai's `attn.qkv_proj.MatMul.weight` / `{m}.MatMul.weight`."""
    names = {t.name for t in model.graph.initializer}
    transposed_inputs = {n.input[0] for n in model.graph.node if n.op_type == "Transpose"}
    transposed_inputs |= {
        n.input[1]
        for n in model.graph.node
        if n.op_type == "Gemm" and any(a.name == "transB" and a.i == 1 for a in n.attribute)
    }
    for cand in (f"{module}.weight", f"{module}.weight_t"):
        if cand in names:
            return cand, 0, cand in transposed_inputs
    stem, proj = module.rsplit(".", 1)
    genai = stem.replace(".self_attn", ".attn")
    if proj in ("q_proj", "k_proj", "v_proj"):
        t = next(t for t in model.graph.initializer if t.name == f"{genai}.qkv_proj.MatMul.weight")
        k = t.dims[0]
        kv = (t.dims[1] - k) // 2
        return t.name, {"q_proj": 0, "k_proj": k, "v_proj": k + kv}[proj], False
    return f"{genai}.{proj}.MatMul.weight", 0, False


def merge_head(m, d):
    """Adds d ([N, K]) to the MatMul producing `logits` through a weight of its own,
    so a tied embedding table keeps its values (PEFT's unmerged lm_head LoRA changes
    the head's output only)."""
    g = m.graph
    producer = {o: n for n in g.node for o in n.output}
    inits = {t.name: t for t in g.initializer}
    head = producer["logits"]
    assert head.op_type == "MatMul", head.op_type
    w_in = head.input[1]
    if w_in in inits:
        w = numpy_helper.to_array(inits[w_in]).astype(np.float64)
    else:
        t = producer[w_in]
        assert t.op_type == "Transpose", t.op_type
        w = numpy_helper.to_array(inits[t.input[0]]).astype(np.float64).T
    name = "lora_check.lm_head.weight"
    g.initializer.append(numpy_helper.from_array((w + d.T).astype(np.float32), name))
    head.input[1] = name


def merged(base, deltas):
    m = onnx.ModelProto()
    m.CopyFrom(base)
    by_name = {t.name: i for i, t in enumerate(m.graph.initializer)}
    for module, d in deltas.items():
        if module == "lm_head":
            merge_head(m, d)
            continue
        name, off, transposed = weight_slot(m, module)
        t = m.graph.initializer[by_name[name]]
        w = numpy_helper.to_array(t).astype(np.float64)
        if transposed:
            w[off : off + d.shape[0], :] += d
        else:
            w[:, off : off + d.shape[0]] += d.T
        m.graph.initializer[by_name[name]].CopyFrom(numpy_helper.from_array(w.astype(np.float32), name))
    return m


def feeds_for(sess, seq=7, seed=0):
    rng = np.random.default_rng(seed)
    f = {}
    for i in sess.get_inputs():
        if i.name == "input_ids":
            f[i.name] = rng.integers(3, 320, size=(1, seq), dtype=np.int64)
        elif i.name == "attention_mask":
            f[i.name] = np.ones((1, seq), dtype=np.int64)
        elif i.name == "position_ids":
            f[i.name] = np.arange(seq, dtype=np.int64)[None, :]
        elif i.name.startswith("past_key_values"):
            f[i.name] = np.zeros((1, i.shape[1], 0, i.shape[3]), dtype=np.float32)
    return f


def session(model_or_path):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    src = model_or_path.SerializeToString() if isinstance(model_or_path, onnx.ModelProto) else model_or_path
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def rel(a, ref):
    a = a.astype(np.float64)
    ref = ref.astype(np.float64)
    return {
        "rel_l2": float(np.linalg.norm(a - ref) / np.linalg.norm(ref)),
        "max_abs_over_max_ref": float(np.abs(a - ref).max() / np.abs(ref).max()),
    }


def main():
    args = sys.argv[1:]
    base_path, injected_path = args[0], args[1]
    adapters, merges = [], {}
    i = 2
    while i < len(args):
        if args[i] == "--adapter":
            adapters.append(args[i + 1].split("=", 2))
        elif args[i] == "--merged":
            name, path = args[i + 1].split("=", 1)
            merges[name] = path
        i += 2
    base = onnx.load(base_path)
    base_float = dequantize_nbits(onnx.load(base_path)) if any(
        n.op_type == "MatMulNBits" for n in base.graph.node
    ) else base
    inj = session(injected_path)
    feeds = feeds_for(session(base_path))
    base_logits = session(base_path).run(["logits"], feeds)[0]
    out = {"no_adapter": rel(inj.run(["logits"], feeds)[0], base_logits), "adapters": {}}
    first = {}
    # Twice round: the second pass shows switching back reproduces the first.
    for round_ in range(2):
        for name, peft_dir, file in adapters:
            ref_model = merged(base_float, peft_deltas(peft_dir))
            ref = session(ref_model).run(["logits"], feeds)[0]
            la = ort.LoraAdapter()
            la.Load(file)
            ro = ort.RunOptions()
            ro.add_active_adapter(la)
            got = inj.run(["logits"], feeds, ro)[0]
            if round_ == 0:
                first[name] = got
                r = rel(got, ref)
                r["vs_base"] = rel(ref, base_logits)
                if name in merges:
                    r["onnxq_merge"] = rel(session(merges[name]).run(["logits"], feeds)[0], ref)
                out["adapters"][name] = r
            else:
                out["adapters"][name]["switch_back_max_abs"] = float(np.abs(got - first[name]).max())
    out["no_adapter_after"] = rel(inj.run(["logits"], feeds)[0], base_logits)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
