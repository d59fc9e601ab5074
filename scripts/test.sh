#!/usr/bin/env bash
# Install everything the test suite needs (Python extras, pinned Node tools, system
# packages for the system tests) and run it: lint, type check, the documentation build,
# pytest. Needs root for apt-get unless the system packages below are installed already.
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
# System packages for tests/ops: nginx (reverse proxy in front of the daemon), chromium
# (headless browser tests), podman + runc + debootstrap (the image built and run,
# tests/ops/test_image.py) and python3-venv (the install floor on Debian's own python3,
# tests/ops/test_install_floor.py). Debian's postinst does not start nginx without an
# init system.
PACKAGES="nginx chromium podman runc debootstrap python3-venv"
missing=""
for package in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
        || missing="$missing $package"
done
if [ -n "$missing" ]; then
    apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

.venv/bin/ruff check tusd_py tests bench scripts
.venv/bin/mypy
# The documentation site: --strict fails on a broken link or anchor and on a page missing
# from the nav (mkdocs.yml). Output in build/site/ (gitignored).
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --quiet --site-dir build/site
# Three test processes (pytest-xdist): most tests wait on emulators, daemons and sockets,
# so three share two cores well (10 min instead of about 20 serial; each process starts
# its own emulators). TUSD_TEST_WORKERS=0 runs them in this process, serially.
exec .venv/bin/python -m pytest -n "${TUSD_TEST_WORKERS:-3}" "$@"
