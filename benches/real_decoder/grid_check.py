#!/usr/bin/env python3
"""Does the GGUF origin of the bench weights bias RTN against rotation (issue 18)? The
SmolLM2 linear weights were stored as Q4_1 (asymmetric 4-bit, blocks of 32 along K),
so every block lies on a 16-level grid; if symmetric RTN at block 32 along the same
axis landed back on that grid, plain RTN would be unfairly cheap and a rotation over K
(which destroys the grid) unfairly expensive.

For a sample of linear weights this prints, per weight: the distinct values per
32-block, and the relative Frobenius error ||W - RTN(W)|| / ||W|| of symmetric int4 RTN
(onnxq's rule, blocks along K) on
  - W itself,
  - W rotated over K by a seeded random orthogonal matrix (what QuaRot does to the
    inputs of q/k/v/gate/up and, with the online Hadamard, down_proj),
  - a Gaussian control with W's per-row scale (a weight with no grid).
Measured 2026-12-05: symmetric RTN W 0.085-0.099, rotated 0.085-0.087, control
0.085-0.086 (median ratio rotated/unrotated 0.97); asymmetric (integer zero point, 0 in
range) W 0.081-0.090, rotated 0.080-0.081. Neither grid lands back on Q4_1's float-offset
grid, so the file's origin makes no 4-bit row cheaper, and QuaRot's results on this
model come from the activations, not from the file format.

  .venv/bin/python benches/real_decoder/grid_check.py [--layers 0,15,29] [--block 32]
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import convert_gguf  # noqa: E402


def rtn_sym(w: np.ndarray, block: int) -> np.ndarray:
    """Symmetric int4 round to nearest over blocks of the last axis, onnxq's rule: the
    signed extreme maps to code -8 (scale = -extreme / 8), the other codes -7..7."""
    n, k = w.shape
    b = w.reshape(n, k // block, block)
    idx = np.abs(b).argmax(axis=2)[..., None]
    extreme = np.take_along_axis(b, idx, axis=2)
    scale = np.where(extreme != 0, -extreme / 8.0, 1.0)
    q = np.clip(np.round(b / scale), -8, 7)
    return (q * scale).reshape(n, k)


def rtn_asym(w: np.ndarray, block: int) -> np.ndarray:
    """Asymmetric int4 with an integer zero point and 0 inside the range (MatMulNBits)."""
    n, k = w.shape
    b = w.reshape(n, k // block, block)
    lo = np.minimum(b.min(axis=2, keepdims=True), 0.0)
    hi = np.maximum(b.max(axis=2, keepdims=True), 0.0)
    scale = np.where(hi > lo, (hi - lo) / 15.0, 1.0)
    zp = np.clip(np.round(-lo / scale), 0, 15)
    q = np.clip(np.round(b / scale) + zp, 0, 15)
    return ((q - zp) * scale).reshape(n, k)


def rel(w: np.ndarray, block: int, rtn=rtn_sym) -> float:
    return float(np.linalg.norm(w - rtn(w, block)) / np.linalg.norm(w))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", default="0,15,29")
    ap.add_argument("--block", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    from gguf import GGUFReader  # noqa: PLC0415

    reader = GGUFReader(convert_gguf.find_gguf())
    cfg = convert_gguf.config_from(reader, tied=True)
    weights = convert_gguf.hf_weights(reader, cfg)
    rng = np.random.default_rng(args.seed)
    rotations: dict[int, np.ndarray] = {}
    print(f"| weight | K | distinct values per 32-block (median) | RTN sym b{args.block}: W | rotated W | Gaussian control | RTN asym: W | rotated W |")
    print("|---|---|---|---|---|---|---|---|")
    ratios = []
    for i in args.layers.split(","):
        for part in ("self_attn.q_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.down_proj"):
            w = weights[f"model.layers.{i}.{part}.weight"]  # [out, in]: K is the last axis
            k = w.shape[1]
            if k not in rotations:
                rotations[k] = np.linalg.qr(rng.standard_normal((k, k)))[0].astype(np.float32)
            blocks = w.reshape(w.shape[0], k // 32, 32)
            distinct = np.median([len(np.unique(b)) for b in blocks.reshape(-1, 32)[:2000]])
            control = rng.standard_normal(w.shape).astype(np.float32) * w.std(axis=1, keepdims=True)
            e_w, e_r, e_c = rel(w, args.block), rel(w @ rotations[k], args.block), rel(control, args.block)
            a_w, a_r = rel(w, args.block, rtn_asym), rel(w @ rotations[k], args.block, rtn_asym)
            ratios.append(e_r / e_w)
            print(f"| layer {i} {part} | {k} | {distinct:.0f} | {e_w:.4f} | {e_r:.4f} | {e_c:.4f} | {a_w:.4f} | {a_r:.4f} |")
    print(f"\nrotated / unrotated RTN error: median {np.median(ratios):.2f}x over {len(ratios)} weights")


if __name__ == "__main__":
    main()
