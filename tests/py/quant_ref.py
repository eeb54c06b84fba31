"""Reference outputs of onnxruntime's own weight quantizers, for tests/quant_kernels.rs.

usage: quant_ref.py --probe            exit 0 if onnxruntime's quantizer kernels import
       quant_ref.py JOBS.json          run every job in the file

Each job is an object:
  {"kind": "nbits" | "qdq" | "bnb4", "weight": "w.npy" ([K, N] float32/float16),
   "out": "prefix", "bits": 4, "block_size": 32, "symmetric": true, "quant_type": 1}
and writes prefix_packed.npy, prefix_scales.npy (nbits, qdq), prefix_zp.npy
(asymmetric nbits/qdq) or prefix_absmax.npy (bnb4), exactly as onnxruntime's
MatMulNBitsQuantizer / MatMulBnb4Quantizer compute them before building the graph.
  {"kind": "int8", "weight": "w.npy" (float32), "out": "prefix", "qtype": "int8" |
   "uint8" | "int16" | "uint16", "symmetric": true, "reduce_range": false, "axis": null | 0 | 1}
writes prefix_codes.npy (int64, the weight's shape), prefix_scales.npy (float32) and
prefix_zp.npy (int64), one per tensor or per channel, as quantize_dynamic /
quantize_static quantize a weight (quant_utils.quantize_data, per channel on
weights.take(i, axis) like BaseQuantizer.quantize_weight_per_channel_impl).
"""

import json
import sys
from types import SimpleNamespace

import numpy as np


def probe():
    from onnxruntime.capi import _pybind_state as ps  # noqa: F401, PLC0415
    from onnxruntime.quantization import matmul_bnb4_quantizer, matmul_nbits_quantizer  # noqa: F401, PLC0415

    print("onnxruntime", __import__("onnxruntime").__version__)


def run(job):
    from onnxruntime.quantization.matmul_bnb4_quantizer import MatMulBnb4Quantizer  # noqa: PLC0415
    from onnxruntime.quantization.matmul_nbits_quantizer import (  # noqa: PLC0415
        DefaultWeightOnlyQuantConfig,
        DefaultWeightOnlyQuantizer,
    )
    from onnxruntime.quantization.quant_utils import QuantFormat  # noqa: PLC0415

    w = np.load(job["weight"])
    out = job["out"]
    kind = job["kind"]
    if kind in ("nbits", "qdq"):
        config = DefaultWeightOnlyQuantConfig(
            block_size=job["block_size"],
            is_symmetric=job["symmetric"],
            bits=job["bits"],
            quant_format=QuantFormat.QDQ if kind == "qdq" else QuantFormat.QOperator,
        )
        packed, scales, zp = DefaultWeightOnlyQuantizer(config).qbits_block_quant(w)
        np.save(out + "_packed.npy", np.ascontiguousarray(packed).reshape(-1))
        np.save(out + "_scales.npy", np.ascontiguousarray(scales).reshape(-1))
        if not job["symmetric"]:
            np.save(out + "_zp.npy", np.ascontiguousarray(zp).reshape(-1))
    elif kind == "bnb4":
        # bnb4_block_quant only reads these two attributes of the quantizer.
        quantizer = SimpleNamespace(block_size=job["block_size"], quant_type=job["quant_type"])
        packed, absmax = MatMulBnb4Quantizer.bnb4_block_quant(quantizer, w)
        np.save(out + "_packed.npy", packed.reshape(-1))
        np.save(out + "_absmax.npy", absmax.reshape(-1))
    elif kind == "int8":
        from onnx import TensorProto  # noqa: PLC0415
        from onnxruntime.quantization.quant_utils import quantize_data  # noqa: PLC0415

        qtype = getattr(TensorProto, job["qtype"].upper())
        sym, rr, axis = job["symmetric"], job["reduce_range"], job["axis"]
        slices = [w] if axis is None else [w.take(i, axis) for i in range(w.shape[axis])]
        zps, scales, codes = [], [], []
        for x in slices:
            zp, scale, q = quantize_data(x.flatten(), qtype, sym, reduce_range=rr)
            zps.append(int(zp))
            scales.append(np.float32(scale))
            codes.append(np.asarray(q, np.int64).reshape(x.shape))
        codes = codes[0] if axis is None else np.stack(codes, axis=axis)
        np.save(out + "_codes.npy", np.ascontiguousarray(codes, np.int64).reshape(-1))
        np.save(out + "_scales.npy", np.asarray(scales, np.float32))
        np.save(out + "_zp.npy", np.asarray(zps, np.int64))
    else:
        raise ValueError(f"unknown job kind {kind!r}")


def main():
    if sys.argv[1:] == ["--probe"]:
        probe()
        return
    with open(sys.argv[1]) as f:
        jobs = json.load(f)
    for job in jobs:
        run(job)


if __name__ == "__main__":
    main()
