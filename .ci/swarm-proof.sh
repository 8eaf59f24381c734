#!/usr/bin/env bash
# CI: the swarm proof of stack.yml (deploy/swarm-proof.sh) — images built
# without a registry, the stack deployed on a real swarm, exact delivery
# through rolling updates, a NATS server killed and processors scaled, then
# the machine cleaned. Needs root on Debian (installs docker.io, starts
# dockerd); prints each step's time and the delivery figures. About 5 minutes
# with warm caches (/var/cache/pulsestack), under 15 from nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
    echo "swarm-proof: must run as root (it installs Docker and starts dockerd)" >&2
    exit 1
fi
exec bash deploy/swarm-proof.sh "$@"
