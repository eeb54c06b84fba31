# Stamped benchmark records, sourced by the scripts in benches/.
#
#   record_begin NAME "$@"   start a record: header with date, machine, onnxq commit,
#                            command line and load average
#   emit LINE...             print a line and add it to the record
#   record_end               close the record (load average again) and append it to
#                            benches/results/NAME.md
#
# A script that fails before record_end appends nothing, so benches/results/ only holds
# complete runs. README cites a record by file and date.

RECORD_NAME=
RECORD_FILE=

record_begin() {
  RECORD_NAME=$1
  shift
  RECORD_FILE=$(mktemp)
  local cpu mem commit dirty=""
  cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
  mem=$(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
  commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
  # Uncommitted changes to what builds or runs the benchmark make the commit an
  # approximation: say so.
  if [ -n "$(git status --porcelain --untracked-files=no -- src benches Cargo.toml Cargo.lock build.rs \
    proto passes fixtures tests/py ':!benches/results' 2>/dev/null)" ]; then
    dirty=" (with uncommitted changes)"
  fi
  {
    echo
    echo "## $RECORD_NAME, $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "- machine: $(nproc) cores, $cpu, $mem RAM, $(uname -sm)"
    echo "- onnxq commit: $commit$dirty"
    echo "- command: \`bash benches/$RECORD_NAME.sh${*:+$(printf ' %q' "$@")}\`${RECORD_ENV:+ with $RECORD_ENV}"
    echo "- load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo
  } | tee -a "$RECORD_FILE"
}

emit() {
  printf '%s\n' "$@" | tee -a "$RECORD_FILE"
}

record_end() {
  emit "" "- load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
  mkdir -p benches/results
  local out=benches/results/$RECORD_NAME.md
  [ -f "$out" ] || printf '# benches/%s.sh records\n\nAppended by each complete run, newest last.\n' "$RECORD_NAME" >"$out"
  cat "$RECORD_FILE" >>"$out"
  rm -f "$RECORD_FILE"
  echo "record appended to $out" >&2
}
