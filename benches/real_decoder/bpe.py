"""A small pure-Python byte-level BPE for Hugging Face tokenizer.json files: the same
algorithm as onnxq's Rust tokenizer (src/calib/tokenizer.rs), so the perplexity text
and the calibration windows given to onnxruntime's quantizers are the tokens onnxq
calibrates on. Supports a ByteLevel pre-tokenizer, optionally after
Digits(individual_digits) in a Sequence; no normalizers, no added-token splitting.

Also `windows()`: onnxq's seeded calibration windows (splitmix64 offsets), so Python
drivers can feed exactly the windows `onnxq quantize --calib-text` uses.
"""
from __future__ import annotations

import json
import unicodedata

MASK = (1 << 64) - 1


def bytes_to_unicode() -> list[str]:
    out, n = [], 0
    for b in range(256):
        if 0x21 <= b <= 0x7E or 0xA1 <= b <= 0xAC or 0xAE <= b <= 0xFF:
            out.append(chr(b))
        else:
            n += 1
            out.append(chr(255 + n))
    return out


def _class(c: str) -> int:
    # 0 letter, 1 number, 2 space, 3 other (Rust: is_alphabetic / is_numeric / is_whitespace)
    if c.isalpha():
        return 0
    if unicodedata.category(c)[0] == "N":
        return 1
    if c.isspace():
        return 2
    return 3


CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")


def gpt2_split(text: str) -> list[str]:
    """`'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+`."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = next((c for c in CONTRACTIONS if text.startswith(c, i)), None)
        if c:
            out.append(c)
            i += len(c)
            continue
        o = i + 1 if text[i] == " " and i + 1 < n and _class(text[i + 1]) != 2 else i
        cls = _class(text[o])
        if cls != 2:
            j = o + 1
            while j < n and _class(text[j]) == cls:
                j += 1
            out.append(text[i:j])
            i = j
            continue
        j = i + 1
        while j < n and _class(text[j]) == 2:
            j += 1
        if j < n and j - i > 1:
            j -= 1
        out.append(text[i:j])
        i = j
    return out


def split_digits(text: str) -> list[str]:
    """HF Digits(individual_digits=true): every numeric char is its own piece."""
    out, start = [], 0
    for i, c in enumerate(text):
        if unicodedata.category(c)[0] == "N":
            if start < i:
                out.append(text[start:i])
            out.append(c)
            start = i + 1
    if start < len(text):
        out.append(text[start:])
    return out


class Bpe:
    def __init__(self, path: str):
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
        model = doc["model"]
        assert model["type"] == "BPE", model["type"]
        self.vocab: dict[str, int] = model["vocab"]
        self.by_id = {v: k for k, v in self.vocab.items()}
        self.ranks: dict[tuple[str, str], int] = {}
        for i, m in enumerate(model["merges"]):
            a, b = m.split(" ", 1) if isinstance(m, str) else m
            self.ranks.setdefault((a, b), i)
        pre = doc.get("pre_tokenizer") or {}
        subs = pre.get("pretokenizers", [pre])
        assert any(p.get("type") == "ByteLevel" for p in subs), "not byte-level"
        self.digits = any(p.get("type") == "Digits" and p.get("individual_digits") for p in subs)
        unk = model.get("unk_token")
        self.unk = self.vocab.get(unk) if unk else None
        self.byte_char = bytes_to_unicode()
        self.char_byte = {c: b for b, c in enumerate(self.byte_char)}
        self.cache: dict[str, list[int]] = {}

    def pieces(self, text: str) -> list[str]:
        if not self.digits:
            return gpt2_split(text)
        return [p for seg in split_digits(text) for p in gpt2_split(seg)]

    def _bpe(self, word: list[str]) -> list[str]:
        while len(word) > 1:
            best = min(((self.ranks.get((a, b), None), i) for i, (a, b) in enumerate(zip(word, word[1:]))
                        if (a, b) in self.ranks), default=None)
            if best is None:
                break
            a, b = word[best[1]], word[best[1] + 1]
            merged, j = [], 0
            while j < len(word):
                if j + 1 < len(word) and word[j] == a and word[j + 1] == b:
                    merged.append(a + b)
                    j += 2
                else:
                    merged.append(word[j])
                    j += 1
            word = merged
        return word

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for piece in self.pieces(text):
            got = self.cache.get(piece)
            if got is None:
                got = []
                for sym in self._bpe([self.byte_char[b] for b in piece.encode("utf-8")]):
                    i = self.vocab.get(sym, self.unk)
                    if i is None:
                        raise ValueError(f"symbol {sym!r} not in the vocabulary and no unk token")
                    got.append(i)
                self.cache[piece] = got
            ids.extend(got)
        return ids

    def decode(self, ids) -> str:
        out = bytearray()
        for i in ids:
            sym = self.by_id.get(int(i))
            if sym is None or any(c not in self.char_byte for c in sym):
                continue
            out.extend(self.char_byte[c] for c in sym)
        return out.decode("utf-8", errors="replace")


def splitmix(state: int) -> tuple[int, int]:
    state = (state + 0x9E3779B97F4A7C15) & MASK
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return state, z ^ (z >> 31)


def windows(ids: list[int], samples: int, seqlen: int, seed: int = 0) -> list[list[int]]:
    """onnxq's TextSamples::windows: `samples` windows at seeded random offsets."""
    seqlen = max(1, seqlen)
    if len(ids) <= seqlen:
        return [list(ids)]
    span, state, out = len(ids) - seqlen + 1, seed, []
    for _ in range(max(1, samples)):
        state, r = splitmix(state)
        s = r % span
        out.append(ids[s:s + seqlen])
    return out
