#!/usr/bin/env python3
"""Writes the bad-input corpus next to this script (tests/bad_inputs.rs runs it).

    .venv/bin/python tests/bad-inputs/make.py

Each file is the smallest input of one class that once crashed onnxq or could:
malformed quantized ops for the tract lowering (lowering/*.onnx), .npy
headers that lie about their size or type (npy/*.npy), models `onnxq quantize`
must refuse (model/*.onnx: broken protobuf, broken graphs, bad external data,
impossible tensors, unknown opsets and domains), calibration sets that do not
fit their model (calib/*.npz) and weights quantizers must handle without NaN
(handled/*.onnx). The expected error (or note) of each is in EXPECTED.txt.
Deterministic: every run writes the same bytes.
"""
import os
import struct

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))


def save(model, rel):
    path = os.path.join(HERE, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(model.SerializeToString(deterministic=True))


def model(nodes, inputs, outputs, inits, name):
    g = helper.make_graph(nodes, name, inputs, outputs, initializer=inits)
    m = helper.make_model(
        g,
        opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)],
        producer_name="onnxq bad-inputs",
    )
    m.ir_version = 10
    return m


def f32(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def u8(name, shape, fill=0x88):
    return numpy_helper.from_array(np.full(shape, fill, np.uint8), name)


def scales(name, shape):
    return numpy_helper.from_array(np.full(shape, 0.01, np.float32), name)


# GatherBlockQuantized: a [4, 32] table, 4 bits (16 bytes a row), block 32.
def gbq(rel, zero_point=None, **attrs):
    a = {"bits": 4, "block_size": 32, "gather_axis": 0, "quantize_axis": 1}
    a.update(attrs)
    inits = [u8("table", [4, 16]), scales("table_scales", [4, 1])]
    ins = ["table", "ids", "table_scales"]
    if zero_point is not None:
        inits.append(zero_point)
        ins.append(zero_point.name)
    node = helper.make_node("GatherBlockQuantized", ins, ["y"], name="embed", domain="com.microsoft", **a)
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, [2])
    save(model([node], [ids], [f32("y", [2, 32])], inits, "gbq"), rel)


# MatMulNBits: A [1, 32] x B [K=32, N=4], 4 bits, block 32.
def mnb(rel, b_dims=(4, 1, 16), zero_point=None, **attrs):
    a = {"K": 32, "N": 4, "bits": 4, "block_size": 32}
    a.update(attrs)
    inits = [u8("w_q", list(b_dims)), scales("w_scales", [4])]
    ins = ["a", "w_q", "w_scales"]
    if zero_point is not None:
        inits.append(zero_point)
        ins.append(zero_point.name)
    node = helper.make_node("MatMulNBits", ins, ["y"], name="proj", domain="com.microsoft", **a)
    save(model([node], [f32("a", [1, 32])], [f32("y", [1, 4])], inits, "mnb"), rel)


# MatMulBnb4: A [1, 32] x B [K=32, N=4], NF4, block 32: 64 bytes, 4 absmax.
def bnb4(rel, **attrs):
    a = {"K": 32, "N": 4, "block_size": 32, "quant_type": 1}
    a.update(attrs)
    inits = [u8("w_bnb4", [64]), scales("w_absmax", [4])]
    node = helper.make_node("MatMulBnb4", ["a", "w_bnb4", "w_absmax"], ["y"], name="proj", domain="com.microsoft", **a)
    save(model([node], [f32("a", [1, 32])], [f32("y", [1, 4])], inits, "bnb4"), rel)


def uint4(name, dims, raw):
    return helper.make_tensor(name, TensorProto.UINT4, dims, vals=raw, raw=True)


# DequantizeLinear of a uint4 [32, 4] weight -> MatMul.
def dq(rel, scale, zero_point=None, **attrs):
    w = uint4("w", [32, 4], bytes([0x33] * 64))
    inits = [w, scale]
    ins = ["w", scale.name]
    if zero_point is not None:
        inits.append(zero_point)
        ins.append(zero_point.name)
    nodes = [
        helper.make_node("DequantizeLinear", ins, ["w_dq"], name="dq", **attrs),
        helper.make_node("MatMul", ["a", "w_dq"], ["y"], name="mm"),
    ]
    save(model(nodes, [f32("a", [1, 32])], [f32("y", [1, 4])], inits, "dq"), rel)




def lowering():
    gbq("lowering/gbq-bits0.onnx", bits=0)
    gbq("lowering/gbq-bits260.onnx", bits=260)
    gbq("lowering/gbq-block0.onnx", block_size=0)
    gbq("lowering/gbq-empty-zero-point.onnx", zero_point=u8("table_zp", [0]))
    mnb("lowering/mnb-bits0.onnx", bits=0)
    mnb("lowering/mnb-bits260.onnx", bits=260)
    mnb("lowering/mnb-huge-k-n.onnx", K=1 << 40, N=1 << 40)
    mnb("lowering/mnb-empty-zero-point.onnx", zero_point=u8("w_zp", [0]))
    bnb4("lowering/bnb4-huge-k-n.onnx", K=1 << 40, N=1 << 40)
    bnb4("lowering/bnb4-block0.onnx", block_size=0)
    dq("lowering/dq-empty-zero-point.onnx", scales("w_scale", []), uint4("w_zp", [0], b""))
    dq("lowering/dq-negative-block.onnx", scales("w_scale", [1, 4]), axis=0, block_size=-32)


def npy(rel, descr, shape, data=b"", fortran=False):
    header = "{'descr': '%s', 'fortran_order': %s, 'shape': %s, }" % (descr, fortran, shape)
    raw = header.encode("utf-8")
    raw += b" " * ((64 - (10 + len(raw) + 1) % 64) % 64) + b"\n"
    path = os.path.join(HERE, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(raw)) + raw + data)


def npys():
    # A model for them to feed: x float [N] -> Identity.
    node = helper.make_node("Identity", ["x"], ["y"], name="id")
    save(model([node], [f32("x", ["n"])], [f32("y", ["n"])], [], "identity"), "npy/identity.onnx")
    npy("npy/zero-width-unicode-huge.npy", "<U0", "(1099511627776,)")
    npy("npy/zero-width-bytes-huge.npy", "|S0", "(1099511627776,)")
    npy("npy/non-ascii-dtype.npy", "\u00e9f4", "(1,)", b"\0" * 4)
    npy("npy/unicode-width-overflow.npy", "<U4611686018427387904", "(4,)")
    npy("npy/shape-overflow.npy", "<f4", "(4294967296, 4294967296, 4294967296)")
    npy("npy/huge-shape-short-file.npy", "<f4", "(1099511627776,)", b"\0" * 16)


# A MatMul y = x[1, 64] @ w[64, 16]: the model the quantize cases break.
def matmul_model(w=None, opset=21, dims=(64, 16), extra_nodes=(), node_inputs=("x", "w"), w_tensor=None, k=64):
    if w_tensor is None:
        if w is None:
            w = np.random.default_rng(22).standard_normal(dims).astype(np.float32) * 0.1
        w_tensor = numpy_helper.from_array(w, "w")
    nodes = [helper.make_node("MatMul", list(node_inputs), ["y"], name="mm")] + list(extra_nodes)
    g = helper.make_graph(nodes, "mm", [f32("x", [1, k])], [f32("y", [1, 16])], initializer=[w_tensor])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], producer_name="onnxq bad-inputs")
    m.ir_version = 10
    return m


def raw(rel, data):
    path = os.path.join(HERE, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def external(rel, location, offset, length):
    """The MatMul model whose weight lives at `location` (offset, length)."""
    w = onnx.TensorProto()
    w.name = "w"
    w.data_type = TensorProto.FLOAT
    w.dims.extend([64, 16])
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", str(offset)), ("length", str(length))):
        e = w.external_data.add()
        e.key, e.value = k, v
    save(matmul_model(w_tensor=w), rel)


def models():
    good = matmul_model().SerializeToString(deterministic=True)
    raw("model/truncated.onnx", good[: len(good) // 2])
    raw("model/garbage.onnx", np.random.default_rng(7).integers(0, 256, 512, dtype=np.uint8).tobytes())
    # ir_version = 10, then field 7 (graph, a message: wire type 2) as a varint (wire type 0).
    raw("model/wrong-wire-type.onnx", b"\x08\x0a\x38\x01")

    relu = lambda i, o, n: helper.make_node("Relu", [i], [o], name=n)
    save(matmul_model(extra_nodes=[relu("x", "y", "dup")]), "model/duplicate-value-names.onnx")
    # h1 = Relu(h2), h2 = Relu(h1): a cycle feeding nothing but itself.
    save(matmul_model(extra_nodes=[relu("h2", "h1", "a"), relu("h1", "h2", "b")]), "model/cycle.onnx")
    save(matmul_model(node_inputs=("nowhere", "w")), "model/undefined-input.onnx")

    # 64 x 16 floats = 4096 bytes; data.bin holds 2048.
    raw("external/data.bin", bytes(range(256)) * 8)
    external("external/missing.onnx", "no-such-file.bin", 0, 4096)
    external("external/short.onnx", "data.bin", 0, 4096)
    external("external/offset-past-end.onnx", "data.bin", 1 << 40, 4096)
    external("external/length-past-end.onnx", "data.bin", 1024, 1 << 40)
    external("external/absolute.onnx", "/etc/hostname", 0, 4096)
    external("external/escapes.onnx", "../../bad_inputs.rs", 0, 4096)
    link = os.path.join(HERE, "external/link-out.bin")
    if os.path.lexists(link):
        os.remove(link)
    os.symlink("../../bad_inputs.rs", link)
    external("external/symlink-out.onnx", "link-out.bin", 0, 4096)

    huge = onnx.TensorProto()
    huge.name, huge.data_type = "w", TensorProto.FLOAT
    huge.dims.extend([1 << 40, 1 << 40])
    huge.raw_data = b"\0" * 16
    save(matmul_model(w_tensor=huge), "model/huge-dims.onnx")
    neg = onnx.TensorProto()
    neg.name, neg.data_type = "w", TensorProto.FLOAT
    neg.dims.extend([-64, 16])
    neg.raw_data = b"\0" * 4096
    save(matmul_model(w_tensor=neg), "model/negative-dims.onnx")
    save(matmul_model(w=np.zeros((0, 16), np.float32), k=0), "handled/zero-size-weight.onnx")
    s = helper.make_tensor("w", TensorProto.STRING, [64, 16], [b"w"] * 1024)
    save(matmul_model(w_tensor=s), "handled/string-weight.onnx")

    save(matmul_model(opset=99), "model/future-opset.onnx")
    unk = helper.make_node("Frobnicate", ["y"], ["z"], name="frob", domain="com.example.unknown")
    m = matmul_model()
    m.graph.node.append(unk)
    m.graph.output[0].name = "z"
    m.opset_import.append(helper.make_opsetid("com.example.unknown", 1))
    save(m, "handled/unknown-domain.onnx")


def handled():
    w = np.random.default_rng(22).standard_normal((64, 16)).astype(np.float32) * 0.1
    nan = w.copy()
    nan[5, 3] = np.nan
    save(matmul_model(w=nan), "model/nan-weight.onnx")
    inf = w.copy()
    inf[40, 0] = np.inf
    save(matmul_model(w=inf), "model/inf-weight.onnx")
    zero = w.copy()
    zero[0:32, 2] = 0.0  # one whole block (K 0..32 of column 2)
    save(matmul_model(w=zero), "handled/zero-block.onnx")


def npz(rel, **arrays):
    """An .npz with fixed timestamps (np.savez stamps the current time)."""
    import io
    import zipfile
    path = os.path.join(HERE, rel)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, a in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, a)
            z.writestr(zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0)), buf.getvalue())


def calib():
    save(matmul_model(), "calib/model.onnx")
    rng = np.random.default_rng(3)
    npz("calib/wrong-shape.npz", x=rng.standard_normal((1, 48)).astype(np.float32))
    npz("calib/wrong-dtype.npz", x=rng.integers(0, 9, (1, 64)).astype(np.int64))
    npz("calib/wrong-name.npz", input=rng.standard_normal((1, 64)).astype(np.float32))


if __name__ == "__main__":
    lowering()
    npys()
    models()
    handled()
    calib()
