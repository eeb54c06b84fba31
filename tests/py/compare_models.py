#!/usr/bin/env python3
"""Asserts that two ONNX models are the same model.

Usage: compare_models.py A B [--dim NAME=VALUE ...] [--no-run] [--seed N] [--vocab N]
                         [--threads N]

1. Both load with onnx; external data is treated as if inline (external_data and
   data_location cleared, payload compared by content), so the same model saved in
   different layouts compares equal. The two ModelProtos must be equal as protobuf
   messages; otherwise the first differing field path is printed.
2. Unless --no-run, both run in onnxruntime (CPU, one thread) on the same seeded
   random inputs and every output must be bitwise identical. Input shapes come from
   the declared inputs; symbolic dims from --dim, else 1 for batch-like names and 4
   for the rest (total_* = past + new). input_ids are drawn from [0, vocab) with
   vocab read from the embedding (or --vocab); attention_mask is all ones;
   position_ids continue after the past.

Exit status 0 when the models match, 1 otherwise (with the reason).
"""
import argparse
import gc
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np  # noqa: E402

import onnxq_testlib as T  # noqa: E402


def describe_difference(x, y):
    x, y = np.asarray(x), np.asarray(y)
    if x.shape != y.shape or x.dtype != y.dtype:
        return f"shape/dtype {x.shape} {x.dtype} vs {y.shape} {y.dtype}"
    if x.dtype.kind in "fc":
        d = np.abs(x.astype(np.float64) - y.astype(np.float64))
        d = np.where(np.isnan(d), np.inf, d)
        i = np.unravel_index(int(np.argmax(d)), d.shape) if d.size else ()
        return f"max |diff| {float(d.max()):.3g} at {tuple(int(v) for v in i)} ({x[i]!r} vs {y[i]!r}), " \
               f"{int((d > 0).sum())} of {d.size} elements differ"
    return f"{int((x != y).sum())} of {x.size} elements differ"


def main():
    ap = argparse.ArgumentParser(description="protobuf equality + bitwise-identical ORT outputs")
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--dim", action="append", default=[], metavar="NAME=VALUE", help="value of a symbolic dim")
    ap.add_argument("--no-run", action="store_true", help="only compare the messages")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    ap.add_argument("--vocab", type=int, help="range of input_ids when no embedding table is found")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1)")
    args = ap.parse_args()

    try:
        dims = T.parse_dims(args.dim)
        a, b = T.normalized_digest(args.a), T.normalized_digest(args.b)
    except Exception as e:  # noqa: BLE001 - any load failure is a failed comparison
        print(f"FAIL: cannot load: {type(e).__name__}: {e}")
        return 1
    if a != b:
        print(f"FAIL: {args.b} differs from {args.a} at {T.first_difference(a, b)}")
        return 1
    print(f"equal as messages: {args.a} == {args.b}")
    if args.no_run:
        return 0

    try:
        feeds = T.make_feeds(a, dims, args.seed, args.vocab)
    except Exception as e:  # noqa: BLE001
        print(f"FAIL: cannot make inputs: {e}")
        return 1
    del a, b
    gc.collect()
    results = []
    for path in (args.a, args.b):
        try:
            results.append(T.run(path, feeds, args.threads))
        except Exception as e:  # noqa: BLE001
            print(f"FAIL: onnxruntime cannot run {path}: {type(e).__name__}: {e}")
            return 1
        gc.collect()
    (names_a, outs_a), (names_b, outs_b) = results
    if names_a != names_b:
        print(f"FAIL: output names differ: {names_a} vs {names_b}")
        return 1
    bad = [(n, x, y) for n, x, y in zip(names_a, outs_a, outs_b) if not T.identical(x, y)]
    for n, x, y in bad:
        print(f"FAIL: output {n!r} differs: {describe_difference(x, y)}")
    if bad:
        return 1
    shapes = ", ".join(f"{k}{list(np.shape(v))}" for k, v in feeds.items())
    print(f"identical outputs ({len(names_a)}: {', '.join(names_a)}) on seed {args.seed} inputs: {shapes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
