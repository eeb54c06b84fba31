#!/usr/bin/env bash
# GPTQ's inverse Hessian factor before (hand-written blocked Cholesky + triangular
# inverse, benches/baseline/linalg.rs) and after (faer, src/quant/linalg.rs), on the
# K×K sizes GPTQ meets in a 1.1B decoder (2048: attention and gate/up inputs; 5632:
# down_proj's input). One process per run, so each peak RSS is its own. Appends a
# stamped record with the after/before time ratio to benches/results/linalg.md.
#
#   bash benches/linalg.sh            # K = 2048 5632
#   bash benches/linalg.sh 1024       # other sizes
#
# Environment: ONNXQ_BENCH_REPS (default 3).
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib/record.sh
SIZES=("${@:-2048}")
[ $# -gt 0 ] || SIZES=(2048 5632)
RECORD_ENV="ONNXQ_BENCH_REPS=${ONNXQ_BENCH_REPS:-3}"
cargo bench -q --bench linalg --no-run 2>/dev/null
bench() { ONNXQ_LINALG=$1 ONNXQ_LINALG_K=$2 cargo bench -q --bench linalg 2>/dev/null; }
LINES=()
for k in "${SIZES[@]}"; do
  base=$(bench baseline "$k")
  new=$(bench faer "$k")
  cmp=$(bench compare "$k")
  tb=$(sed -n 's/.* best *\([0-9.]*\) s .*/\1/p' <<<"$base")
  tn=$(sed -n 's/.* best *\([0-9.]*\) s .*/\1/p' <<<"$new")
  mb=$(sed -n 's/.*the factorization *\([0-9]*\) MiB.*/\1/p' <<<"$base")
  mn=$(sed -n 's/.*the factorization *\([0-9]*\) MiB.*/\1/p' <<<"$new")
  LINES+=("$base" "$new" "$cmp"
    "K=$k faer/baseline: time $(awk -v a="$tn" -v b="$tb" 'BEGIN { printf "%.2f", a / b }'), factorization memory ${mn}/${mb} MiB"
    "")
done
record_begin linalg "$@"
emit '```' "${LINES[@]}" '```'
record_end
