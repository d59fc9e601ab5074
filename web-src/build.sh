#!/usr/bin/env bash
# Rebuild the vendored demo bundle tusd_py/web/uppy.single.js from web-src/uppy-entry.js
# with the pinned esbuild and @uppy/* packages (npm ci first). One JS file, CSS inlined.
# tests/ops/test_browser.py checks that the committed bundle equals a fresh build.
# Usage: web-src/build.sh [OUTFILE]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-tusd_py/web/uppy.single.js}
exec node_modules/.bin/esbuild web-src/uppy-entry.js --bundle --minify --format=iife \
    --target=es2020 --loader:.css=text --legal-comments=eof --log-level=warning \
    --outfile="$out"
