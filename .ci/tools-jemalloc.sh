#!/usr/bin/env bash
# Installs Debian's libjemalloc2, the allocator every service process runs on (pulsestack/allocator.py; the
# images have it from deploy/runtime.Dockerfile), as root. Safe to run again: it does nothing once installed.
# Without it the local stack runs on CPython's allocators, and tests/test_allocator.py skips (fails with
# PULSESTACK_REQUIRE_ALL=1).
set -euo pipefail

if ls /usr/lib/*-linux-gnu/libjemalloc.so.2 >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "tools-jemalloc: libjemalloc2 missing and not root; services run on CPython's allocators" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends libjemalloc2 >/dev/null
echo "tools-jemalloc: $(ls /usr/lib/*-linux-gnu/libjemalloc.so.2)"
