#!/usr/bin/env bash
# Run the team's shared yardstick (../shared/bench/tusbench.py against
# ../shared/bench/baseline_aiohttp.py and then against tusd-py), one server at a time,
# for comparison with our own `python -m bench.run`.
#
# Usage: bench/compare_shared.sh [tusbench args...]   (default: --repeat 3)
# Env:   SHARED_BENCH=dir (default: ../shared/bench from the repo root)
#        OUT=dir for JSON lines and server logs (default: a temp dir, kept)
#        TUSD_* variables are passed to tusd-py (e.g. TUSD_STORAGE__FSYNC=true).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-$ROOT/.venv/bin/python}
SHARED=${SHARED_BENCH:-$ROOT/../shared/bench}
if [ ! -f "$SHARED/tusbench.py" ] || [ ! -f "$SHARED/baseline_aiohttp.py" ]; then
    echo "shared yardstick not found in $SHARED (set SHARED_BENCH)" >&2
    exit 2
fi
OUT=${OUT:-$(mktemp -d -t tusd-shared-bench-XXXXXX)}
mkdir -p "$OUT"
ARGS=("$@")
[ ${#ARGS[@]} -eq 0 ] && ARGS=(--repeat 3)

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_up() {  # url pid
    for _ in $(seq 1 300); do
        kill -0 "$2" 2>/dev/null || { echo "server $2 exited" >&2; return 1; }
        "$PY" -c 'import sys,urllib.request as u; u.urlopen(sys.argv[1], timeout=1)' "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "server did not come up: $1" >&2
    return 1
}
SERVER_PID=
stop_server() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID"
        wait "$SERVER_PID" || true
    fi
    SERVER_PID=
}
trap stop_server EXIT

run_one() {  # label url
    "$PY" "$SHARED/tusbench.py" "$2" --pid "$SERVER_PID" --label "$1" \
        --json-out "$OUT/results.jsonl" "${ARGS[@]}" > /dev/null 2> "$OUT/$1.table"
    cat "$OUT/$1.table"
}

# Page cache: tusbench keeps every upload, so each server's run fills ~3.5 GB of page
# cache. On this VM a page the guest never touched costs a host fault on first write
# (measured: tusd-py's big run 616 MB/s on recycled pages, 231-290 MB/s on fresh ones),
# so whichever server runs second would be billed for it. Both get recycled pages:
# 4 GiB are written and freed first, and the baseline's large uploads are deleted
# before tusd-py starts (only large files: deleting thousands of small ones would slow
# tusd-py's file creations, see below). `sync` before each server: no writeback
# backlog from the one before.
warm_pages() {  # dir
    dd if=/dev/zero of="$1/warm" bs=8M count=512 status=none
    rm -f "$1/warm"
    sync
}
warm_pages "$OUT"
# One directory for both servers' upload files (tusd-py's uploads/ is a symlink to the
# baseline's data dir), and file creation in it at its normal speed (bench/fs_settle.py).
mkdir -p "$OUT/baseline-data" "$OUT/tusd-data"
ln -s "$OUT/baseline-data" "$OUT/tusd-data/uploads"
(cd "$ROOT" && "$PY" -m bench.fs_settle "$OUT/baseline-data")

# 1. the shared baseline
PORT=$(free_port)
"$PY" "$SHARED/baseline_aiohttp.py" "$PORT" "$OUT/baseline-data" > "$OUT/baseline.log" 2>&1 &
SERVER_PID=$!
# the baseline has no health route: any HTTP answer (404) means it is up
for _ in $(seq 1 300); do
    curl -s -o /dev/null "http://127.0.0.1:$PORT/" && break
    sleep 0.1
done
echo "# shared baseline (pid $SERVER_PID)" >&2
run_one baseline "http://127.0.0.1:$PORT/files/"
stop_server
find "$OUT/baseline-data" -type f -size +1M -delete
sync
# Data dirs are removed only at the end: right after thousands of files were deleted,
# ext4 makes each new file slow to create (its inode allocator skips recently freed
# inodes, one inode-table lookup each: 40 us became ~1 ms here), which would slow down
# whichever server runs next.

# 2. tusd-py, built-in defaults (run in an empty dir so no config file is read)
PORT=$(free_port)
(cd "$OUT/tusd-data" && exec "$PY" -m tusd_py serve --host 127.0.0.1 --port "$PORT" \
    --data-dir "$OUT/tusd-data" > "$OUT/tusd-py.log" 2>&1) &
SERVER_PID=$!
wait_up "http://127.0.0.1:$PORT/healthz" "$SERVER_PID"
echo "# tusd-py (pid $SERVER_PID)" >&2
run_one tusd-py "http://127.0.0.1:$PORT/files/"
stop_server
rm -rf "$OUT/baseline-data" "$OUT/tusd-data"

"$PY" - "$OUT/results.jsonl" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
s = {(r["label"], r["scenario"]): r for r in rows if r.get("kind") == "summary"}
key = {"big": "mb_s", "many-small": "uploads_s", "parallel": "mb_s"}
target = {"big": 0.85, "many-small": 0.5, "parallel": 0.85}
print("\nshared tusbench, tusd-py / shared baseline (medians):")
for scen, k in key.items():
    b, t = s.get(("baseline", scen)), s.get(("tusd-py", scen))
    if not b or not t or not b.get(k):
        continue
    ratio = t[k] / b[k]
    extra = f", p99 {t['lat_p99_ms']} ms" if scen == "many-small" else ""
    print(f"  {scen:10} {k:9} baseline {b[k]:8.1f}  tusd-py {t[k]:8.1f}  ratio {ratio:.2f}x "
          f"(target >= {target[scen]}x){extra}, peak RSS {t['server_rss_peak_mb_max']} MB")
EOF
echo "# results in $OUT" >&2
