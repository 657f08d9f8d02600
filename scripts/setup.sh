#!/usr/bin/env bash
# Idempotent setup for a fresh Debian machine that has only Python:
# system packages (FUSE 3, its headers for building pyfuse3, pkg-config, the sqlite3 CLI)
# and a virtualenv at .venv with litefs-py installed in editable mode with its dev extra.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
for pkg in fuse3 libfuse3-dev pkg-config sqlite3; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "setup: installing ${need_apt[*]} with apt-get" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $($PY --version)" >&2
    $PY -m venv .venv
fi
# Reinstall only when the install inputs changed since the last successful install
# (setup.py and the C sources it builds, which must never go stale).
stamp=.venv/.litefs-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ setup.py -nt "$stamp" ] \
        || [ litefs_py/ltx/_frames.c -nt "$stamp" ] || [ litefs_py/sqlite/_walsum.c -nt "$stamp" ]; then
    echo "setup: installing litefs-py and its dependencies into .venv" >&2
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[dev]'
    touch "$stamp"
fi
