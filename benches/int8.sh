#!/usr/bin/env bash
# Side-by-side 8-bit benchmark, onnxq vs onnxruntime's Python tools, wall time and peak
# RSS (GNU time) in one run; prints a markdown table.
#
#   bash benches/int8.sh [LARGE_MODEL] [CALIB_SAMPLES]
#
# - dynamic int8 on the generated TinyLlama-shaped decoder (default
#   fixtures/large/model.onnx, 4.4 GB fp32 external data; generated if missing):
#   onnxq `--algorithm dynamic --activations per-tensor` (onnxruntime's form) vs
#   `quantize_dynamic`, MatMul only, per-tensor and per-channel weights (int8
#   symmetric, as onnxruntime's defaults), and onnxq's default (per-token) form;
# - static int8 QDQ MinMax on fixtures/cnn.onnx with CALIB_SAMPLES (default 256) seeded
#   random .npz samples: onnxq `--algorithm static --calib DIR --per-channel false
#   --exclude-worst 0` (onnxruntime's settings) and with its defaults vs
#   `quantize_static` (each tool's default op types).
# Neither onnxq run verifies its output (--no-verify): the table is the quantizer alone.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-fixtures/large/model.onnx}
SAMPLES=${2:-256}
CNN=fixtures/cnn.onnx
PY=.venv/bin/python
[ -x "$PY" ] || bash .ci/setup-python
[ -f "$MODEL" ] || "$PY" fixtures/generate.py --large "$(dirname "$MODEL")"
cargo build --release -q
BIN=./target/release/onnxq
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
DATA="$MODEL.data"

measure() { # label, command...
  local label=$1; shift
  /usr/bin/time -f "%e %M %U %S" -o "$OUT/time" "$@" >"$OUT/log" 2>&1 || { cat "$OUT/log"; exit 1; }
  read -r secs kb user sys <"$OUT/time"
  awk -v l="$label" -v s="$secs" -v k="$kb" -v u="$user" -v y="$sys" \
    'BEGIN { printf "| %s | %.1f s | %.1f s | %.2f GiB |\n", l, s, u + y, k / 1048576 }'
}
clean() { rm -f "$OUT"/q.onnx* "$OUT"/ort.onnx*; }

"$PY" tests/py/int8_compare.py calib-data "$CNN" "$OUT/calib" "$SAMPLES" >/dev/null
[ -f "$DATA" ] && cat "$DATA" >/dev/null   # page cache, as in baselines.md
# CPU = user + sys seconds: steadier than wall time on a busy machine.
echo "| job | wall | CPU | peak RSS |"
echo "|---|---|---|---|"
for pc in "" "--per-channel"; do
  label=${pc:+per-channel}; label=${label:-per-tensor}
  measure "onnxq dynamic int8 $label, MatMul only ($(basename "$MODEL"))" \
    $BIN quantize "$MODEL" "$OUT/q.onnx" --algorithm dynamic --activations per-tensor --include-op MatMul $pc --no-verify
  clean
  measure "onnxruntime quantize_dynamic int8 $label, MatMul only" \
    "$PY" tests/py/ort_quantize.py dynamic "$MODEL" "$OUT/ort.onnx" --op-types MatMul $pc --external-data
  clean
done
measure "onnxq dynamic int8 defaults: per-token, default ops (MatMul, Gemm, Conv, Gather)" \
  $BIN quantize "$MODEL" "$OUT/q.onnx" --algorithm dynamic --no-verify
clean
measure "onnxq static QDQ MinMax per-tensor, $SAMPLES samples ($(basename "$CNN"))" \
  $BIN quantize "$CNN" "$OUT/q.onnx" --algorithm static --calib "$OUT/calib" --per-channel false --exclude-worst 0 --no-verify
clean
measure "onnxq static QDQ defaults (per-channel, --exclude-worst auto), $SAMPLES samples" \
  $BIN quantize "$CNN" "$OUT/q.onnx" --algorithm static --calib "$OUT/calib" --no-verify
clean
measure "onnxruntime quantize_static QDQ MinMax, $SAMPLES samples" \
  "$PY" tests/py/ort_quantize.py static "$CNN" "$OUT/ort.onnx" --quant-format QDQ \
  --activation-type QInt8 --weight-type QInt8 --calibrate-method MinMax --calib-dir "$OUT/calib"
clean
