#!/usr/bin/env python3
"""onnxruntime's own quantizers on the real decoder, fed the same calibration windows
as `onnxq quantize --calib-text calib.txt --tokenizer tokenizer.json` (onnxq's seeded
window choice, reproduced by bpe.windows), plus a writer of those windows as .npz
files for `onnxq quantize --algorithm static --calib DIR`.

  ort_quantize.py nbits   IN OUT --method default|hqq [--block-size 32] [--asym]
  ort_quantize.py gptq    IN OUT [--block-size 32] [--asym] [--samples N] [--seqlen L]
  ort_quantize.py dynamic IN OUT [--per-channel]
  ort_quantize.py static  IN OUT [--per-channel] [--samples N] [--seqlen L]
  ort_quantize.py npz     DIR [--samples N] [--seqlen L]

Common: --data DIR (calib.txt, tokenizer.json; default fixtures/large/smollm2), --seed 0.

onnxruntime's GPTQ (neural_compressor/weight_only.py) needs no torch for the math, but
its input conversion (neural_compressor/util.py: to_numpy) starts with `import torch`;
this driver replaces that one helper with np.asarray so it runs without torch.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import onnx
import onnx.external_data_helper

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
DEFAULT_DATA = os.path.normpath(os.path.join(HERE, "..", "..", "fixtures", "large", "smollm2"))


def calib_windows(data: str, samples: int, seqlen: int, seed: int) -> list[list[int]]:
    from bpe import Bpe, windows  # noqa: PLC0415

    with open(os.path.join(data, "calib.txt"), encoding="utf-8") as f:
        ids = Bpe(os.path.join(data, "tokenizer.json")).encode(f.read())
    print(f"calibration: {samples} windows of {seqlen} tokens from a text of {len(ids)} tokens (seed {seed})",
          flush=True)
    return windows(ids, samples, seqlen, seed)


def feeds(model_path: str, wins: list[list[int]]) -> list[dict[str, np.ndarray]]:
    import onnx  # noqa: PLC0415

    names = [i.name for i in onnx.load(model_path, load_external_data=False).graph.input]
    out = []
    for w in wins:
        x = np.array([w], dtype=np.int64)
        f = {"input_ids": x, "attention_mask": np.ones_like(x)}
        if "position_ids" in names:
            f["position_ids"] = np.arange(x.shape[1], dtype=np.int64)[None]
        out.append(f)
    return out


def reader(model_path: str, args):
    from onnxruntime.quantization import CalibrationDataReader  # noqa: PLC0415

    items = feeds(model_path, calib_windows(args.data, args.samples, args.seqlen, args.seed))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = items
            self.i = 0

        def get_next(self):
            if self.i >= len(self.items):
                return None
            self.i += 1
            return self.items[self.i - 1]

        def rewind(self):
            self.i = 0

    return Reader()


def cmd_nbits(args):
    from onnxruntime.quantization import matmul_nbits_quantizer as mnq  # noqa: PLC0415

    if args.method == "hqq":
        cfg = mnq.HQQWeightOnlyQuantConfig(block_size=args.block_size, bits=4)
    else:
        cfg = mnq.DefaultWeightOnlyQuantConfig(block_size=args.block_size, is_symmetric=not args.asym, bits=4)
    q = mnq.MatMulNBitsQuantizer(args.input, bits=4, block_size=args.block_size, is_symmetric=not args.asym,
                                 algo_config=cfg)
    q.process()
    q.model.save_model_to_file(args.output, True)


def cmd_gptq(args):
    import onnxruntime.quantization.neural_compressor.util as inc_util  # noqa: PLC0415
    from onnxruntime.quantization import matmul_nbits_quantizer as mnq  # noqa: PLC0415

    inc_util.to_numpy = np.asarray  # the original imports torch first (see the module doc)
    # Its calibration session is made from the serialized model, so external data
    # resolves against the working directory: run from the model's folder.
    args.input, args.output, args.data = map(os.path.abspath, (args.input, args.output, args.data))
    os.chdir(os.path.dirname(args.input))
    cfg = mnq.GPTQWeightOnlyQuantConfig(calibration_data_reader=reader(args.input, args))
    q = mnq.MatMulNBitsQuantizer(args.input, bits=4, block_size=args.block_size, is_symmetric=not args.asym,
                                 algo_config=cfg)
    q.process()
    # Tensors it did not touch (the embedding table) still point at the input's data
    # file; bring them in so the output stands alone.
    onnx.external_data_helper.load_external_data_for_model(q.model.model, os.path.dirname(args.input))
    q.model.save_model_to_file(args.output, True)


def cmd_dynamic(args):
    from onnxruntime.quantization import quantize_dynamic  # noqa: PLC0415

    quantize_dynamic(args.input, args.output, per_channel=args.per_channel, use_external_data_format=True)


def cmd_static(args):
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static  # noqa: PLC0415

    quantize_static(args.input, args.output, reader(args.input, args), quant_format=QuantFormat.QDQ,
                    per_channel=args.per_channel, calibrate_method=CalibrationMethod.MinMax,
                    use_external_data_format=True)
    # Not CalibMaxIntermediateOutputs: in onnxruntime 1.32 reaching that count discards
    # the collected outputs without reducing them ("No data is collected"), so every
    # sample's intermediates (~1 GB per 512-token window here) are held at once.


def cmd_npz(args):
    os.makedirs(args.input, exist_ok=True)
    model = os.path.join(args.data, "model.onnx")
    for i, f in enumerate(feeds(model, calib_windows(args.data, args.samples, args.seqlen, args.seed))):
        np.savez(os.path.join(args.input, f"sample_{i:03d}.npz"), **f)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["nbits", "gptq", "dynamic", "static", "npz"])
    ap.add_argument("input", help="input model (npz: output directory)")
    ap.add_argument("output", nargs="?")
    ap.add_argument("--method", choices=["default", "hqq"], default="default")
    ap.add_argument("--block-size", type=int, default=32)
    ap.add_argument("--asym", action="store_true")
    ap.add_argument("--per-channel", action="store_true")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default=DEFAULT_DATA)
    args = ap.parse_args()
    if args.command != "npz" and not args.output:
        ap.error("OUT is required")
    t0 = time.time()
    globals()[f"cmd_{args.command}"](args)
    print(f"{args.command}: {time.time() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main()
