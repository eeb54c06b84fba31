#!/usr/bin/env python3
"""Runs the onnx checker on a model (external data is read from beside it).

Usage: check_model.py MODEL [--no-full]
  --no-full   skip strict shape inference (full_check)

SimplifiedLayerNormalization in the ONNX domain (emitted by onnxruntime-genai,
implemented only by onnxruntime) is given a schema first, so genai-style models check.
Exit status 0 when valid, 1 with the checker's message otherwise.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import onnxq_testlib as T  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description="onnx.checker with external data")
    ap.add_argument("model")
    ap.add_argument("--no-full", action="store_true", help="no strict shape inference")
    a = ap.parse_args()
    if not os.path.isfile(a.model):
        print(f"{a.model}: no such file")
        return 1
    try:
        T.check(a.model, full=not a.no_full)
    except Exception as e:  # noqa: BLE001 - any checker/inference error means invalid
        print(f"{a.model}: invalid: {type(e).__name__}: {e}")
        return 1
    print(f"{a.model}: valid{'' if a.no_full else ' (full check)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
