#!/usr/bin/env python3
"""Why QuaRot + RTN loses to plain RTN on SmolLM2 (issue 18): a norm's scale γ is fused
into the following projections before the rotation, so the rotated weight's rounding
error no longer follows the activations. Unrotated, the output error of a weight-only
quantizer is about Σ_c e_c γ_c² δ² (e_c: the energy of normalized channel c, δ: the
rounding error per weight); rotated, every channel carries the same error, about
(Σ_c e_c)(Σ_c γ_c²)/K · δ². Their ratio ρ = K Σ e_c γ_c² / (Σ e_c Σ γ_c²) says which
wins: ρ < 1 (trained norms damp high-energy channels) means rotation raises the output
error by 1/ρ, against a weight-error gain of about 3 % at block 32
(benches/real_decoder/grid_check.py).

Prints ρ per norm kind over 4 × 512 calibration tokens (position 0, the attention sink,
left out; the channels onnxq keeps out of the rotation left out).

  .venv/bin/python benches/real_decoder/norm_energy.py [DATA]   (default fixtures/large/smollm2-tied)
"""
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
from tokenizers import Tokenizer

# onnxq's notes name them (norm scale below 0.01 of its median, or massive activations).
KEPT_OUT = [69, 119, 140, 247, 308, 421, 507, 555]


def external_f32(t: onnx.TensorProto, data: str) -> np.ndarray:
    """A float tensor from the external data file, read directly: onnx's own reader
    refuses a data file with several hard links, which onnxq's unchanged copies make."""
    if not t.external_data:
        return onnx.numpy_helper.to_array(t)
    info = {e.key: e.value for e in t.external_data}
    n = int(info["length"]) // 4
    return np.fromfile(os.path.join(data, info["location"]), np.float32, n, offset=int(info.get("offset", 0)))


def main() -> None:
    data = sys.argv[1] if len(sys.argv) > 1 else "fixtures/large/smollm2-tied"
    model = onnx.load(f"{data}/model.onnx", load_external_data=False)
    gammas = {t.name: external_f32(t, data) for t in model.graph.initializer if "layernorm.weight" in t.name}
    # Mul(γ, normalized x): the normalized input is what each channel's energy is taken of.
    normalized = {n.input[0]: n.input[1] for n in model.graph.node if n.op_type == "Mul" and n.input[0] in gammas}
    for x in normalized.values():
        model.graph.output.append(onnx.helper.make_tensor_value_info(x, onnx.TensorProto.FLOAT, None))
    # The weights stay in model.onnx.data: the probe model next to it points there.
    probe = f"{data}/norm_energy_probe.onnx"
    onnx.save(model, probe)
    try:
        session = ort.InferenceSession(probe, providers=["CPUExecutionProvider"])
    finally:
        os.remove(probe)
    ids = Tokenizer.from_file(f"{data}/tokenizer.json").encode(open(f"{data}/calib.txt").read()).ids
    hidden = len(next(iter(gammas.values())))
    energy = {g: np.zeros(hidden) for g in normalized}
    for w in range(4):
        x = np.array([ids[w * 512:(w + 1) * 512]], dtype=np.int64)
        feeds = {"input_ids": x, "attention_mask": np.ones_like(x), "position_ids": np.arange(512)[None]}
        for g, v in zip(normalized, session.run(list(normalized.values()), feeds)):
            energy[g] += (v[0, 1:] ** 2).sum(0)  # position 0 (the sink) left out
    keep = np.ones(hidden, bool)
    keep[KEPT_OUT] = False
    for kind in ("input_layernorm", "post_attention_layernorm"):
        rho = []
        for g in normalized:
            if kind in g:
                e, y = energy[g][keep], gammas[g][keep] ** 2
                rho.append(len(e) * (e * y).sum() / (e.sum() * y.sum()))
        print(f"{kind}: rho median {np.median(rho):.3f}, min {min(rho):.3f}, max {max(rho):.3f} over {len(rho)} norms "
              f"(rotated / unrotated output error energy = 1/rho)")


if __name__ == "__main__":
    main()
