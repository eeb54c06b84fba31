"""Shared helpers for the Python side of the onnxq tests (checker, comparison, inputs).

Only the pinned onnx / onnxruntime / numpy from .ci/requirements.txt are used.
"""
from __future__ import annotations

import os
import re

import numpy as np
import onnx
from onnx import TensorProto, defs, external_data_helper, helper

# ---------------------------------------------------------------------------------
# Checker
# ---------------------------------------------------------------------------------

_REGISTERED = False


def register_ort_only_schemas() -> None:
    """Teaches the onnx checker the ops ONNX Runtime implements in the *ONNX* domain
    without an ONNX schema. onnxruntime-genai emits SimplifiedLayerNormalization
    (domain "", version 1) for the first RMSNorm of every decoder; without a schema
    `onnx.checker` rejects every genai model. (com.microsoft ops need nothing: the
    checker skips domains it does not know.)"""
    global _REGISTERED
    if _REGISTERED:
        return
    _REGISTERED = True
    if defs.has("SimplifiedLayerNormalization", ""):
        return
    P = defs.OpSchema.FormalParameter
    A = defs.OpSchema.Attribute
    opt = defs.OpSchema.FormalParameterOption.Optional
    schema = defs.OpSchema(
        "SimplifiedLayerNormalization",
        "",
        1,
        "RMS normalization over the trailing axes (onnxruntime's kernel; no ONNX schema).",
        inputs=[P("X", "T"), P("scale", "V")],
        outputs=[P("Y", "V"), P("inv_std_var", "U", param_option=opt)],
        type_constraints=[
            ("T", ["tensor(float)", "tensor(double)", "tensor(float16)", "tensor(bfloat16)"], ""),
            ("U", ["tensor(float)", "tensor(double)"], ""),
            ("V", ["tensor(float)", "tensor(double)", "tensor(float16)", "tensor(bfloat16)"], ""),
        ],
        attributes=[
            A("axis", helper.make_attribute("axis", -1), ""),
            A("epsilon", helper.make_attribute("epsilon", 1e-5), ""),
            A("stash_type", helper.make_attribute("stash_type", 1), ""),
        ],
    )
    defs.register_schema(schema)


def check(path: str, full: bool = True) -> None:
    """Raises onnx.checker.ValidationError (or an inference error) when invalid.
    Passing the path lets the checker read external data and >2 GB models."""
    register_ort_only_schemas()
    onnx.checker.check_model(path, full_check=full)


# ---------------------------------------------------------------------------------
# Message comparison
# ---------------------------------------------------------------------------------

def normalized(path: str) -> onnx.ModelProto:
    """The model with all external data moved inline and the location fields
    cleared, so two layouts of the same content compare equal."""
    m = onnx.load(path, load_external_data=True)
    for t in external_data_helper._get_all_tensors(m):
        del t.external_data[:]
        t.ClearField("data_location")
    return m


def normalized_digest(path: str) -> onnx.ModelProto:
    """Like normalized(), but each raw or external tensor payload is replaced by its
    SHA-256 (as raw_data = b"sha256:" + digest), read in chunks. Two models compare
    equal exactly when normalized() would, without holding any weights in memory:
    usable on multi-GB models."""
    import hashlib
    import mmap

    base = os.path.dirname(os.path.abspath(path))
    m = onnx.load(path, load_external_data=False)
    for t in external_data_helper._get_all_tensors(m):
        h = hashlib.sha256()
        if t.data_location == TensorProto.EXTERNAL:
            info = {e.key: e.value for e in t.external_data}
            loc = os.path.join(base, info["location"])
            off = int(info.get("offset", 0))
            with open(loc, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                length = int(info["length"]) if "length" in info else size - off
                if off + length > size:
                    raise ValueError(f"tensor {t.name}: {loc} has {size} bytes, needs {off + length}")
                if length:
                    with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                        step = 1 << 26
                        for i in range(off, off + length, step):
                            h.update(mm[i:min(i + step, off + length)])
            del t.external_data[:]
            t.raw_data = b"sha256:" + h.digest()
        elif t.HasField("raw_data"):
            h.update(t.raw_data)
            t.raw_data = b"sha256:" + h.digest()
        t.ClearField("data_location")
    return m


def first_difference(a, b, path="model"):
    """Dotted path of the first field where two messages differ, or None."""
    if type(a) is not type(b):
        return path
    if not hasattr(a, "ListFields"):
        if a == b:
            return None
        if isinstance(a, bytes) and a.startswith(b"sha256:") and b.startswith(b"sha256:"):
            return f"{path} (tensor payloads differ)"
        return f"{path} ({_short(a)} vs {_short(b)})"
    fa = {f.name: v for f, v in a.ListFields()}
    fb = {f.name: v for f, v in b.ListFields()}
    for k in sorted(set(fa) | set(fb)):
        if k not in fa or k not in fb:
            return f"{path}.{k} (present in only one)"
        va, vb = fa[k], fb[k]
        if hasattr(va, "__len__") and not isinstance(va, (str, bytes)) and not hasattr(va, "ListFields"):
            if len(va) != len(vb):
                return f"{path}.{k} (length {len(va)} vs {len(vb)})"
            for i, (x, y) in enumerate(zip(va, vb)):
                label = f"{path}.{k}[{i}]"
                if getattr(x, "name", ""):
                    label += f"<{x.name}>"
                d = first_difference(x, y, label)
                if d:
                    return d
        else:
            d = first_difference(va, vb, f"{path}.{k}")
            if d:
                return d
    return None


def _short(v):
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


# ---------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------

def _dims_of(vi: onnx.ValueInfoProto):
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    return list(t.shape.dim)


def resolve_dims(model: onnx.ModelProto, overrides: dict[str, int] | None = None) -> dict[str, int]:
    """Values for the symbolic dims of the graph inputs: --dim overrides, else 1 for
    batch-like names and 4 for the rest. A dim named total_* or written as a sum
    ("past_sequence_length + 1") is derived from its parts, so KV-cache models get
    attention_mask width = past + new tokens."""
    overrides = dict(overrides or {})
    params = []
    for vi in model.graph.input:
        for d in _dims_of(vi) or []:
            if d.HasField("dim_param") and d.dim_param not in params:
                params.append(d.dim_param)
    out = dict(overrides)

    def default(p):
        lp = p.lower()
        if "batch" in lp:
            return 1
        return 4

    for p in params:
        if p in out or "+" in p or p.lower().startswith("total"):
            continue
        out[p] = default(p)
    for p in params:
        if p in out:
            continue
        if "+" in p:
            total = 0
            for term in p.split("+"):
                term = term.strip()
                total += int(term) if term.isdigit() else out.get(term, default(term))
            out[p] = total
        else:  # total_*: past + new tokens
            past = next((out[q] for q in out if "past" in q.lower()), 0)
            out[p] = past + out.get("sequence_length", default("sequence_length"))
    return out


def _gather_index_bounds(model: onnx.ModelProto) -> dict[str, int]:
    """graph input -> exclusive upper bound, for integer inputs used as Gather indices
    into a constant table (input_ids into the embedding)."""
    g = model.graph
    shapes = {t.name: list(t.dims) for t in g.initializer}
    for n in g.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    shapes[n.output[0]] = list(a.t.dims)
    bounds = {}
    for n in g.node:
        if n.op_type in ("Gather", "GatherBlockQuantized") and len(n.input) > 1 and n.input[0] in shapes:
            axis = next((a.i for a in n.attribute if a.name in ("axis", "gather_axis")), 0)
            dims = shapes[n.input[0]]
            if dims:
                bounds.setdefault(n.input[1], dims[axis])
    return bounds


_NP = {
    TensorProto.FLOAT: np.float32,
    TensorProto.DOUBLE: np.float64,
    TensorProto.FLOAT16: np.float16,
    TensorProto.INT64: np.int64,
    TensorProto.INT32: np.int32,
    TensorProto.INT16: np.int16,
    TensorProto.INT8: np.int8,
    TensorProto.UINT8: np.uint8,
    TensorProto.UINT16: np.uint16,
    TensorProto.UINT32: np.uint32,
    TensorProto.UINT64: np.uint64,
    TensorProto.BOOL: np.bool_,
}


def make_feeds(model: onnx.ModelProto, dims: dict[str, int] | None = None, seed: int = 0,
               vocab: int | None = None) -> dict[str, np.ndarray]:
    """Seeded random inputs for every graph input that is not an initializer.

    attention_mask -> ones; position_ids -> past + arange(seq); integer Gather indices
    (input_ids) -> [0, table rows) or [0, vocab); other integers -> [0, 4); floats ->
    standard normal; bools -> random; strings -> short words.
    """
    dims = resolve_dims(model, dims)
    inits = {t.name for t in model.graph.initializer} | {t.values.name for t in model.graph.sparse_initializer}
    bounds = _gather_index_bounds(model)
    rng = np.random.default_rng(seed)
    past = next((v for k, v in dims.items() if "past" in k.lower()), 0)
    feeds = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type"):
            raise ValueError(f"input {vi.name}: only tensor inputs are supported")
        shape = []
        for d in _dims_of(vi) or []:
            if d.HasField("dim_value"):
                shape.append(d.dim_value)
            elif d.HasField("dim_param"):
                shape.append(dims[d.dim_param])
            else:
                shape.append(1)
        et = tt.elem_type
        lname = vi.name.lower()
        if et == TensorProto.STRING:
            words = np.array(["alpha", "beta", "gamma", "delta"], dtype=object)
            feeds[vi.name] = words[rng.integers(0, len(words), shape)] if shape else np.array("alpha", dtype=object)
            continue
        if et not in _NP:
            raise ValueError(f"input {vi.name}: element type {TensorProto.DataType.Name(et)} not supported")
        npt = _NP[et]
        if et == TensorProto.BOOL:
            arr = rng.integers(0, 2, shape).astype(np.bool_)
        elif np.issubdtype(npt, np.integer):
            if "attention_mask" in lname:
                arr = np.ones(shape, npt)
            elif "position_ids" in lname and len(shape) == 2:
                arr = np.broadcast_to(np.arange(past, past + shape[1]), shape).astype(npt)
            else:
                hi = bounds.get(vi.name) or (vocab if "input_ids" in lname and vocab else None) or 4
                arr = rng.integers(0, hi, shape).astype(npt)
        else:
            arr = rng.standard_normal(shape).astype(npt)
        feeds[vi.name] = np.ascontiguousarray(arr)
    return feeds


# ---------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------

def session(path: str, threads: int = 1):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def run(path: str, feeds: dict, threads: int = 1):
    s = session(path, threads)
    names = [o.name for o in s.get_outputs()]
    return names, s.run(None, feeds)


def identical(x, y) -> bool:
    """Bitwise equality of two ORT outputs (NaNs with different payloads count as equal)."""
    if isinstance(x, (list, tuple)) or isinstance(y, (list, tuple)):
        return type(x) is type(y) and len(x) == len(y) and all(identical(a, b) for a, b in zip(x, y))
    if isinstance(x, dict) or isinstance(y, dict):
        return type(x) is type(y) and x.keys() == y.keys() and all(identical(x[k], y[k]) for k in x)
    if x is None or y is None:
        return x is y
    x, y = np.asarray(x), np.asarray(y)
    if x.shape != y.shape or x.dtype != y.dtype:
        return False
    if x.dtype == object:
        return bool((x == y).all())
    return x.tobytes() == y.tobytes() or (x.dtype.kind in "fc" and np.array_equal(x, y, equal_nan=True))


def parse_dims(items) -> dict[str, int]:
    out = {}
    for it in items or []:
        m = re.fullmatch(r"\s*([^=]+?)\s*=\s*(\d+)\s*", it)
        if not m:
            raise ValueError(f"--dim wants name=value, got {it!r}")
        out[m.group(1)] = int(m.group(2))
    return out
