"""Checks onnxq's quantized models against onnxruntime and its own quantizers.

  run MODEL [ORIG]               onnx checker (unless ORIG fails it too) + one ORT run
  rtn ORIG OURS BITS BLOCK SYM   quantize ORIG with onnxruntime's MatMulNBitsQuantizer
                                 (same settings), then: every weight's codes, scales and
                                 zero points identical to ORT's, and the output error of
                                 OURS vs ORIG no worse than ORT's (1%)
  bnb4 ORIG OURS QTYPE BLOCK     same with MatMulBnb4Quantizer; packed bytes and absmax
                                 must be identical
  error ORIG CAND [SEED]         prints relative L2 of CAND's outputs vs ORIG's in ORT
                                 (inputs: onnxq_testlib.make_feeds with SEED, default 0)
  input-sum MODEL SEED           prints the sum of the first input make_feeds gives
Exit 0 on success; prints what failed otherwise.
"""
import os
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import onnxq_testlib as T  # noqa: E402


def session(path):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def rel_l2(orig, cand, seed=0):
    a, b = session(orig), session(cand)
    f = T.make_feeds(onnx.load(orig, load_external_data=False), seed=seed)
    ya, yb = a.run(None, f), b.run(None, f)
    pairs = [(np.asarray(x), np.asarray(y)) for x, y in zip(ya, yb) if np.asarray(x).dtype.kind == "f"]
    ya, yb = [p[0] for p in pairs], [p[1] for p in pairs]
    num = sum(float(np.sum((x.astype(np.float64) - y) ** 2)) for x, y in zip(ya, yb))
    den = sum(float(np.sum(x.astype(np.float64) ** 2)) for x in ya)
    return (num / den) ** 0.5


def check_and_run(path, orig=None):
    # ORT's own default-domain ops (genai's SimplifiedLayerNormalization) are taught
    # to the checker by onnxq_testlib.
    T.check(path)
    s = session(path)
    s.run(None, T.make_feeds(onnx.load(orig or path, load_external_data=False)))


def inits(path):
    m = onnx.load(path)
    return {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}


def rtn(orig, ours, bits, block, sym):
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    check_and_run(ours, orig)
    cfg = DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=sym, bits=bits)
    q = MatMulNBitsQuantizer(onnx.load(orig), algo_config=cfg)
    q.process()
    ref = tempfile.mktemp(suffix=".onnx")
    q.model.save_model_to_file(ref, use_external_data_format=False)
    a, b = inits(ours), inits(ref)
    orig_inits = inits(orig)
    compared = 0
    for name, ref_b in b.items():
        if not name.endswith(f"_Q{bits}"):
            continue
        base = name[: -len(f"_Q{bits}")]
        ours_b = a[name]
        ref_s, ours_s = b[base + "_scales"].reshape(-1), a[base + "_scales"].reshape(-1)
        if ref_s.dtype != ours_s.dtype or not np.array_equal(ref_s, ours_s):
            d = np.abs(ref_s.astype(np.float64) - ours_s).max() if ref_s.shape == ours_s.shape else "shape"
            print(f"FAIL {base}: scales differ ({ref_s.dtype} vs {ours_s.dtype}, max {d})")
            return 1
        ref_z, ours_z = b.get(base + "_zero_points"), a.get(base + "_zero_points")
        if (ref_z is None) != (ours_z is None) or (
            ref_z is not None and not np.array_equal(ref_z.reshape(-1), ours_z.reshape(-1))
        ):
            print(f"FAIL {base}: zero points differ")
            return 1
        per = 8 // bits
        mask = (1 << bits) - 1
        k = orig_inits[base].shape[0]
        n = ours_b.shape[0]

        def codes(x):
            # [N, k_blocks*block_size] codes; the padding past K carries no meaning.
            x = x.reshape(n, -1)
            c = np.stack([(x >> (bits * j)) & mask for j in range(per)], axis=-1).reshape(n, -1)
            return c[:, :k].astype(np.int16)

        d = np.abs(codes(ours_b) - codes(ref_b))
        if d.max() > 0:
            print(f"FAIL {base}: {int((d > 0).sum())} of {d.size} codes differ (by up to {d.max()} steps)")
            return 1
        print(f"{base}: {d.size} codes, {ref_s.size} scales identical")
        compared += 1
    if compared == 0:
        print("FAIL: onnxruntime's quantizer produced no weights to compare")
        return 1
    e_ours, e_ref = rel_l2(orig, ours), rel_l2(orig, ref)
    print(f"rel L2 vs fp32: onnxq {e_ours:.6e}  onnxruntime {e_ref:.6e}")
    if e_ours > e_ref * 1.01 + 1e-7:
        print("FAIL: onnxq's error is worse than onnxruntime's by more than 1%")
        return 1
    return 0


def bnb4(orig, ours, qtype, block):
    from onnxruntime.quantization.matmul_bnb4_quantizer import MatMulBnb4Quantizer

    check_and_run(ours)
    q = MatMulBnb4Quantizer(onnx.load(orig), {"fp4": 0, "nf4": 1}[qtype], block)
    q.process()
    ref = tempfile.mktemp(suffix=".onnx")
    q.model.save_model_to_file(ref, use_external_data_format=False)
    a, b = inits(ours), inits(ref)
    compared = 0
    for name, v in b.items():
        if name.endswith("_Bnb4") or name.endswith("_absmax"):
            if name not in a:
                print(f"FAIL: {name} missing from onnxq's output")
                return 1
            if not np.array_equal(a[name].reshape(-1), v.reshape(-1)):
                print(f"FAIL {name}: differs ({int((a[name].reshape(-1) != v.reshape(-1)).sum())} elements)")
                return 1
            compared += 1
    print(f"{compared} bnb4 tensors identical; rel L2 vs fp32: onnxq {rel_l2(orig, ours):.6e} onnxruntime {rel_l2(orig, ref):.6e}")
    return 0 if compared else 1


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "run":
        check_and_run(args[0], args[1] if len(args) > 1 else None)
        return 0
    if cmd == "rtn":
        return rtn(args[0], args[1], int(args[2]), int(args[3]), args[4] == "1")
    if cmd == "bnb4":
        return bnb4(args[0], args[1], args[2], int(args[3]))
    if cmd == "error":
        print(rel_l2(args[0], args[1], int(args[2]) if len(args) > 2 else 0))
        return 0
    if cmd == "input-sum":
        f = T.make_feeds(onnx.load(args[0], load_external_data=False), seed=int(args[1]))
        print(float(np.sum(next(iter(f.values())), dtype=np.float64)))
        return 0
    raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    sys.exit(main())
