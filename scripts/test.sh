#!/usr/bin/env bash
# Install everything the test suite needs (Python extras, pinned Node tools, system
# packages for the system tests) and run it: lint, type check, the documentation build,
# pytest. Needs root for apt-get unless nginx and chromium are installed already.
# Usage: scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -c requirements/constraints.txt -e '.[all,test,docs]'
npm ci --no-audit --no-fund --loglevel=error
# System packages for tests/ops: nginx (reverse proxy in front of the daemon) and chromium
# (headless browser tests). Debian's postinst does not start nginx without an init system.
if [ ! -x /usr/sbin/nginx ] || [ ! -x /usr/bin/chromium ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx chromium >/dev/null
fi

.venv/bin/ruff check tusd_py tests bench scripts
.venv/bin/mypy
# The documentation site: --strict fails on a broken link or anchor and on a page missing
# from the nav (mkdocs.yml). Output in build/site/ (gitignored).
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --quiet --site-dir build/site
exec .venv/bin/python -m pytest "$@"
