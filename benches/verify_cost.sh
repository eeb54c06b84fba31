#!/usr/bin/env bash
# What the self-check of `onnxq quantize` costs on the generated TinyLlama-shaped decoder
# (1.1 B parameters, 4.4 GB fp32 external data): default RTN int4 with the check on,
# side by side with --no-verify, and the full two-model comparison (`onnxq verify`) the
# check replaced. Wall time, CPU time (user+sys) and peak RSS from GNU time. Prints a
# stamped markdown record and appends it to benches/results/verify_cost.md.
#
#   bash benches/verify_cost.sh [MODEL]   (default fixtures/large/model.onnx; generated if missing)
#
# Goals (issue 15): check on <= 2x the --no-verify wall time, peak RSS <= 1.5 GiB.
# Environment: SKIP_BUILD=1 uses the existing release binary; RUNTIME (default ort).
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib/record.sh
MODEL=${1:-fixtures/large/model.onnx}
PY=.venv/bin/python
BIN=${CARGO_TARGET_DIR:-target}/release/onnxq
RUNTIME=${RUNTIME:-ort}
[ -x "$PY" ] || bash .ci/setup-python
[ -f "$MODEL" ] || "$PY" fixtures/generate.py --large "$(dirname "$MODEL")"
if [ "${SKIP_BUILD:-0}" != 1 ]; then cargo build --release -q; fi
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
DATA="$MODEL.data"

declare -A WALL RSS CPU
measure() { # key, label, command...
  local key=$1 label=$2
  shift 2
  /usr/bin/time -f "%e %M %U %S" -o "$OUT/time" "$@" >"$OUT/$key.log" 2>&1 || { cat "$OUT/$key.log"; exit 1; }
  read -r secs kb user sys <"$OUT/time"
  WALL[$key]=$secs
  RSS[$key]=$kb
  CPU[$key]=$(awk -v u="$user" -v y="$sys" 'BEGIN { print u + y }')
  emit "$(awk -v l="$label" -v s="$secs" -v u="$user" -v y="$sys" -v k="$kb" \
    'BEGIN { printf "| %s | %.1f s | %.1f s | %.2f GiB |\n", l, s, u + y, k / 1048576 }')"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

cat "$DATA" >/dev/null # in page cache before the first job, for every job alike
record_begin verify_cost "$@"
emit "Model: $MODEL ($(du -b "$DATA" | awk '{ printf "%.1f GB", $1 / 1e9 }') external data, in page cache); runtime $RUNTIME." ""
emit "| job | wall | CPU (user+sys) | peak RSS |" "|---|---|---|---|"
measure off "quantize --no-verify (RTN int4)" "$BIN" quantize "$MODEL" "$OUT/q.onnx" --no-verify
rm -f "$OUT"/q.onnx*
measure on "quantize, self-check on (default)" "$BIN" quantize "$MODEL" "$OUT/q.onnx" --runtime "$RUNTIME" --verify required --report "$OUT/on.json"
"$PY" -c 'import json, sys; print(json.dumps(json.load(open(sys.argv[1]))["verify"]["layers"]["seconds"]))' "$OUT/on.json" >"$OUT/on.seconds"
measure full "onnxq verify MODEL OUTPUT (both whole models, prefill + decode step)" "$BIN" verify "$MODEL" "$OUT/q.onnx" --runtime "$RUNTIME"
emit "" \
  "- check on / --no-verify: wall $(ratio "${WALL[on]}" "${WALL[off]}")x, CPU $(ratio "${CPU[on]}" "${CPU[off]}")x (goal <= 2x; the machine is shared, so CPU time is the fairer figure), peak RSS $(awk -v k="${RSS[on]}" 'BEGIN { printf "%.2f GiB", k / 1048576 }') (goal <= 1.5 GiB)" \
  "- self-check / full comparison: wall $(ratio "$(awk -v a="${WALL[on]}" -v b="${WALL[off]}" 'BEGIN { print a - b }')" "${WALL[full]}")x (check time alone), peak RSS $(ratio "${RSS[on]}" "${RSS[full]}")x" \
  "" "Self-check summary of the 'on' run:" "" '```'
while IFS= read -r line; do emit "$line"; done < <(grep -E "^(layer check|  |hint|note|logits|output )" "$OUT/on.log" | head -n 20)
emit '```'
emit "" "Self-check steps of the 'on' run, seconds (JSON report, verify.layers.seconds): $(cat "$OUT/on.seconds")"
record_end
