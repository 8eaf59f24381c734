#!/usr/bin/env bash
# Installs what tests/ops/test_monitoring.py, test_traefik.py and
# test_socket_proxy.py need on a fresh Debian machine, as root. Safe to run again: it does nothing when
# the tools are already there.
#
# promtool comes with Debian's `prometheus` package (2.42 on bookworm) and
# amtool with `prometheus-alertmanager` (0.25), haproxy (2.6) runs the socket
# proxy stand-in's configuration. The packages ship daemons
# that Debian starts on install; the tests only need the CLI tools, so a
# policy-rc.d forbids starting them during the install, and anything that
# got started anyway (a machine with systemd and no policy) is stopped and
# disabled afterwards.
set -euo pipefail

need_install=0
command -v promtool >/dev/null 2>&1 || need_install=1
command -v amtool   >/dev/null 2>&1 || need_install=1
command -v haproxy  >/dev/null 2>&1 || need_install=1

if [ "$need_install" = 1 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "tools-monitoring: promtool/amtool/haproxy missing and not root; cannot install; the tests that need them skip" >&2
        exit 0
    fi

    created_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        created_policy=1
    fi
    # Remove our policy file even if apt fails, but leave one we did not create.
    remove_policy() {
        if [ "$created_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
    }
    trap remove_policy EXIT

    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # --no-install-recommends: the recommends pull in node-exporter and other
    # daemons the tests do not use.
    apt-get install -y -qq --no-install-recommends prometheus prometheus-alertmanager haproxy >/dev/null

    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        for unit in prometheus prometheus-alertmanager haproxy; do
            systemctl stop "$unit" >/dev/null 2>&1 || true
            systemctl disable "$unit" >/dev/null 2>&1 || true
        done
    fi
fi

echo "tools-monitoring: $(promtool --version 2>&1 | head -n1)"
echo "tools-monitoring: $(amtool --version 2>&1 | head -n1)"
echo "tools-monitoring: $(haproxy -v 2>&1 | head -n1)"
