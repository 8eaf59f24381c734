#!/usr/bin/env bash
# Installs the archive extra (barman-cloud; pyproject.toml) into the project's venv for
# tests/test_archive.py, with what its psycopg2 needs to compile (gcc, libpq-dev) from apt when missing,
# as root. Safe to run again: it does nothing once barman-cloud is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"

[ -x "$VENV/bin/barman-cloud-backup" ] && exit 0

missing=()
command -v gcc >/dev/null 2>&1 || missing+=(gcc)
command -v pg_config >/dev/null 2>&1 || missing+=(libpq-dev)
"$VENV/bin/python" -c 'import os, sysconfig, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
    || missing+=(python3-dev)
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "tools-archive: ${missing[*]} missing and not root; cannot build barman-cloud's psycopg2; tests/test_archive.py skips" >&2
        exit 0
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# pip's build warnings only when it fails.
log="$(mktemp)"
if ! "$VENV/bin/pip" install --quiet -e '.[archive]' >"$log" 2>&1; then
    cat "$log" >&2
    exit 1
fi
rm -f "$log"
