#!/usr/bin/env python3
"""Writes the bad-input corpus next to this script (tests/bad_inputs.rs runs it).

    .venv/bin/python tests/bad-inputs/make.py

Each file is the smallest input of one class that once crashed onnxq or could:
malformed quantized ops for the tract lowering (lowering/*.onnx) and .npy
headers that lie about their size or type (npy/*.npy). The expected error of
each is in EXPECTED.txt. Deterministic: every run writes the same bytes.
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


if __name__ == "__main__":
    lowering()
    npys()
