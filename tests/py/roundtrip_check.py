"""Checks that models re-saved by onnxq mean exactly what the originals meant.

Usage: roundtrip_check.py PAIRS_FILE
PAIRS_FILE has one "ORIGINAL<TAB>RESAVED" per line. For each pair:
  1. both parse with onnx; external data is loaded and moved inline, and
     external_data/data_location cleared, so differing layouts compare equal;
  2. the two ModelProtos must be equal as protobuf messages;
  3. if the original runs in onnxruntime on the test inputs next to it
     (test_data_set_0/input_*.pb) or on seeded random inputs, the re-saved model must
     give bitwise identical outputs.
Prints one line per failure and a summary; exit status 1 on any failure.
"""
import glob
import os
import sys

import numpy as np
import onnx
from onnx import external_data_helper, numpy_helper

try:
    import onnxruntime as ort
except ImportError:  # message equality still runs
    ort = None


def normalized(path):
    m = onnx.load(path, load_external_data=True)

    def fix(t):
        if t.data_location == onnx.TensorProto.EXTERNAL or len(t.external_data):
            del t.external_data[:]
        t.ClearField("data_location")

    for t in external_data_helper._get_all_tensors(m):
        fix(t)
    return m


def first_difference(a, b, path="model"):
    if type(a) is not type(b):
        return path
    if not hasattr(a, "ListFields"):
        return None if a == b else path
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
                d = first_difference(x, y, f"{path}.{k}[{i}]")
                if d:
                    return d
        else:
            d = first_difference(va, vb, f"{path}.{k}")
            if d:
                return d
    return None


def inputs_for(original, sess):
    d = os.path.join(os.path.dirname(original), "test_data_set_0")
    files = sorted(glob.glob(os.path.join(d, "input_*.pb")), key=lambda p: int(p.rsplit("_", 1)[1][:-3]))
    names = [i.name for i in sess.get_inputs()]
    if files:
        feeds = {}
        for name, f in zip(names, files):
            t = onnx.TensorProto()
            with open(f, "rb") as fh:
                t.ParseFromString(fh.read())
            feeds[name] = numpy_helper.to_array(t)
        return feeds if len(feeds) == len(names) else None
    return None


def identical(x, y):
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
    # Bitwise, except NaN payloads that ORT may produce differently run to run.
    return x.tobytes() == y.tobytes() or (x.dtype.kind in "fc" and np.array_equal(x, y, equal_nan=True))


def run(path, feeds):
    so = ort.SessionOptions()
    so.log_severity_level = 4
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    return s.run(None, feeds)


def main():
    pairs = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
    failures, ran, equal = [], 0, 0
    for orig, new in pairs:
        try:
            a, b = normalized(orig), normalized(new)
        except Exception as e:  # noqa: BLE001 - report any parse failure
            failures.append(f"{new}: does not load with onnx: {e}")
            continue
        if a != b:
            failures.append(f"{new}: differs from {orig} at {first_difference(a, b)}")
            continue
        equal += 1
        if ort is None:
            continue
        try:
            so = ort.SessionOptions()
            so.log_severity_level = 4
            sess = ort.InferenceSession(orig, so, providers=["CPUExecutionProvider"])
            feeds = inputs_for(orig, sess)
        except Exception:  # the original itself does not run: nothing to compare
            continue
        if feeds is None:
            continue
        try:
            out_a = sess.run(None, feeds)
        except Exception:
            continue
        try:
            out_b = run(new, feeds)
        except Exception as e:  # noqa: BLE001
            failures.append(f"{new}: original runs in onnxruntime but the re-saved model fails: {e}")
            continue
        ran += 1
        for i, (x, y) in enumerate(zip(out_a, out_b)):
            if not identical(x, y):
                failures.append(f"{new}: output {i} differs from the original's")
                break
    for f in failures:
        print("FAIL", f)
    print(f"{len(pairs)} models: {equal} equal as messages, {ran} compared in onnxruntime, {len(failures)} failures")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
