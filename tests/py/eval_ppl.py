"""Reference figures for `onnxq eval`, computed with onnxruntime and numpy.

  eval_ppl.py MODEL IDS WINDOW STRIDE [REFERENCE]

IDS is a text file of whitespace-separated token ids. Perplexity follows Hugging
Face's strided evaluation (transformers' perplexity guide): windows of WINDOW tokens
start every STRIDE tokens; a window's labels are masked except its last
`end - previous end` tokens, logits are shifted by one, and ppl = exp(sum of NLL /
number of scored labels). Each window is one ORT run on a batch of 1 with an empty
past (length 0), all-ones attention mask and positions 0..L. NLL comes from a
float64 log-softmax. With REFERENCE, over the same scored positions: mean and p99
(nearest rank) of KL(reference || model) and top-1 agreement. Prints one JSON line.
"""
import json
import math
import sys

import numpy as np
import onnxruntime as ort


def session(path):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def logits_of(sess, ids):
    feed = {}
    for i in sess.get_inputs():
        n = i.name
        itype = np.int32 if "int32" in i.type else np.int64
        if "input_ids" in n:
            feed[n] = np.asarray(ids, dtype=itype)[None]
        elif "attention_mask" in n:
            feed[n] = np.ones((1, len(ids)), dtype=itype)
        elif "position_ids" in n:
            feed[n] = np.arange(len(ids), dtype=itype)[None]
        elif "past" in n:
            shape = [1, i.shape[1], 0, i.shape[3]]
            feed[n] = np.zeros(shape, dtype=np.float32)
        else:
            raise SystemExit(f"unexpected input {n}")
    names = [o.name for o in sess.get_outputs()]
    out = sess.run(["logits" if "logits" in names else names[0]], feed)[0]
    return out[0].astype(np.float64)


def log_softmax(x):
    m = x.max(axis=-1, keepdims=True)
    return x - (m + np.log(np.exp(x - m).sum(axis=-1, keepdims=True)))


def main():
    model, ids_file, window, stride = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    reference = sys.argv[5] if len(sys.argv) > 5 else None
    ids = np.loadtxt(ids_file, dtype=np.int64).reshape(-1)
    sess = session(model)
    ref = session(reference) if reference else None
    nll_sum, count, ref_nll, kls, same = 0.0, 0, 0.0, [], 0
    prev_end, n = 0, len(ids)
    for begin in range(0, n, stride):
        end = min(begin + window, n)
        trg_len = end - prev_end
        x = ids[begin:end]
        labels = x.copy()
        labels[:-trg_len] = -100
        lp = log_softmax(logits_of(sess, x))[:-1]
        tgt = labels[1:]
        valid = tgt != -100
        rows = np.nonzero(valid)[0]
        nll_sum -= float(lp[rows, tgt[rows]].sum())
        count += len(rows)
        if ref is not None:
            lr = log_softmax(logits_of(ref, x))[:-1]
            ref_nll -= float(lr[rows, tgt[rows]].sum())
            kls.extend((np.exp(lr[rows]) * (lr[rows] - lp[rows])).sum(axis=-1).tolist())
            same += int((lr[rows].argmax(axis=-1) == lp[rows].argmax(axis=-1)).sum())
        prev_end = end
        if end == n:
            break
    out = {"perplexity": math.exp(nll_sum / count), "tokens": count}
    if ref is not None:
        k = sorted(kls)
        out.update(
            reference_perplexity=math.exp(ref_nll / count),
            kl_mean=sum(kls) / count,
            kl_p99=k[max(math.ceil(0.99 * len(k)), 1) - 1],
            top1_agreement=same / count,
        )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
