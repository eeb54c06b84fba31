#!/usr/bin/env bash
# Where QuaRot wins and loses on a trained decoder (issue 18): SmolLM2-135M in the tied
# decomposed form (benches/perplexity.sh converts it), symmetric int4 block 32, perplexity
# on 8 x 512 held-out tokens with ONNX Runtime. Three parts:
#   1. RTN vs QuaRot + RTN with only one group of projections quantized (the rest float);
#   2. QuaRot's knobs (damped-channel-ratio, online-hadamard) with RTN;
#   3. the two explanations measured directly: benches/real_decoder/grid_check.py (does
#      the GGUF Q4_1 origin favour unrotated RTN?) and norm_energy.py (do the norms'
#      scales follow their inputs' channel energies, which a rotation throws away?).
# Appends a stamped record to benches/results/quarot_analysis.md.
#
#   bash benches/quarot_analysis.sh
#
# Environment: DATA (fixtures/large/smollm2-tied), SKIP_BUILD=1.
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib/record.sh
PY=.venv/bin/python
[ -x "$PY" ] || bash .ci/setup-python
source benches/lib/smollm2.sh
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

quantize_ppl() { # quantize args... -> perplexity
  rm -f "$OUT"/q.onnx*
  "$BIN" quantize "$DATA/model.onnx" "$OUT/q.onnx" --block-size 32 --no-verify "$@" >"$OUT/log" 2>&1 \
    || { cat "$OUT/log"; exit 1; }
  ppl "$OUT/q.onnx"
}
recipe_ppl() { # damped-channel-ratio, online-hadamard -> perplexity
  sed "s/^online-hadamard = true/online-hadamard = $2\ndamped-channel-ratio = $1/" passes/quarot-int4.toml >"$OUT/r.toml"
  rm -f "$OUT"/q.onnx*
  "$BIN" apply "$OUT/r.toml" "$DATA/model.onnx" "$OUT/q.onnx" --no-verify >"$OUT/log" 2>&1 || { cat "$OUT/log"; exit 1; }
  echo "$(ppl "$OUT/q.onnx") ($(grep -o '[0-9]* residual channels kept out' "$OUT/log" | cut -d' ' -f1) channels kept out)"
}

record_begin quarot_analysis "$@"
emit "Model: $DATA (SmolLM2-135M, tied head); fp32 perplexity $(ppl "$DATA/model.onnx"); sym int4 b32, RTN." ""
emit "1. One group quantized at a time (the others and the head float):" "" \
  "| quantized | RTN | QuaRot + RTN |" "|---|---|---|"
part() { # label, --exclude patterns
  emit "| $1 | $(quantize_ppl --algorithm rtn --tied-head separate --exclude "$2") | $(quantize_ppl --algorithm quarot,rtn --tied-head separate --exclude "$2") |"
}
emit "| all (head: the shared 8-bit table) | $(quantize_ppl --algorithm rtn) | $(quantize_ppl --algorithm quarot,rtn) |"
part "attention q/k/v/o" "*mlp*,*lm_head*"
part "v/o only" "*mlp*,*q_proj*,*k_proj*,*lm_head*"
part "MLP gate/up/down" "*self_attn*,*lm_head*"
part "down_proj only" "*self_attn*,*gate_proj*,*up_proj*,*lm_head*"
emit "" "2. QuaRot's knobs, everything quantized (the first row is the default):" "" \
  "| damped-channel-ratio | online Hadamard | QuaRot + RTN |" "|---|---|---|"
for v in "0.01 true" "0.01 false" "0.1 true" "0.3 true"; do
  set -- $v
  emit "| $1 | $2 | $(recipe_ppl "$1" "$2") |"
done
emit "" "3. grid_check.py (RTN's relative weight error, unrotated vs rotated):" "" "$("$PY" benches/real_decoder/grid_check.py)" \
  "" "norm_energy.py:" "" '```' "$("$PY" benches/real_decoder/norm_energy.py "$DATA")" '```'
record_end
