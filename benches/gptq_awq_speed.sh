#!/usr/bin/env bash
# GPTQ and AWQ on the generated TinyLlama-shaped decoder (1.1 B parameters, 4.4 GB fp32
# external data) with 32 x 512 calibration tokens (issue 16 item 6), and GPTQ's time
# before and after faer in the same run (issue 23): the "before" binary is built with
# the bench-only feature `bench-linalg-baseline`, which swaps in the hand-written
# factorization faer replaced (benches/baseline/linalg.rs); everything else is the same
# code. Wall, CPU (user+sys) and peak RSS from GNU time; appends a stamped record to
# benches/results/gptq_awq_speed.md.
#
#   bash benches/gptq_awq_speed.sh [MODEL]   (default fixtures/large/model.onnx; generated if missing)
#
# Goals (issue 16): GPTQ <= 10 min, AWQ <= 5 min, peak RSS <= 3 GiB, on 2 cores.
# Environment: SKIP_BUILD=1 uses existing binaries; SAMPLES (32), SEQLEN (512);
# ONLY=gptq,baseline (a comma list of gptq, baseline, awq) runs only those jobs.
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib/record.sh
MODEL=${1:-fixtures/large/model.onnx}
PY=.venv/bin/python
TARGET=${CARGO_TARGET_DIR:-target}
BIN=$TARGET/release/onnxq
BASE_BIN=$TARGET/release/onnxq-linalg-baseline
SAMPLES=${SAMPLES:-32}
SEQLEN=${SEQLEN:-512}
ONLY=${ONLY:-}
[ -x "$PY" ] || bash .ci/setup-python
[ -f "$MODEL" ] || "$PY" fixtures/generate.py --large "$(dirname "$MODEL")"
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  # The feature changes only onnxq itself, so the dependencies are built once.
  cargo build --release -q --features bench-linalg-baseline
  cp "$BIN" "$BASE_BIN"
  cargo build --release -q
fi
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
DATA="$MODEL.data"

declare -A WALL CPU
measure() { # key, label, binary, algorithm
  local key=$1 label=$2 bin=$3 algo=$4
  rm -f "$OUT"/q.onnx*
  /usr/bin/time -f "%e %M %U %S" -o "$OUT/time" "$bin" quantize "$MODEL" "$OUT/q.onnx" \
    --algorithm "$algo" --calib-samples "$SAMPLES" --calib-seqlen "$SEQLEN" --runtime ort \
    --no-verify >"$OUT/$key.log" 2>&1 || { cat "$OUT/$key.log"; exit 1; }
  read -r secs kb user sys <"$OUT/time"
  WALL[$key]=$secs
  CPU[$key]=$(awk -v u="$user" -v y="$sys" 'BEGIN { print u + y }')
  emit "$(awk -v l="$label" -v s="$secs" -v u="$user" -v y="$sys" -v k="$kb" \
    'BEGIN { printf "| %s | %.0f s (%.1f min) | %.0f s | %.2f GiB |\n", l, s, s / 60, u + y, k / 1048576 }')"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
want() { [ -z "$ONLY" ] || [[ ",$ONLY," == *",$1,"* ]]; }

cat "$DATA" >/dev/null # in page cache before the first job, for every job alike
record_begin gptq_awq_speed "$@"
emit "Model: $MODEL ($(du -b "$DATA" | awk '{ printf "%.1f GB", $1 / 1e9 }') external data); $SAMPLES x $SEQLEN seeded calibration tokens; ONNX Runtime runs the pieces; --no-verify." ""
emit "| job | wall | CPU (user+sys) | peak RSS |" "|---|---|---|---|"
want gptq && measure gptq "GPTQ (faer factorization, the release)" "$BIN" gptq
want baseline && measure baseline "GPTQ, hand-written factorization (before faer)" "$BASE_BIN" gptq
want awq && measure awq "AWQ" "$BIN" awq
emit ""
if [ -n "${WALL[gptq]:-}" ] && [ -n "${WALL[baseline]:-}" ]; then
  emit "- GPTQ faer / hand-written: wall $(ratio "${WALL[gptq]}" "${WALL[baseline]}")x, CPU $(ratio "${CPU[gptq]}" "${CPU[baseline]}")x"
fi
emit "- goals: GPTQ <= 600 s wall, AWQ <= 300 s wall, peak RSS <= 3 GiB (2 cores; the load averages say how busy the machine was)"
record_end
