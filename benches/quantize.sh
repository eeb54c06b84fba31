#!/usr/bin/env bash
# Side-by-side benchmark on the generated TinyLlama-shaped model (1.1 B parameters, 4.4 GB
# fp32 external data): onnxq's 4-bit weight-only quantizers and load+save vs onnxruntime's
# MatMulNBitsQuantizer and Python onnx, one after another in one run. Wall time, CPU time
# (user+sys) and peak RSS from GNU time. Prints a stamped markdown record and appends it
# to benches/results/quantize.md.
#
#   bash benches/quantize.sh [MODEL]      (default fixtures/large/model.onnx; generated if missing)
#
# Environment: SKIP_BUILD=1 uses the existing release binary.
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib/record.sh
MODEL=${1:-fixtures/large/model.onnx}
PY=.venv/bin/python
BIN=${CARGO_TARGET_DIR:-target}/release/onnxq
[ -x "$PY" ] || bash .ci/setup-python
[ -f "$MODEL" ] || "$PY" fixtures/generate.py --large "$(dirname "$MODEL")"
if [ "${SKIP_BUILD:-0}" != 1 ]; then cargo build --release -q; fi
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
DATA="$MODEL.data"

declare -A WALL CPU RSS
measure() { # key, label, command...
  local key=$1 label=$2
  shift 2
  /usr/bin/time -f "%e %M %U %S" -o "$OUT/time" "$@" >"$OUT/log" 2>&1 || { cat "$OUT/log"; exit 1; }
  read -r secs kb user sys <"$OUT/time"
  WALL[$key]=$secs
  CPU[$key]=$(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.1f", u + s }')
  RSS[$key]=$kb
  emit "$(awk -v l="$label" -v s="$secs" -v c="${CPU[$key]}" -v k="$kb" \
    'BEGIN { printf "| %s | %.1f s | %.1f s | %.2f GiB |\n", l, s, c, k / 1048576 }')"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", a / b }'; }
percent() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f%%", 100 * a / b }'; }

cat "$DATA" >/dev/null # in page cache before the first job, for every job alike
record_begin quantize "$@"
emit "Model: $MODEL ($(du -b "$DATA" | awk '{ printf "%.1f GB", $1 / 1e9 }') external data, in page cache)." ""
emit "| job | wall | CPU (user+sys) | peak RSS |" "|---|---|---|---|"
measure floor "I/O floor: read the weights once + write 0.9 GB (synced)" bash -c \
  "cat '$DATA' >/dev/null && head -c 909000000 /dev/zero >'$OUT/floor.bin' && sync '$OUT/floor.bin'"
rm -f "$OUT/floor.bin"
measure rtn "onnxq RTN int4 sym b32 (quantize --no-verify)" "$BIN" quantize "$MODEL" "$OUT/q.onnx" --no-verify
rm -f "$OUT"/q.onnx*
measure ort "onnxruntime MatMulNBitsQuantizer RTN int4 sym b32" "$PY" -m onnxruntime.quantization.matmul_nbits_quantizer \
  --input_model "$MODEL" --output_model "$OUT/ort.onnx" --block_size 32 --symmetric True --quant_method default
rm -f "$OUT"/ort.onnx*
measure emb "onnxq RTN int4 sym b32 --embeddings" "$BIN" quantize "$MODEL" "$OUT/q.onnx" --no-verify --embeddings
rm -f "$OUT"/q.onnx*
measure asym "onnxq RTN int4 asym b32" "$BIN" quantize "$MODEL" "$OUT/q.onnx" --no-verify --asymmetric
rm -f "$OUT"/q.onnx*
measure hqq "onnxq HQQ int4 b32 (integer zero points)" "$BIN" quantize "$MODEL" "$OUT/q.onnx" --no-verify --algorithm hqq
rm -f "$OUT"/q.onnx*
measure convert "onnxq convert (load + save, keep layout)" "$BIN" convert "$MODEL" "$OUT/c.onnx"
rm -f "$OUT"/c.onnx*
measure pyonnx "Python onnx.load + onnx.save (external data)" "$PY" -c \
  "import onnx,sys; m=onnx.load(sys.argv[1]); onnx.save(m, sys.argv[2], save_as_external_data=True, location='c.onnx.data')" \
  "$MODEL" "$OUT/c.onnx"
rm -f "$OUT"/c.onnx*
emit "" \
  "- RTN int4 sym b32, onnxruntime / onnxq: wall $(ratio "${WALL[ort]}" "${WALL[rtn]}")x, CPU $(ratio "${CPU[ort]}" "${CPU[rtn]}")x, peak RSS $(ratio "${RSS[ort]}" "${RSS[rtn]}")x" \
  "- onnxq RTN int4 sym b32 wall / I/O floor wall: $(ratio "${WALL[rtn]}" "${WALL[floor]}")x" \
  "- load + save, Python onnx / onnxq convert: wall $(ratio "${WALL[pyonnx]}" "${WALL[convert]}")x, CPU $(ratio "${CPU[pyonnx]}" "${CPU[convert]}")x; onnxq's peak RSS is $(percent "${RSS[convert]}" "${RSS[pyonnx]}") of Python's" \
  "- wall times depend on what else runs on the machine (see the load averages); CPU time and peak RSS do much less"
record_end
