#!/usr/bin/env python3
"""onnxq's 8-bit quantization measured against onnxruntime's own tools.

  calib-data MODEL DIR N [--seed S] [--dim NAME=V]
        write N seeded random input sets DIR/sample_XXX.npz (keys = input names)
  dynamic ORIG OURS [--weight-type QInt8|QUInt8] [--per-channel] [--reduce-range]
        [--op-types T...] [--exclude NODE...] [--extra KEY=VALUE] [--min-compared N]
        quantize ORIG with quantize_dynamic (same settings), then compare
  static ORIG OURS CALIB_DIR [--activation-type QInt8|QUInt8|QInt16] [--weight-type QInt8|QUInt8]
        [--per-channel] [--reduce-range] [--op-types T...] [--exclude NODE...]
        [--calibrate-method MinMax|Entropy|Percentile|Distribution] [--quant-format QDQ|QOperator]
        [--extra KEY=VALUE] [--min-compared N] [--also-default-ops]
        quantize ORIG with quantize_static on the same samples, then compare
  ranges MODEL CALIB_DIR METHOD [--num-bins N] [--num-quantized-bins N] [--percentile P]
        [--symmetric 0|1]: onnxruntime's calibrator ranges as JSON {tensor: [lo, hi]}

Comparing means: OURS passes the onnx checker and runs in onnxruntime; every
initializer named like onnxruntime names quantization parameters (`X_scale`,
`X_zero_point`, `X_quantized`) present in both models is identical (weight scales bit
for bit, zero points and codes exactly, same dtypes; calibrated activation scales
within 1e-6 relative) — and
at least --min-compared scales were compared; the relative L2 error of OURS vs ORIG
(onnxruntime CPU, seeded inputs) is no worse than onnxruntime's output's by more
than 1%. Prints one `rel L2 vs fp32:` line with both numbers. Exit 1 on failure.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np  # noqa: E402
import onnx  # noqa: E402
from onnx import numpy_helper  # noqa: E402

import onnxq_testlib as T  # noqa: E402


def session(path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def rel_l2(orig, cand, seeds=(0, 1, 2)):
    a, b = session(orig), session(cand)
    m = onnx.load(orig, load_external_data=False)
    num = den = 0.0
    for s in seeds:
        f = T.make_feeds(m, seed=s)
        for x, y in zip(a.run(None, f), b.run(None, f)):
            x, y = np.asarray(x, np.float64), np.asarray(y)
            if x.dtype.kind != "f":
                continue
            num += float(np.sum((x - y) ** 2))
            den += float(np.sum(x**2))
    return (num / den) ** 0.5


def inits(path):
    m = onnx.load(path)
    out = {}

    def walk(g):
        for t in g.initializer:
            out[t.name] = numpy_helper.to_array(t)
        for n in g.node:
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    walk(a.g)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    for sg in a.graphs:
                        walk(sg)

    walk(m.graph)
    return out


def constant_node_outputs(path):
    m = onnx.load(path, load_external_data=False)
    return {o for n in m.graph.node if n.op_type == "Constant" for o in n.output}


def compare_params(ours, ref, min_compared, orig):
    """Constant-node weights are skipped: onnxruntime quantizes them as activations
    (calibrated range), onnxq as weights."""
    a, b = inits(ours), inits(ref)
    consts = constant_node_outputs(orig)
    scales = wscales = zps = codes = 0
    ok = True
    for name in sorted(set(a) & set(b)):
        if any(name == c + s for c in consts for s in ("_scale", "_zero_point", "_quantized")):
            continue
        x, y = a[name], b[name]
        if x.size == 1 and y.size == 1:
            x, y = x.reshape(()), y.reshape(())
        if name.endswith("_scale"):
            # Weights are quantized from the same numbers: bit-identical. Activation
            # ranges come from two calibration sessions whose float sums may differ
            # in the last bit: within 1e-6 relative.
            weight = name[: -len("_scale")] + "_quantized" in a
            wscales += weight
            same = np.array_equal(x, y) if weight else np.allclose(x, y, rtol=1e-6, atol=0)
            if x.shape != y.shape or x.dtype != y.dtype or not same:
                d = np.abs(x.astype(np.float64) - y).max() if x.shape == y.shape else "shape"
                print(f"FAIL {name}: scales differ ({x.shape} vs {y.shape}, max diff {d}): {x.ravel()[:4]} vs {y.ravel()[:4]}")
                ok = False
            scales += 1
        elif name.endswith("_zero_point"):
            if x.shape != y.shape or x.dtype != y.dtype or not np.array_equal(x, y):
                print(f"FAIL {name}: zero points differ: {x.ravel()[:4]} {x.dtype} vs {y.ravel()[:4]} {y.dtype}")
                ok = False
            zps += 1
        elif name.endswith("_quantized"):
            if x.shape != y.shape or x.dtype != y.dtype:
                print(f"FAIL {name}: {x.shape} {x.dtype} vs {y.shape} {y.dtype}")
                ok = False
                continue
            d = np.abs(x.astype(np.int64) - y.astype(np.int64))
            if d.size and d.max() > 0:
                print(f"FAIL {name}: {int((d > 0).sum())} of {d.size} codes differ (by up to {d.max()} steps)")
                ok = False
            codes += 1
    print(f"compared {scales} scales ({wscales} of weights), {zps} zero points, {codes} quantized tensors")
    if scales < min_compared:
        print(f"FAIL: only {scales} scales in common (want >= {min_compared})")
        ok = False
    return ok


def error_check(orig, ours, ref, label="onnxruntime"):
    e_ours, e_ref = rel_l2(orig, ours), rel_l2(orig, ref)
    print(f"rel L2 vs fp32: onnxq {e_ours:.6e}  {label} {e_ref:.6e}")
    if e_ours > e_ref * 1.01 + 1e-7:
        print(f"FAIL: onnxq's error is worse than {label}'s by more than 1%")
        return False
    return True


def check_and_run(path, orig):
    T.check(path)
    session(path).run(None, T.make_feeds(onnx.load(orig, load_external_data=False)))


class Reader:
    def __init__(self, samples):
        self.samples, self.i = samples, 0

    def get_next(self):
        if self.i >= len(self.samples):
            return None
        self.i += 1
        return self.samples[self.i - 1]

    def rewind(self):
        self.i = 0

    def __len__(self):
        return len(self.samples)


def load_dir(d):
    files = sorted(glob.glob(os.path.join(d, "*.npz")))
    if not files:
        raise SystemExit(f"{d}: no .npz files")
    return [dict(np.load(f)) for f in files]


def parse_extra(items):
    out = {}
    for it in items or []:
        k, _, v = it.partition("=")
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def cmd_calib_data(a):
    m = onnx.load(a.model, load_external_data=False)
    dims = T.parse_dims(a.dim)
    os.makedirs(a.dir, exist_ok=True)
    for i in range(a.n):
        np.savez(os.path.join(a.dir, f"sample_{i:03d}.npz"), **T.make_feeds(m, dims, a.seed + i))
    print(f"wrote {a.n} samples to {a.dir}")
    return 0


def cmd_dynamic(a):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    check_and_run(a.ours, a.orig)
    ref = tempfile.mktemp(suffix=".onnx")
    quantize_dynamic(a.orig, ref, op_types_to_quantize=a.op_types or None, per_channel=a.per_channel,
                     reduce_range=a.reduce_range, weight_type=QuantType[a.weight_type],
                     nodes_to_exclude=a.exclude or None, extra_options=parse_extra(a.extra))
    ok = compare_params(a.ours, ref, a.min_compared, a.orig)
    ok = error_check(a.orig, a.ours, ref) and ok
    return 0 if ok else 1


def run_static(a, out, op_types):
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    # quantize_static writes '<model>-inferred.onnx' next to its input and deletes it
    # after: tests running in parallel on one fixture raced on that file. A private copy
    # (the fixtures carry no external data) keeps the shared folder untouched.
    import shutil
    private = os.path.join(tempfile.mkdtemp(), os.path.basename(a.orig))
    shutil.copyfile(a.orig, private)
    quantize_static(private, out, Reader(load_dir(a.calib_dir)), quant_format=QuantFormat[a.quant_format],
                    op_types_to_quantize=op_types, per_channel=a.per_channel, reduce_range=a.reduce_range,
                    activation_type=QuantType[a.activation_type], weight_type=QuantType[a.weight_type],
                    nodes_to_exclude=a.exclude or None,
                    calibrate_method=CalibrationMethod[a.calibrate_method], extra_options=parse_extra(a.extra))


def cmd_static(a):
    check_and_run(a.ours, a.orig)
    ref = tempfile.mktemp(suffix=".onnx")
    run_static(a, ref, a.op_types or None)
    ok = compare_params(a.ours, ref, a.min_compared, a.orig)
    ok = error_check(a.orig, a.ours, ref) and ok
    if a.also_default_ops:
        ref2 = tempfile.mktemp(suffix=".onnx")
        run_static(a, ref2, None)
        ok = error_check(a.orig, a.ours, ref2, "onnxruntime (default op types)") and ok
    return 0 if ok else 1


def cmd_ranges(a):
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    extra = {}
    if a.num_bins:
        extra["num_bins"] = a.num_bins
    if a.num_quantized_bins:
        extra["num_quantized_bins"] = a.num_quantized_bins
    if a.percentile is not None:
        extra["percentile"] = a.percentile
    if a.symmetric is not None:
        extra["symmetric"] = a.symmetric == 1
    with tempfile.TemporaryDirectory() as d:
        c = create_calibrator(a.model, None, os.path.join(d, "aug.onnx"),
                              calibrate_method=CalibrationMethod[a.method], extra_options=extra)
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):
            c.collect_data(Reader(load_dir(a.calib_dir)))
            data = c.compute_data()
    out = {}
    for k, v in data.items():
        lo, hi = v.range_value
        out[k] = [float(lo), float(hi)]
    print(json.dumps(out))
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("calib-data")
    p.add_argument("model")
    p.add_argument("dir")
    p.add_argument("n", type=int)
    p.add_argument("--seed", type=int, default=100)
    p.add_argument("--dim", action="append", default=[])
    p.set_defaults(fn=cmd_calib_data)

    def common(p):
        p.add_argument("orig")
        p.add_argument("ours")
        p.add_argument("--weight-type", default="QInt8", choices=["QInt8", "QUInt8"])
        p.add_argument("--per-channel", action="store_true")
        p.add_argument("--reduce-range", action="store_true")
        p.add_argument("--op-types", nargs="+")
        p.add_argument("--exclude", nargs="+", default=[])
        p.add_argument("--min-compared", type=int, default=1)

    p = sub.add_parser("dynamic")
    common(p)
    p.add_argument("--extra", action="append")
    p.set_defaults(fn=cmd_dynamic)

    p = sub.add_parser("static")
    common(p)
    p.add_argument("calib_dir")
    p.add_argument("--activation-type", default="QInt8", choices=["QInt8", "QUInt8", "QInt16"])
    p.add_argument("--calibrate-method", default="MinMax",
                   choices=["MinMax", "Entropy", "Percentile", "Distribution"])
    p.add_argument("--quant-format", default="QDQ", choices=["QDQ", "QOperator"])
    p.add_argument("--extra", action="append")
    p.add_argument("--also-default-ops", action="store_true")
    p.set_defaults(fn=cmd_static)

    p = sub.add_parser("ranges")
    p.add_argument("model")
    p.add_argument("calib_dir")
    p.add_argument("method", choices=["MinMax", "Entropy", "Percentile", "Distribution"])
    p.add_argument("--num-bins", type=int)
    p.add_argument("--num-quantized-bins", type=int)
    p.add_argument("--percentile", type=float)
    p.add_argument("--symmetric", type=int, choices=[0, 1])
    p.set_defaults(fn=cmd_ranges)

    a = ap.parse_args()
    import logging

    logging.basicConfig(level=logging.ERROR)
    return a.fn(a)


if __name__ == "__main__":
    sys.exit(main())
