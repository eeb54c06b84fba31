"""Greedy tokens from onnxruntime-genai on a converted folder, and from a
step-by-step onnxruntime loop on the input model fed genai's tokens, printed as
one JSON line: {"genai": [...], "ort": [...], "max_abs_logits": x, "tie_margin": m}.
"ort" is onnxruntime's own argmax at each step, x the largest difference of the
last-position logits, m the largest gap between onnxruntime's best logit and
the logit of the token genai picked (0 when they always agree; a tiny m is a
near-tie that float rounding may break either way).

    genai_generate.py GENAI_DIR INPUT_MODEL --prompt 1,5,9 --new 12

The onnxruntime loop feeds the input model as its exporter meant: with a KV cache,
the prompt with an empty past and then one token at a time with the past, positions
counted from the past length; without one, the whole sequence every step.
"""
import argparse
import json

import numpy as np
import onnxruntime as ort
import onnxruntime_genai as og

TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64}


def genai_tokens(folder, prompt, new):
    model = og.Model(folder)
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + new, do_sample=False)
    gen = og.Generator(model, params)
    gen.append_tokens(np.array([prompt], dtype=np.int32))
    out, logits = [], []
    while not gen.is_done() and len(out) < new:
        # generate_next_token runs the model on the pending tokens, then picks.
        gen.generate_next_token()
        logits.append(np.array(gen.get_output("logits"))[0, -1].astype(np.float32))
        out.append(int(gen.get_next_tokens()[0]))
    return out, logits


def ort_tokens(path, prompt, new, forced):
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    inputs = {i.name: i for i in sess.get_inputs()}
    pasts = [n for n in inputs if n.startswith("past_key_values.")]
    outputs = [o.name for o in sess.get_outputs()]
    ids = list(prompt)
    past = {}
    for n in pasts:
        shape = [1 if not isinstance(d, int) else d for d in inputs[n].shape]
        shape[2] = 0
        past[n] = np.zeros(shape, TYPES[inputs[n].type])
    out, logits = [], []
    for _ in range(new):
        start = past_len = past[pasts[0]].shape[2] if pasts else 0
        step = ids[start:] if pasts else ids
        if not pasts:
            start = 0
        feeds = {"input_ids": np.array([step], np.int64)}
        if "attention_mask" in inputs:
            feeds["attention_mask"] = np.ones((1, past_len + len(step)), np.int64)
        if "position_ids" in inputs:
            feeds["position_ids"] = np.arange(start, start + len(step), dtype=np.int64)[None]
        feeds.update(past)
        res = dict(zip(outputs, sess.run(None, feeds)))
        logits.append(res["logits"][0, -1].astype(np.float32))
        out.append(int(np.argmax(logits[-1])))
        ids.append(forced[len(out) - 1])
        for n in pasts:
            past[n] = res[n.replace("past_key_values.", "present.")]
    return out, logits


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("genai_dir")
    ap.add_argument("model")
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--new", type=int, default=12)
    a = ap.parse_args()
    prompt = [int(t) for t in a.prompt.split(",")]
    g, gl = genai_tokens(a.genai_dir, prompt, a.new)
    o, ol = ort_tokens(a.model, prompt, len(g), g)
    diff = max(float(np.abs(x - y).max()) for x, y in zip(gl, ol))
    margin = max(float(l.max() - l[t]) for l, t in zip(ol, g))
    print(json.dumps({"genai": g, "ort": o, "max_abs_logits": diff, "tie_margin": margin}))


if __name__ == "__main__":
    main()
