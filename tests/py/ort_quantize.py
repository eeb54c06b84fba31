#!/usr/bin/env python3
"""onnxruntime's own quantizers behind one CLI: the baselines onnxq is measured against.

  ort_quantize.py nbits   IN OUT [--algo default|hqq|rtn|k_quant|gptq] [--bits 4]
                          [--block-size 128] [--symmetric] [--accuracy-level N]
                          [--quant-format QOperator|QDQ] [--op-types MatMul [Gather]]
                          [--quant-axes MatMul:0 Gather:1] [--channel-wise]
  ort_quantize.py bnb4    IN OUT [--quant-type nf4|fp4] [--block-size 64]
  ort_quantize.py dynamic IN OUT [--weight-type QInt8|QUInt8] [--per-channel] [--reduce-range]
  ort_quantize.py static  IN OUT [--quant-format QDQ|QOperator] [--activation-type QUInt8]
                          [--weight-type QInt8] [--calibrate-method MinMax|Entropy|Percentile|Distribution]
                          [--per-channel] [--reduce-range]

Common: --exclude NODE..., --include NODE... (nbits/dynamic/static), --external-data
(save weights to OUT.data), --extra KEY=VALUE (static/dynamic extra_options; VALUE
parsed as JSON when it can be).
Calibration (static, nbits --algo gptq): --calib-dir DIR (every *.npz in name order is
one sample, keys = input names) or --calib-file F.npz (one sample), else
--calib-samples N seeded random samples (--seed, --dim NAME=VALUE as in
compare_models.py).

hqq and gptq import torch, which the pinned venv does not have: they fail here.

Defaults are those of the onnxruntime 1.32 Python API (not of its command-line
scripts): nbits = DefaultWeightOnlyQuantConfig (round-to-nearest in C++), 4 bits,
block 128, asymmetric, QOperator (MatMulNBits); bnb4 = NF4, block 64.
"""
from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np  # noqa: E402
import onnx  # noqa: E402

import onnxq_testlib as T  # noqa: E402


class SampleReader:
    """CalibrationDataReader over a fixed list of feed dicts (rewindable, iterable)."""

    def __init__(self, samples):
        self.samples = list(samples)
        self.i = 0

    def get_next(self):
        if self.i >= len(self.samples):
            return None
        self.i += 1
        return self.samples[self.i - 1]

    def rewind(self):
        self.i = 0

    def __iter__(self):
        return self

    def __next__(self):
        r = self.get_next()
        if r is None:
            raise StopIteration
        return r

    def __len__(self):
        return len(self.samples)


def load_samples(args, model_path):
    if args.calib_dir:
        files = sorted(glob.glob(os.path.join(args.calib_dir, "*.npz")))
        if not files:
            raise SystemExit(f"{args.calib_dir}: no .npz files")
        return [dict(np.load(f)) for f in files]
    if args.calib_file:
        return [dict(np.load(args.calib_file))]
    m = onnx.load(model_path, load_external_data=False)
    dims = T.parse_dims(args.dim)
    return [T.make_feeds(m, dims, args.seed + i) for i in range(args.calib_samples)]


def parse_extra(items):
    out = {}
    for it in items or []:
        k, _, v = it.partition("=")
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def ensure_ms_opset(model: onnx.ModelProto) -> None:
    """The INC-based rtn/k_quant paths emit com.microsoft nodes without importing the
    domain; onnxruntime tolerates that, the onnx checker does not. Import it."""
    def uses_ms(g):
        for n in g.node:
            if n.domain == "com.microsoft":
                return True
            if any(uses_ms(a.g) for a in n.attribute if a.type == onnx.AttributeProto.GRAPH):
                return True
        return False

    if uses_ms(model.graph) and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))


def cmd_nbits(args):
    from onnxruntime.quantization import matmul_nbits_quantizer as mnq
    from onnxruntime.quantization.quant_utils import QuantFormat

    fmt = QuantFormat[args.quant_format]
    op_types = tuple(args.op_types)
    axes = tuple((k, int(v)) for k, v in (a.split(":") for a in args.quant_axes)) if args.quant_axes else None
    if args.algo == "default":
        cfg = mnq.DefaultWeightOnlyQuantConfig(
            block_size=args.block_size, is_symmetric=args.symmetric, accuracy_level=args.accuracy_level,
            quant_format=fmt, op_types_to_quantize=op_types, quant_axes=axes, bits=args.bits,
            channel_wised_quantize=args.channel_wise)
    elif args.algo == "hqq":
        cfg = mnq.HQQWeightOnlyQuantConfig(block_size=args.block_size, bits=args.bits, quant_format=fmt,
                                           op_types_to_quantize=op_types, quant_axes=axes)
    elif args.algo == "rtn":
        cfg = mnq.RTNWeightOnlyQuantConfig(quant_format=fmt, op_types_to_quantize=op_types)
    elif args.algo == "k_quant":
        cfg = mnq.KQuantWeightOnlyQuantConfig(quant_format=fmt, op_types_to_quantize=op_types)
    else:  # gptq
        cfg = mnq.GPTQWeightOnlyQuantConfig(
            calibration_data_reader=SampleReader(load_samples(args, args.input)), block_size=args.block_size,
            quant_format=fmt, op_types_to_quantize=op_types)
    q = mnq.MatMulNBitsQuantizer(
        # the INC-based algorithms (rtn, k_quant, gptq) want the path; the others a ModelProto
        args.input if args.algo in ("rtn", "k_quant", "gptq") else onnx.load(args.input),
        bits=args.bits, block_size=args.block_size, is_symmetric=args.symmetric,
        accuracy_level=args.accuracy_level, nodes_to_exclude=args.exclude, nodes_to_include=args.include or None,
        quant_format=fmt, op_types_to_quantize=op_types, quant_axes=axes, algo_config=cfg)
    q.process()
    ensure_ms_opset(q.model.model)
    q.model.save_model_to_file(args.output, args.external_data)


def cmd_bnb4(args):
    from onnxruntime.quantization.matmul_bnb4_quantizer import MatMulBnb4Quantizer

    qt = {"fp4": MatMulBnb4Quantizer.FP4, "nf4": MatMulBnb4Quantizer.NF4}[args.quant_type]
    q = MatMulBnb4Quantizer(onnx.load(args.input), qt, args.block_size, nodes_to_exclude=args.exclude)
    q.process()
    q.model.save_model_to_file(args.output, args.external_data)


def cmd_dynamic(args):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        args.input, args.output, op_types_to_quantize=args.op_types or None, per_channel=args.per_channel,
        reduce_range=args.reduce_range, weight_type=QuantType[args.weight_type],
        nodes_to_quantize=args.include or None, nodes_to_exclude=args.exclude or None,
        use_external_data_format=args.external_data, extra_options=parse_extra(args.extra))


def cmd_static(args):
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    quantize_static(
        args.input, args.output, SampleReader(load_samples(args, args.input)),
        quant_format=QuantFormat[args.quant_format], op_types_to_quantize=args.op_types or None,
        per_channel=args.per_channel, reduce_range=args.reduce_range,
        activation_type=QuantType[args.activation_type], weight_type=QuantType[args.weight_type],
        nodes_to_quantize=args.include or None, nodes_to_exclude=args.exclude or None,
        use_external_data_format=args.external_data,
        calibrate_method=CalibrationMethod[args.calibrate_method], extra_options=parse_extra(args.extra))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    def common(p, calib=False, include=True):
        p.add_argument("input")
        p.add_argument("output")
        p.add_argument("--exclude", nargs="+", default=[], metavar="NODE", help="node names left unquantized")
        if include:
            p.add_argument("--include", nargs="+", default=[], metavar="NODE", help="only these node names")
        p.add_argument("--external-data", action="store_true", help="save weights to OUTPUT.data")
        p.add_argument("-v", "--verbose", action="store_true")
        if calib:
            p.add_argument("--calib-dir", help="directory of .npz samples")
            p.add_argument("--calib-file", help="one .npz sample")
            p.add_argument("--calib-samples", type=int, default=8, help="random samples when no data (default 8)")
            p.add_argument("--seed", type=int, default=0)
            p.add_argument("--dim", action="append", default=[], metavar="NAME=VALUE")

    p = sub.add_parser("nbits", help="MatMulNBitsQuantizer (MatMulNBits / GatherBlockQuantized / DQ+MatMul)")
    common(p, calib=True)
    p.add_argument("--algo", choices=["default", "hqq", "rtn", "k_quant", "gptq"], default="default")
    p.add_argument("--bits", type=int, default=4, choices=[2, 4, 8])
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--symmetric", action="store_true", help="symmetric (no zero points); default asymmetric")
    p.add_argument("--accuracy-level", type=int, choices=[0, 1, 2, 3, 4])
    p.add_argument("--quant-format", choices=["QOperator", "QDQ"], default="QOperator")
    p.add_argument("--op-types", nargs="+", default=["MatMul"], choices=["MatMul", "Gather"])
    p.add_argument("--quant-axes", nargs="+", metavar="OP:AXIS", help="e.g. MatMul:0 Gather:1")
    p.add_argument("--channel-wise", action="store_true", help="per-channel (QDQ only)")
    p.set_defaults(fn=cmd_nbits)

    p = sub.add_parser("bnb4", help="MatMulBnb4Quantizer (MatMulBnb4, FP4/NF4)")
    common(p, include=False)
    p.add_argument("--quant-type", choices=["nf4", "fp4"], default="nf4")
    p.add_argument("--block-size", type=int, default=64)
    p.set_defaults(fn=cmd_bnb4)

    p = sub.add_parser("dynamic", help="quantize_dynamic")
    common(p)
    p.add_argument("--weight-type", default="QInt8", choices=["QInt8", "QUInt8"])
    p.add_argument("--per-channel", action="store_true")
    p.add_argument("--reduce-range", action="store_true")
    p.add_argument("--op-types", nargs="+")
    p.add_argument("--extra", action="append", metavar="KEY=VALUE")
    p.set_defaults(fn=cmd_dynamic)

    p = sub.add_parser("static", help="quantize_static with a calibration reader")
    common(p, calib=True)
    p.add_argument("--quant-format", choices=["QDQ", "QOperator"], default="QDQ")
    p.add_argument("--activation-type", default="QInt8",
                   choices=["QInt8", "QUInt8", "QInt16", "QUInt16", "QInt4", "QUInt4", "QFLOAT8E4M3FN"])
    p.add_argument("--weight-type", default="QInt8",
                   choices=["QInt8", "QUInt8", "QInt16", "QUInt16", "QInt4", "QUInt4", "QFLOAT8E4M3FN"])
    p.add_argument("--calibrate-method", default="MinMax", choices=["MinMax", "Entropy", "Percentile", "Distribution"])
    p.add_argument("--per-channel", action="store_true")
    p.add_argument("--reduce-range", action="store_true")
    p.add_argument("--op-types", nargs="+")
    p.add_argument("--extra", action="append", metavar="KEY=VALUE")
    p.set_defaults(fn=cmd_static)

    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    if os.path.abspath(args.input) == os.path.abspath(args.output):
        print("output must differ from input")
        return 1
    try:
        args.fn(args)
    except Exception as e:  # noqa: BLE001 - report, exit 1
        print(f"FAIL: {args.cmd} {args.input}: {type(e).__name__}: {e}")
        return 1
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
