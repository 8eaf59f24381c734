#!/usr/bin/env bash
# Installs Debian's libjemalloc2, the allocator every service process runs on (pulsestack/allocator.py; the
# images have it from deploy/runtime.Dockerfile), as root. Safe to run again: it does nothing once installed.
# Without it the local stack runs on CPython's allocators, and tests/test_allocator.py skips (fails with
# PULSESTACK_REQUIRE_ALL=1).
set -euo pipefail
. "$(dirname "$0")/apt.sh"

ls /usr/lib/*-linux-gnu/libjemalloc.so.2 >/dev/null 2>&1 && exit 0
apt_install tools-jemalloc libjemalloc2 || exit 0
echo "tools-jemalloc: $(ls /usr/lib/*-linux-gnu/libjemalloc.so.2)"
