"""Checks that models re-saved by onnxq mean exactly what the originals meant.

Usage: roundtrip_check.py PAIRS_FILE
PAIRS_FILE has one "ORIGINAL<TAB>RESAVED" per line. For each pair:
  1. both parse with onnx; external data is treated as inline (external_data and
     data_location cleared, payloads compared by content), so differing layouts
     compare equal;
  2. the two ModelProtos must be equal as protobuf messages;
  3. if the original runs in onnxruntime on the test inputs next to it
     (test_data_set_0/input_*.pb) or, when there are none, on seeded random inputs
     (onnxq_testlib.make_feeds), the re-saved model must give bitwise identical outputs.
Prints one line per failure, then a summary and, last, one JSON line
{"models": N, "equal": N, "compared": N, "not_runnable": N, "have_ort": B} that
tests/roundtrip.rs checks. Exit status 1 on any failure, and when onnxruntime is
missing while ONNXQ_REQUIRE_ORT=1.
"""
import glob
import importlib.util
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import onnx  # noqa: E402
from onnx import numpy_helper  # noqa: E402

import onnxq_testlib as T  # noqa: E402

# Without onnxruntime the message equality still runs, unless CI requires it.
HAVE_ORT = importlib.util.find_spec("onnxruntime") is not None
REQUIRE_ORT = os.environ.get("ONNXQ_REQUIRE_ORT") == "1"


def test_data_feeds(original, sess):
    d = os.path.join(os.path.dirname(original), "test_data_set_0")
    files = sorted(glob.glob(os.path.join(d, "input_*.pb")), key=lambda p: int(p.rsplit("_", 1)[1][:-3]))
    if not files:
        return None
    names = [i.name for i in sess.get_inputs()]
    feeds = {}
    for name, f in zip(names, files):
        t = onnx.TensorProto()
        with open(f, "rb") as fh:
            t.ParseFromString(fh.read())
        feeds[name] = numpy_helper.to_array(t)
    return feeds if len(feeds) == len(names) else None


def main():
    if REQUIRE_ORT and not HAVE_ORT:
        print("FAIL: ONNXQ_REQUIRE_ORT=1 but onnxruntime is not importable")
        sys.exit(1)
    pairs = [line.rstrip("\n").split("\t") for line in open(sys.argv[1]) if line.strip()]
    failures, ran, equal, not_runnable = [], 0, 0, 0
    for orig, new in pairs:
        try:
            a, b = T.normalized_digest(orig), T.normalized_digest(new)
        except Exception as e:  # noqa: BLE001 - report any parse failure
            failures.append(f"{new}: does not load with onnx: {e}")
            continue
        if a != b:
            failures.append(f"{new}: differs from {orig} at {T.first_difference(a, b)}")
            continue
        equal += 1
        if not HAVE_ORT:
            continue
        try:
            sess = T.session(orig)
            feeds = test_data_feeds(orig, sess)
            if feeds is None:
                feeds = T.make_feeds(a, seed=0)
            out_a = sess.run(None, feeds)
        except Exception:  # noqa: BLE001 - the original itself does not run: counted, nothing to compare
            not_runnable += 1
            continue
        try:
            out_b = T.session(new).run(None, feeds)
        except Exception as e:  # noqa: BLE001
            failures.append(f"{new}: original runs in onnxruntime but the re-saved model fails: {e}")
            continue
        ran += 1
        for i, (x, y) in enumerate(zip(out_a, out_b)):
            if not T.identical(x, y):
                failures.append(f"{new}: output {i} differs from the original's")
                break
    for f in failures:
        print("FAIL", f)
    print(
        f"{len(pairs)} models: {equal} equal as messages, {ran} compared in onnxruntime "
        f"({not_runnable} do not run there), {len(failures)} failures"
    )
    counts = {"models": len(pairs), "equal": equal, "compared": ran, "not_runnable": not_runnable, "have_ort": HAVE_ORT}
    print(json.dumps(counts))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
