# Sourced by the QuaRot benches: the release binary and SmolLM2-135M (tied head,
# decomposed form) converted by perplexity.sh when missing, and ppl() on its eval text.
# Environment: DATA (fixtures/large/smollm2-tied), SKIP_BUILD=1, CARGO_TARGET_DIR.
DATA=${DATA:-fixtures/large/smollm2-tied}
BIN=${CARGO_TARGET_DIR:-target}/release/onnxq
[ "${SKIP_BUILD:-0}" = 1 ] || cargo build --release -q
[ -f "$DATA/model.onnx" ] || FORM=decomposed LM_HEAD=transpose DATA=$DATA ONLY='^$' bash benches/perplexity.sh >/dev/null

ppl() { # model -> perplexity over 8 x 512 tokens of eval.txt, in ONNX Runtime
  "$BIN" eval "$1" --text "$DATA/eval.txt" --tokenizer "$DATA/tokenizer.json" --tokens 4096 \
    --window 512 --stride 512 --runtime ort 2>&1 | awk '/perplexity/ { print $2 }'
}
