#!/usr/bin/env bash
# User-space instructions per upload of a server, counted by callgrind: repeatable to
# about 0.3 % on this noisy shared machine, where MB/s and uploads/s swing 2-5x. Use it
# to A/B a hot-path change (kernel time, e.g. syscalls and page faults, is not counted:
# confirm those with `perf record -e cpu-clock` or bench.run).
#
# Usage: bench/instructions.sh [tusd-py|baseline] [small|parallel] [ROOT]
#   small:    300 uploads of 16 KiB at concurrency 8 (POST + PATCH: the HEADs that
#             verify them are not counted, as the timed phase of a benchmark has none)
#   parallel: 4 x 8 MiB in 1 MiB PATCHes (reported per MiB)
#   ROOT:     a checkout whose tusd_py to run (default: this repository), e.g. a
#             `git archive` of another commit, to compare two trees.
# Needs valgrind (Debian: apt-get install valgrind). Takes about a minute.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
SERVER=${1:-tusd-py}
SCENARIO=${2:-small}
ROOT=${3:-$REPO}
PY=${PYTHON:-$REPO/.venv/bin/python}
command -v valgrind >/dev/null || { echo "valgrind is not installed" >&2; exit 2; }
W=$(mktemp -d -t tusd-instr-XXXXXX)
trap '[ -n "${KEEP_CG:-}" ] && cp "$W/cg.out.1" "$KEEP_CG"; rm -rf "$W"' EXIT
PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$W/data"
if [ "$SERVER" = baseline ]; then
    CMD=("$PY" -m bench.baseline_server --port "$PORT" --data-dir "$W/data")
else
    CMD=("$PY" -m tusd_py serve --host 127.0.0.1 --port "$PORT" --data-dir "$W/data")
fi
(cd "$W" && PYTHONPATH="$ROOT:$REPO" exec valgrind --tool=callgrind --callgrind-out-file="$W/cg.out" \
    --dump-instr=no --instr-atstart=no "${CMD[@]}" > "$W/server.log" 2>&1) &
PID=$!
for _ in $(seq 300); do
    curl -s -o /dev/null -X OPTIONS "http://127.0.0.1:$PORT/files/" && break
    sleep 0.2
done
URL="http://127.0.0.1:$PORT/files/"
LOADGEN=("$PY" -m bench.loadgen "$URL" --repeat 1 --request-timeout 600 --max-seconds 900)
if [ "$SCENARIO" = parallel ]; then
    WARM=(--scenarios parallel --par-count 2 --par-size 2MiB)
    RUN=(--scenarios parallel --par-count 4 --par-size 8MiB --par-chunk 1MiB --cleanup none)
    UNITS=32; UNIT=MiB
else
    WARM=(--scenarios many-small --small-count 50 --small-conc 8)
    RUN=(--scenarios many-small --small-count 300 --small-conc "${SMALL_CONC:-8}" --no-verify)
    UNITS=300; UNIT=upload
fi
"${LOADGEN[@]}" "${WARM[@]}" > /dev/null 2>&1   # imports and caches warm, not counted
callgrind_control -i on "$PID" > /dev/null 2>&1
"${LOADGEN[@]}" "${RUN[@]}" > "$W/run.jsonl" 2>/dev/null
callgrind_control -d "$PID" > /dev/null 2>&1
sleep 1
kill -TERM "$PID"; wait "$PID" 2>/dev/null || true
TOTAL=$(grep -m1 '^summary:' "$W/cg.out.1" | awk '{print $2}')
ERRORS=$(grep '"kind": "run"' "$W/run.jsonl" | "$PY" -c 'import json,sys; print(sum(json.loads(l)["errors"] for l in sys.stdin))')
echo "$SERVER $SCENARIO: $((TOTAL / UNITS)) instructions per $UNIT (errors: $ERRORS)"
