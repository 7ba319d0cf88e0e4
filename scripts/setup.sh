#!/usr/bin/env bash
# Set up everything the project needs on a fresh Debian/Ubuntu machine (idempotent):
# system packages for the tests, and a virtualenv in .venv with the pinned dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_install() {
    local missing=()
    for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup: please install these Debian packages (needs root): ${missing[*]}" >&2
        return 1
    fi
    echo "setup: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

if [ "${SETUP_SYSTEM:-1}" = 1 ] && command -v apt-get >/dev/null; then
    # chromium: the report's browser test; tcmalloc: the allocator of the processes that
    # run trials (sweep_service/heap.py). The Docker engine and debootstrap are installed
    # by docker/ensure-engine.sh when the end-to-end test needs them.
    apt_install chromium fonts-dejavu-core libtcmalloc-minimal4
fi

PYTHON=${PYTHON:-python3}
stamp=.venv/.installed-$(sha1sum pyproject.toml | cut -c1-12)
if [ ! -f "$stamp" ]; then
    echo "setup: creating .venv and installing pinned dependencies (a few minutes the first time)"
    [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
    # (the filter drops pip's per-package notes about unreadable local index entries)
    .venv/bin/pip install -q --upgrade pip 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
    .venv/bin/pip install -q -e ".[dev]" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
    rm -f .venv/.installed-*
    touch "$stamp"
fi
echo "setup: ready ($(.venv/bin/python -c 'import torch, nni, ray; print(f"torch {torch.__version__}, nni {nni.__version__}, ray {ray.__version__}")' 2>/dev/null))"
