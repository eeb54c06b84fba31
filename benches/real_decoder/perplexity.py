#!/usr/bin/env python3
"""Perplexity of decoder ONNX models on eval.txt with onnxruntime (CPU, default threads).

  .venv/bin/python benches/real_decoder/perplexity.py MODEL.onnx [MODEL.onnx ...]
        [--data DIR] [--windows 16] [--seqlen 512] [--json FILE]

The text DIR/eval.txt is tokenized once with DIR/tokenizer.json (bpe.py, the same
algorithm as onnxq's Rust tokenizer) and cached as DIR/eval.ids.npy; the first
--windows non-overlapping windows of --seqlen tokens are scored (batch 1, each window
on its own, no BOS: the model's tokenizer adds none), so every model sees exactly the
same tokens. ppl = exp(mean negative log-likelihood of tokens 2..L of every window).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DATA = os.path.normpath(os.path.join(HERE, "..", "..", "fixtures", "large", "smollm2"))


def eval_ids(data: str) -> np.ndarray:
    text, cache = os.path.join(data, "eval.txt"), os.path.join(data, "eval.ids.npy")
    tok = os.path.join(data, "tokenizer.json")
    if os.path.exists(cache) and os.path.getmtime(cache) >= max(os.path.getmtime(text), os.path.getmtime(tok)):
        return np.load(cache)
    sys.path.insert(0, HERE)
    from bpe import Bpe  # noqa: PLC0415

    with open(text, encoding="utf-8") as f:
        ids = np.array(Bpe(tok).encode(f.read()), dtype=np.int64)
    np.save(cache, ids)
    return ids


def nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Negative log-likelihood of targets under logits [L, V] (float64 log-softmax)."""
    x = logits.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(x - m).sum(axis=-1))
    return lse - x[np.arange(len(targets)), targets]


def perplexity(model: str, ids: np.ndarray, windows: int, seqlen: int, threads: int = 0) -> dict:
    import onnxruntime as ort  # noqa: PLC0415

    if len(ids) < windows * seqlen:
        raise SystemExit(f"eval text has {len(ids)} tokens, fewer than {windows} x {seqlen}")
    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    t0 = time.time()
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    load = time.time() - t0
    names = {i.name for i in sess.get_inputs()}
    # A KV-cache export (the genai form) scores each window as a prompt: an empty past.
    empty_past = {i.name: np.zeros([1, i.shape[1], 0, i.shape[3]], dtype=np.float32)
                  for i in sess.get_inputs() if i.name.startswith("past_key_values.")}
    total, count = 0.0, 0
    t0, c0 = time.time(), time.process_time()
    for w in range(windows):
        x = ids[w * seqlen:(w + 1) * seqlen][None]
        feed = {"input_ids": x, "attention_mask": np.ones_like(x)}
        if "position_ids" in names:
            feed["position_ids"] = np.arange(seqlen, dtype=np.int64)[None]
        feed.update(empty_past)
        logits = sess.run(["logits"], feed)[0][0]
        v = nll(logits[:-1], x[0, 1:])
        total += float(v.sum())
        count += len(v)
    secs = time.time() - t0
    # CPU time of every thread (onnxruntime's included): steadier than wall time when
    # other jobs share the machine.
    cpu = time.process_time() - c0
    return {"model": model, "ppl": float(np.exp(total / count)), "tokens": count, "windows": windows,
            "seqlen": seqlen, "seconds": secs, "cpu_seconds": cpu, "load_seconds": load}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+")
    ap.add_argument("--data", default=DEFAULT_DATA, help="directory with eval.txt and tokenizer.json")
    ap.add_argument("--windows", type=int, default=16)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads (0: onnxruntime's default)")
    ap.add_argument("--json", help="append one JSON line per model to this file")
    args = ap.parse_args()
    ids = eval_ids(args.data)
    for m in args.models:
        r = perplexity(m, ids, args.windows, args.seqlen, args.threads)
        print(f"{m}: ppl {r['ppl']:.4f} over {r['tokens']} tokens ({args.windows} x {args.seqlen}), "
              f"{r['seconds']:.1f} s, {r['cpu_seconds']:.1f} s CPU (+ {r['load_seconds']:.1f} s load)", flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
