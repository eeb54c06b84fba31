#!/usr/bin/env bash
# Larger than memory: quantizes the generated TinyLlama-shaped decoder (4.4 GB fp32
# external data) with RTN int4 and dynamic int8 once without a limit and once inside a
# 1 GiB memory cgroup, and checks that both runs write byte-identical files. Prints a
# stamped record (wall, CPU, peak RSS, the cgroup's peak usage and failcnt, the sha256
# of each output) and appends it to benches/results/memory_limit.md; a mismatch or a
# failed limited run fails the script (and appends nothing).
#
#   bash benches/memory_limit.sh [MODEL]      (default fixtures/large/model.onnx; generated if missing)
#
# The limit is a real memory cgroup: cgroup v2 (memory.max) when mounted, else cgroup
# v1 (memory.limit_in_bytes, page cache counted too, as v2 does), else systemd-run
# --scope -p MemoryMax. Needs root (or a delegated cgroup). Without any of them the
# script refuses: an address-space limit (ulimit -v, prlimit --as) is no stand-in,
# since mapping the 4.4 GB weights read-only is itself over 1 GiB of address space.
#
# Environment: LIMIT_MIB (default 1024); SKIP_BUILD=1 uses the existing release binary;
# ONNXQ_BIN=PATH runs that binary instead (e.g. the test profile's target/debug/onnxq,
# when no release build is at hand; the record names it).
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib/record.sh
MODEL=${1:-fixtures/large/model.onnx}
LIMIT_MIB=${LIMIT_MIB:-1024}
PY=.venv/bin/python
BIN=${ONNXQ_BIN:-${CARGO_TARGET_DIR:-target}/release/onnxq}
[ -x "$PY" ] || bash .ci/setup-python
[ -f "$MODEL" ] || "$PY" fixtures/generate.py --large "$(dirname "$MODEL")"
if [ -z "${ONNXQ_BIN:-}" ] && [ "${SKIP_BUILD:-0}" != 1 ]; then cargo build --release -q; fi
OUT=$(mktemp -d)
CG=
cleanup() {
  rm -rf "$OUT"
  if [ -n "$CG" ] && [ -d "$CG" ]; then rmdir "$CG" 2>/dev/null || true; fi
}
trap cleanup EXIT
LIMIT_BYTES=$((LIMIT_MIB * 1048576))

# LIMITED: a command prefix that runs its arguments inside the limit; LIMIT_KIND says
# which; peak and failcnt read the cgroup's counters after a run.
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
  LIMIT_KIND="cgroup v2 memory.max"
  CG=/sys/fs/cgroup/onnxq-memory-limit-$$
  mkdir "$CG"
  echo "$LIMIT_BYTES" >"$CG/memory.max"
  echo 0 >"$CG/memory.swap.max" 2>/dev/null || true
  LIMITED=(bash -c 'echo $$ >"$0/cgroup.procs" && exec "$@"' "$CG")
  peak() { cat "$CG/memory.peak" 2>/dev/null || echo "?"; }
  failcnt() { awk '/^max / { print $2 }' "$CG/memory.events"; }
elif [ -d /sys/fs/cgroup/memory ] && mkdir /sys/fs/cgroup/memory/onnxq-memory-limit-$$ 2>/dev/null; then
  LIMIT_KIND="cgroup v1 memory.limit_in_bytes"
  CG=/sys/fs/cgroup/memory/onnxq-memory-limit-$$
  echo "$LIMIT_BYTES" >"$CG/memory.limit_in_bytes"
  echo "$LIMIT_BYTES" >"$CG/memory.memsw.limit_in_bytes" 2>/dev/null || true
  LIMITED=(bash -c 'echo $$ >"$0/cgroup.procs" && exec "$@"' "$CG")
  peak() { cat "$CG/memory.max_usage_in_bytes"; }
  failcnt() { cat "$CG/memory.failcnt"; }
elif systemd-run --scope -q -p MemoryMax=1G true 2>/dev/null; then
  LIMIT_KIND="systemd-run --scope -p MemoryMax"
  LIMITED=(systemd-run --scope -q -p "MemoryMax=$LIMIT_BYTES" -p MemorySwapMax=0)
  peak() { echo "?"; }
  failcnt() { echo "?"; }
else
  echo "no memory cgroup available (cgroup v2, v1 or systemd-run); an address-space limit cannot stand in" >&2
  exit 1
fi

declare -A SHA
run() { # key, label, limited|unlimited, quantize args...
  local key=$1 label=$2 mode=$3
  shift 3
  rm -rf "$OUT/$key" && mkdir "$OUT/$key"
  if [ "$mode" = limited ]; then
    [ -n "$CG" ] && [ -f "$CG/memory.max_usage_in_bytes" ] && echo 0 >"$CG/memory.max_usage_in_bytes"
    [ -n "$CG" ] && [ -f "$CG/memory.failcnt" ] && echo 0 >"$CG/memory.failcnt"
    /usr/bin/time -f "%e %M %U %S" -o "$OUT/time" "${LIMITED[@]}" "$BIN" quantize "$MODEL" "$OUT/$key/q.onnx" --no-verify "$@" \
      >"$OUT/log" 2>&1 || { cat "$OUT/log"; echo "the limited run failed (killed by the limit?)" >&2; exit 1; }
  else
    /usr/bin/time -f "%e %M %U %S" -o "$OUT/time" "$BIN" quantize "$MODEL" "$OUT/$key/q.onnx" --no-verify "$@" \
      >"$OUT/log" 2>&1 || { cat "$OUT/log"; exit 1; }
  fi
  read -r secs kb user sys <"$OUT/time"
  SHA[$key]=$(cd "$OUT/$key" && sha256sum $(ls | sort) | sha256sum | cut -c1-16)
  local files
  files=$(cd "$OUT/$key" && ls | sort | while read -r f; do printf '%s %s; ' "$f" "$(du -b "$f" | awk '{ printf "%.2f GB", $1 / 1e9 }')"; done)
  local cg="-" fc="-"
  if [ "$mode" = limited ]; then
    cg=$(peak | awk '{ if ($1 ~ /^[0-9]+$/) printf "%.2f GiB", $1 / 1073741824; else print $1 }')
    fc=$(failcnt)
  fi
  emit "$(awk -v l="$label" -v s="$secs" -v u="$user" -v y="$sys" -v k="$kb" -v c="$cg" -v f="$fc" -v h="${SHA[$key]}" -v o="$files" \
    'BEGIN { printf "| %s | %.1f s | %.1f s | %.2f GiB | %s | %s | %s | %s |\n", l, s, u + y, k / 1048576, c, f, o, h }')"
}

compare() { # unlimited key, limited key, what
  if [ "${SHA[$1]}" = "${SHA[$2]}" ]; then
    emit "- $3: the ${LIMIT_MIB} MiB run wrote byte-identical files (sha256 of the file list ${SHA[$1]})"
  else
    emit "- $3: the outputs DIFFER (${SHA[$1]} vs ${SHA[$2]})"
    exit 1
  fi
}

cat "$MODEL.data" >/dev/null # same page-cache state for the first run as for the others
RECORD_ENV="LIMIT_MIB=$LIMIT_MIB${ONNXQ_BIN:+ ONNXQ_BIN=$ONNXQ_BIN}" record_begin memory_limit "$@"
emit "Model: $MODEL ($(du -b "$MODEL.data" | awk '{ printf "%.1f GB", $1 / 1e9 }') external data). Limit: $LIMIT_MIB MiB, $LIMIT_KIND. Binary: $BIN." ""
emit "| run | wall | CPU (user+sys) | peak RSS | cgroup peak | limit hits | files | sha256 |" "|---|---|---|---|---|---|---|---|"
run rtn "RTN int4 sym b32, no limit" unlimited
run rtn_lim "RTN int4 sym b32, ${LIMIT_MIB} MiB" limited
rm -rf "$OUT/rtn" "$OUT/rtn_lim"
run dyn "dynamic int8, no limit" unlimited --algorithm dynamic
run dyn_lim "dynamic int8, ${LIMIT_MIB} MiB" limited --algorithm dynamic
rm -rf "$OUT/dyn" "$OUT/dyn_lim"
emit ""
compare rtn rtn_lim "RTN int4"
compare dyn dyn_lim "dynamic int8"
emit "- the cgroup counts page cache as well as anonymous memory; the kernel reclaims clean file pages at the limit, so the peak sits near the limit while peak RSS shows what the process itself held"
record_end
