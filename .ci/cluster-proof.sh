#!/usr/bin/env bash
# The cluster proof (deploy/cluster-proof.sh), run by .ci/run after the swarm proof: the Ansible playbooks run
# over SSH against six simulated VMs laid out by Terraform's configuration,
# under traffic, with exact delivery checked after every fault. Needs root on
# Debian; reuses the images the swarm proof built. Prints each step's time.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
    echo "cluster-proof: must run as root (it installs Docker and starts dockerd)" >&2
    exit 1
fi
exec bash deploy/cluster-proof.sh "$@"
