#!/usr/bin/env bash
# Side-by-side benchmark on the generated TinyLlama-shaped model: onnxq vs onnxruntime's
# Python tools, wall time and peak RSS (GNU time), in one run. Prints a markdown table.
#
#   bash benches/quantize.sh [MODEL]      (default fixtures/large/model.onnx; generated if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-fixtures/large/model.onnx}
PY=.venv/bin/python
[ -x "$PY" ] || bash .ci/setup-python
[ -f "$MODEL" ] || "$PY" fixtures/generate.py --large "$(dirname "$MODEL")"
cargo build --release -q
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
DATA="$MODEL.data"

measure() { # label, command...
  local label=$1; shift
  /usr/bin/time -f "%e %M" -o "$OUT/time" "$@" >"$OUT/log" 2>&1 || { cat "$OUT/log"; exit 1; }
  read -r secs kb <"$OUT/time"
  awk -v l="$label" -v s="$secs" -v k="$kb" 'BEGIN { printf "| %s | %.1f s | %.2f GiB |\n", l, s, k / 1048576 }'
}

cat "$DATA" >/dev/null   # page cache, as in baselines.md
echo "| job | wall | peak RSS |"
echo "|---|---|---|"
measure "I/O floor: read the weights once + write 0.9 GB" bash -c \
  "cat '$DATA' >/dev/null && head -c 909000000 /dev/zero >'$OUT/floor.bin' && sync '$OUT/floor.bin'"
rm -f "$OUT/floor.bin"
measure "onnxq RTN int4 sym b32" ./target/release/onnxq quantize "$MODEL" "$OUT/q.onnx" --no-verify
rm -f "$OUT"/q.onnx*
measure "onnxruntime MatMulNBitsQuantizer RTN int4 sym b32" "$PY" -m onnxruntime.quantization.matmul_nbits_quantizer \
  --input_model "$MODEL" --output_model "$OUT/ort.onnx" --block_size 32 --symmetric True --quant_method default
rm -f "$OUT"/ort.onnx*
measure "onnxq RTN int4 asym b32" ./target/release/onnxq quantize "$MODEL" "$OUT/q.onnx" --no-verify --asymmetric
rm -f "$OUT"/q.onnx*
measure "onnxq HQQ int4 b32 (integer zero points)" ./target/release/onnxq quantize "$MODEL" "$OUT/q.onnx" --no-verify --algorithm hqq
rm -f "$OUT"/q.onnx*
measure "onnxq load + save (convert, keep layout)" ./target/release/onnxq convert "$MODEL" "$OUT/c.onnx"
rm -f "$OUT"/c.onnx*
measure "python onnx.load + onnx.save (external data)" "$PY" -c \
  "import onnx,sys; m=onnx.load(sys.argv[1]); onnx.save(m, sys.argv[2], save_as_external_data=True, location='c.onnx.data')" \
  "$MODEL" "$OUT/c.onnx"
