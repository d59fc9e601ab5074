#!/usr/bin/env bash
# The team's shared yardstick (../shared/bench/tusbench.py against
# ../shared/bench/baseline_aiohttp.py and tusd-py), run the fair way: servers alternated
# ABAB for --pairs pairs, page cache warmed, file creation settled, server CPU per GiB and
# per upload (user and system) beside MB/s and uploads/s. See bench/shared.py.
#
# Usage: bench/compare_shared.sh [--pairs N] [--servers ...] [--cold] [-- tusbench args...]
# Env:   SHARED_BENCH=dir (default: ../shared/bench from the repo root)
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-$PWD/.venv/bin/python}" -m bench.shared "$@"
