#!/usr/bin/env python3
"""Greedy decoding of a real decoder three ways, for benches/llm_fixups.sh:

  1. no cache: the no-KV model re-run on the whole sequence for every new token;
  2. cached: the `onnxq llm add-kv-cache` model, the prompt with an empty past, then one
     token at a time with the past (positions counted from the past length);
  3. onnxruntime-genai on the `onnxq llm genai` folder (optional: --genai DIR).

  kv_decode.py NOKV.onnx KV.onnx --tokenizer tokenizer.json --text eval.txt
               [--prompt-tokens 32] [--new 64] [--genai DIR] [--threads N]

Prints one JSON line: tokens of each, max |logits| difference between the cached and
the no-cache run at every decoded position (the prompt's logits from the prefill
included), wall time and tokens/s of each loop (session creation excluded; the
prompt's processing included). Greedy loops stop at --new tokens or at an eos id.
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import onnxruntime as ort

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bpe import Bpe  # noqa: E402


def session(path, threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def no_cache(sess, prompt, new, eos):
    names = {i.name for i in sess.get_inputs()}
    ids = list(prompt)
    steps = []
    t0 = time.perf_counter()
    for _ in range(new):
        x = np.array([ids], np.int64)
        feeds = {"input_ids": x, "attention_mask": np.ones_like(x)}
        if "position_ids" in names:
            feeds["position_ids"] = np.arange(len(ids), dtype=np.int64)[None]
        logits = sess.run(["logits"], feeds)[0][0]
        if not steps:
            steps.append(logits[:-1])  # the prompt's own positions, checked too
        steps.append(logits[-1:])
        tok = int(logits[-1].argmax())
        ids.append(tok)
        if tok in eos:
            break
    secs = time.perf_counter() - t0
    return ids[len(prompt):], np.concatenate(steps), secs


def cached(sess, prompt, new, eos):
    inputs = {i.name: i for i in sess.get_inputs()}
    outputs = [o.name for o in sess.get_outputs()]
    pasts = [n for n in inputs if n.startswith("past_key_values.")]
    past = {}
    for n in pasts:
        shape = [1 if not isinstance(d, int) else d for d in inputs[n].shape]
        shape[2] = 0
        past[n] = np.zeros(shape, np.float32)
    ids = list(prompt)
    step = list(prompt)
    steps = []
    t0 = time.perf_counter()
    for _ in range(new):
        start = len(ids) - len(step)
        feeds = {
            "input_ids": np.array([step], np.int64),
            "attention_mask": np.ones((1, len(ids)), np.int64),
            "position_ids": np.arange(start, len(ids), dtype=np.int64)[None],
        }
        feeds.update(past)
        res = dict(zip(outputs, sess.run(None, feeds)))
        logits = res["logits"][0]
        steps.append(logits)
        tok = int(logits[-1].argmax())
        ids.append(tok)
        step = [tok]
        for n in pasts:
            past[n] = res[n.replace("past_key_values.", "present.")]
        if tok in eos:
            break
    secs = time.perf_counter() - t0
    return ids[len(prompt):], np.concatenate(steps), secs


def genai(folder, prompt, new):
    import onnxruntime_genai as og  # noqa: PLC0415

    model = og.Model(folder)
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + new, do_sample=False)
    gen = og.Generator(model, params)
    t0 = time.perf_counter()
    gen.append_tokens(np.array([prompt], dtype=np.int32))
    out = []
    while not gen.is_done() and len(out) < new:
        gen.generate_next_token()
        out.append(int(gen.get_next_tokens()[0]))
    secs = time.perf_counter() - t0
    return out, secs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("nokv")
    ap.add_argument("kv")
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--text", required=True)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--eos", default="", help="comma-separated eos ids")
    ap.add_argument("--genai")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    eos = {int(t) for t in a.eos.split(",") if t}
    tok = Bpe(a.tokenizer)
    with open(a.text, encoding="utf-8") as f:
        prompt = tok.encode(f.read(4000))[: a.prompt_tokens]
    assert len(prompt) == a.prompt_tokens, len(prompt)

    t_nc, l_nc, s_nc = no_cache(session(a.nokv, a.threads), prompt, a.new, eos)
    t_kv, l_kv, s_kv = cached(session(a.kv, a.threads), prompt, a.new, eos)
    n = min(len(l_nc), len(l_kv))
    # Positions compared: where both runs had the same tokens so far.
    same = 0
    while same < min(len(t_nc), len(t_kv)) and t_nc[same] == t_kv[same]:
        same += 1
    upto = min(n, len(prompt) + same)
    diff = float(np.abs(l_nc[:upto] - l_kv[:upto]).max())
    r = {
        "prompt": prompt,
        "prompt_tokens": len(prompt),
        "no_cache_tokens": t_nc,
        "cached_tokens": t_kv,
        "tokens_equal": t_nc == t_kv,
        "positions_compared": upto,
        "max_abs_logits": diff,
        "no_cache_secs": s_nc,
        "cached_secs": s_kv,
        "no_cache_tok_s": len(t_nc) / s_nc,
        "cached_tok_s": len(t_kv) / s_kv,
        "text": tok.decode(prompt + t_kv),
    }
    if a.genai:
        t_g, s_g = genai(a.genai, prompt, a.new)
        r.update({
            "genai_tokens": t_g,
            "genai_equal_ort_loop": t_g == t_kv,
            "genai_secs": s_g,
            "genai_tok_s": len(t_g) / s_g,
        })
    print(json.dumps(r))


if __name__ == "__main__":
    main()
