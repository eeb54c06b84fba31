#!/usr/bin/env bash
# Side-by-side 8-bit benchmark, onnxq vs onnxruntime's Python tools, one after another in
# one run: wall time, CPU time (user+sys) and peak RSS from GNU time. Prints a stamped
# markdown record and appends it to benches/results/int8.md.
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
# Environment: SKIP_BUILD=1 uses the existing release binary.
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib/record.sh
MODEL=${1:-fixtures/large/model.onnx}
SAMPLES=${2:-256}
CNN=fixtures/cnn.onnx
PY=.venv/bin/python
[ -x "$PY" ] || bash .ci/setup-python
[ -f "$MODEL" ] || "$PY" fixtures/generate.py --large "$(dirname "$MODEL")"
if [ "${SKIP_BUILD:-0}" != 1 ]; then cargo build --release -q; fi
BIN=${CARGO_TARGET_DIR:-target}/release/onnxq
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
DATA="$MODEL.data"

declare -A CPU RSS
measure() { # key, label, command...
  local key=$1 label=$2
  shift 2
  /usr/bin/time -f "%e %M %U %S" -o "$OUT/time" "$@" >"$OUT/log" 2>&1 || { cat "$OUT/log"; exit 1; }
  read -r secs kb user sys <"$OUT/time"
  CPU[$key]=$(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.1f", u + s }')
  RSS[$key]=$kb
  emit "$(awk -v l="$label" -v s="$secs" -v c="${CPU[$key]}" -v k="$kb" \
    'BEGIN { printf "| %s | %.1f s | %.1f s | %.2f GiB |\n", l, s, c, k / 1048576 }')"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", a / b }'; }
clean() { rm -f "$OUT"/q.onnx* "$OUT"/ort.onnx*; }

"$PY" tests/py/int8_compare.py calib-data "$CNN" "$OUT/calib" "$SAMPLES" >/dev/null
[ -f "$DATA" ] && cat "$DATA" >/dev/null   # page cache, as in baselines.md
record_begin int8 "$@"
# CPU = user + sys seconds: steadier than wall time on a busy machine.
emit "| job | wall | CPU (user+sys) | peak RSS |" "|---|---|---|---|"
for pc in "" "--per-channel"; do
  label=${pc:+per-channel}; label=${label:-per-tensor}
  measure "onnxq-dyn-$label" "onnxq dynamic int8 $label, MatMul only ($(basename "$MODEL"))" \
    $BIN quantize "$MODEL" "$OUT/q.onnx" --algorithm dynamic --activations per-tensor --include-op MatMul $pc --no-verify
  clean
  measure "ort-dyn-$label" "onnxruntime quantize_dynamic int8 $label, MatMul only" \
    "$PY" tests/py/ort_quantize.py dynamic "$MODEL" "$OUT/ort.onnx" --op-types MatMul $pc --external-data
  clean
done
measure onnxq-dyn-defaults "onnxq dynamic int8 defaults: per-token, default ops (MatMul, Gemm, Conv, Gather)" \
  $BIN quantize "$MODEL" "$OUT/q.onnx" --algorithm dynamic --no-verify
clean
measure onnxq-static "onnxq static QDQ MinMax per-tensor, $SAMPLES samples ($(basename "$CNN"))" \
  $BIN quantize "$CNN" "$OUT/q.onnx" --algorithm static --calib "$OUT/calib" --per-channel false --exclude-worst 0 --no-verify
clean
measure onnxq-static-defaults "onnxq static QDQ defaults (per-channel, --exclude-worst auto), $SAMPLES samples" \
  $BIN quantize "$CNN" "$OUT/q.onnx" --algorithm static --calib "$OUT/calib" --no-verify
clean
measure ort-static "onnxruntime quantize_static QDQ MinMax, $SAMPLES samples" \
  "$PY" tests/py/ort_quantize.py static "$CNN" "$OUT/ort.onnx" --quant-format QDQ \
  --activation-type QInt8 --weight-type QInt8 --calibrate-method MinMax --calib-dir "$OUT/calib"
clean
emit "" \
  "- dynamic per-tensor, MatMul only, onnxruntime / onnxq: CPU $(ratio "${CPU[ort-dyn-per-tensor]}" "${CPU[onnxq-dyn-per-tensor]}")x, peak RSS $(ratio "${RSS[ort-dyn-per-tensor]}" "${RSS[onnxq-dyn-per-tensor]}")x" \
  "- dynamic per-channel, MatMul only, onnxruntime / onnxq: CPU $(ratio "${CPU[ort-dyn-per-channel]}" "${CPU[onnxq-dyn-per-channel]}")x, peak RSS $(ratio "${RSS[ort-dyn-per-channel]}" "${RSS[onnxq-dyn-per-channel]}")x" \
  "- wall times depend on what else runs on the machine (see the load averages); CPU time and peak RSS do much less"
record_end
