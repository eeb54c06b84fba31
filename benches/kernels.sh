#!/usr/bin/env bash
# Throughput of the numeric kernels (benches/quant_kernels.rs) on one 2048x5632 f32
# matrix, no model and no I/O. Prints a stamped record and appends it to
# benches/results/kernels.md.
#
#   bash benches/kernels.sh
#
# Environment: ONNXQ_BENCH_REPS (default 5), ONNXQ_BENCH_ONLY=SUBSTRING (one kernel group).
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib/record.sh
OUT=$(mktemp)
trap 'rm -f "$OUT"' EXIT
RECORD_ENV="ONNXQ_BENCH_REPS=${ONNXQ_BENCH_REPS:-5} ONNXQ_BENCH_ONLY='${ONNXQ_BENCH_ONLY:-}'"
cargo bench -q --bench quant_kernels >"$OUT"
record_begin kernels "$@"
# The bench prints fixed-width columns: keep them as a code block.
emit '```' "$(cat "$OUT")" '```'
record_end
