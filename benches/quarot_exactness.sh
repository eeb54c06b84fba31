#!/usr/bin/env bash
# QuaRot keeps the float function on a trained decoder (issue 18, item 5): SmolLM2-135M
# in the tied decomposed form (benches/perplexity.sh converts it) rotated by
# `onnxq rotate`, compared with the original by `onnxq verify` in ONNX Runtime (logits on
# seeded random tokens) and by perplexity on 8 x 512 held-out tokens.
# Appends a stamped record to benches/results/quarot_exactness.md.
#
#   bash benches/quarot_exactness.sh
#
# Environment: DATA (fixtures/large/smollm2-tied), SEEDS ("0 1 2"), SKIP_BUILD=1.
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib/record.sh
source benches/lib/smollm2.sh
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

record_begin quarot_exactness "$@"
emit "Model: $DATA (SmolLM2-135M, tied head); fp32 perplexity $(ppl "$DATA/model.onnx")." "" \
  "| rotation seed | logits max-abs | logits rel-L2 | top-1 agreement | perplexity |" "|---|---|---|---|---|"
for seed in ${SEEDS:-0 1 2}; do
  rm -f "$OUT"/r.onnx*
  "$BIN" rotate "$DATA/model.onnx" "$OUT/r.onnx" --seed "$seed" --no-verify >"$OUT/log" 2>&1 \
    || { cat "$OUT/log"; exit 1; }
  row=$("$BIN" verify "$DATA/model.onnx" "$OUT/r.onnx" --runtime ort --samples 2 2>&1 | awk '$1 == "logits" { print $5, $7, $10 }')
  set -- $row
  emit "| $seed | $1 | $2 | $3 | $(ppl "$OUT/r.onnx") |"
done
emit "" "onnxq verify: 2 samples of 16 seeded random tokens, ONNX Runtime; rel-L2 is ‖Δ‖/‖logits‖." \
  "The seed only flips the signs of Q's columns, which floating point carries exactly, so the" \
  "float rows agree bit for bit; seeds matter once the weights are rounded."
record_end
