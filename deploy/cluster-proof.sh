#!/usr/bin/env bash
# The cluster proof: the Ansible playbooks run for real, over SSH, against a
# simulated cluster of 3 managers + 3 workers laid out by Terraform's own
# configuration, with readings flowing. Run as root on Debian (or
# .ci/cluster-proof.sh, after the swarm proof, whose images it reuses).
#
#   1 engine     as the swarm proof (deploy/lib/engine.sh); the local registry
#                also answers the nodes, as their registry mirror
#   2 images     the base image, pulsestack's images and the stand-ins (cached
#                from the swarm proof), and the node image (deploy/cluster-node)
#   3 nodes      a bridge network as the private network; the inventory written
#                by Terraform's layout and template (deploy/proof/terraform_offline.py);
#                six "VMs" (systemd, sshd, their own dockerd) at the inventory's
#                addresses, reachable with a key generated for this run
#   4 site       ansible-playbook site.yml: packages, firewall, engines, the
#                swarm, secrets from a vault encrypted with a generated password,
#                the stack, converged
#   5 delivery   simulated fleet over UDP and HTTP; every acknowledged reading
#                stored exactly once
#   6 manager    under traffic, a manager's VM is killed: quorum holds, services
#                run, readings arrive; it is started again and rejoins
#   7 nodes      under traffic, remove-node.yml removes a worker, add-node.yml
#                brings it back
#   8 scale      scale.yml: processors 1 -> 3 -> 1 under traffic
#   9 backup     backup.yml then restore-dump.yml through the S3 stand-in (moto,
#                on this machine's address on the nodes' network since the
#                site step: the stack archives its WAL there)
#  10 migrate    migrate-node-type.yml under traffic: a second generation of
#                "larger" VMs replaces every node, one at a time; then the old
#                generation is deleted. About 9–10 minutes on a 2-core machine;
#                PULSESTACK_PROOF_MIGRATE=0 leaves it out
#  11 again      site.yml once more: no task reports a change
#  12 database   under traffic, the database node's VM and disk are deleted;
#                restore.yml restores the WAL archive onto another worker and
#                replays RAW_REPLAY; exact delivery; RPO and RTO printed
#  13 clean      VMs, their volumes, the network, the registry and what the
#                engine step changed
#
# Idempotent: safe to run again after a failure (it cleans up first).
# PULSESTACK_PROOF_KEEP=1 leaves the cluster running at the end (for a look;
# `deploy/cluster-proof.sh clean` removes it); PULSESTACK_PROOF_UNTIL=STEP
# stops after that step and keeps the cluster, and `deploy/cluster-proof.sh
# run STEP...` runs steps again on a kept cluster. Budget: 30 minutes; each
# step's time is printed, and the delivery figures.
set -Eeuo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
CACHE="${PULSESTACK_PROOF_CACHE:-/var/cache/pulsestack}"
STATE="$CACHE/cluster-state"
WORK="$CACHE/cluster-run"
mkdir -p "$CACHE" "$STATE"
PROOF_NAME=cluster-proof
PROOF_TITLE="of the playbooks"
WHAT_STAYS="the cluster"

# The nodes pull through the registry on this machine's address on their network.
export PULSESTACK_PROOF_REGISTRY_LISTEN="0.0.0.0:5000"
# shellcheck source=deploy/lib/engine.sh
. "$REPO/deploy/lib/engine.sh"

export PULSESTACK_VERSION="${PULSESTACK_VERSION:-$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')}"
COMPOSE=(-c stack.yml -c tests/swarm/stack.override.yml)
# deploy/proof/cluster.py reads it too: the worker it removes depends on it.
export PULSESTACK_PROOF_MIGRATE="${PULSESTACK_PROOF_MIGRATE:-1}"
# Readings per second in every traffic window. The proof checks that faults
# lose and double nothing, not throughput (the benchmarks do): half the swarm
# proof's rate leaves the two cores that carry twelve VMs to the playbooks.
export PULSESTACK_PROOF_RATE="${PULSESTACK_PROOF_RATE:-75}"
# shellcheck source=deploy/lib/proof.sh
. "$REPO/deploy/lib/proof.sh"
# shellcheck source=deploy/lib/images.sh
. "$REPO/deploy/lib/images.sh"

NETWORK=pulsestack-cluster
# The private network Terraform lays the nodes out in (generation 2 at +512).
CIDR="${PULSESTACK_CLUSTER_CIDR:-10.213.0.0/22}"
NETWORK_ADDRESS="${CIDR%/*}"
GATEWAY="${NETWORK_ADDRESS%.*}.1"
NODE_IMAGE=pulsestack-proof/cluster-node:bookworm
NODE_LABEL=org.pulsestack.cluster-proof
export PULSESTACK_CLUSTER_WORK="$WORK"
export PULSESTACK_CLUSTER_STATE="$STATE"
export PULSESTACK_PROOF_WORK="$WORK"
export PULSESTACK_PROOF_SECRETS="$WORK/secrets"
export PULSESTACK_PROOF_FIGURES="$STATE/figures.json"
# The run's first device number; kept with the cluster, so steps run again on
# it (`run STEP...`) drive the fleets that the delivery step registered.
if [ "${1:-}" = run ] && [ -s "$WORK/run-base" ]; then
    PULSESTACK_PROOF_RUN_BASE="$(cat "$WORK/run-base")"
fi
export PULSESTACK_PROOF_RUN_BASE="${PULSESTACK_PROOF_RUN_BASE:-$(( ($(date +%s) % 997) * 20000 + 10000000 ))}"
export PULSESTACK_CLUSTER_CIDR="$CIDR" PULSESTACK_CLUSTER_GATEWAY="$GATEWAY" PULSESTACK_CLUSTER_NETWORK="$NETWORK"
export PULSESTACK_CLUSTER_NODE_IMAGE="$NODE_IMAGE" PULSESTACK_CLUSTER_NODE_LABEL="$NODE_LABEL"

# ------------------------------------------------------------------- step 2

step_images_and_node() {
    step_base
    step_images
    local cli context
    cli="$(command -v docker)"
    "$cli" version --format '{{.Client.Version}}' | python3 -c 'import sys; sys.exit(int(sys.stdin.read().split(".")[0]) < 23)' \
        || die "$cli is older than 23: the nodes need a docker CLI that deploys one-shot jobs (deploy/cluster-node/Dockerfile)"
    context="$(mktemp -d)"
    cp deploy/cluster-node/Dockerfile deploy/cluster-node/node-entrypoint.sh "$context/"
    cp "$cli" "$context/docker-cli"
    DOCKER_BUILDKIT=0 docker build -q --force-rm --build-arg BASE_IMAGE="$BASE_IMAGE" -t "$NODE_IMAGE" "$context" \
        >/dev/null 2>"$STATE/node-build.log" || { cat "$STATE/node-build.log" >&2; rm -rf "$context"; die "the node image failed to build"; }
    rm -rf "$context"
    echo "$NODE_IMAGE" >> "$STATE/built-images"
    log "node image $NODE_IMAGE built"
}

# ------------------------------------------------------------------- step 3

step_nodes() {
    mkdir -p "$WORK"
    chmod 700 "$WORK"
    echo "$PULSESTACK_PROOF_RUN_BASE" > "$WORK/run-base"
    docker network inspect "$NETWORK" >/dev/null 2>&1 \
        || docker network create --subnet "$CIDR" --gateway "$GATEWAY" --label "$NODE_LABEL=1" "$NETWORK" >/dev/null
    log "network $NETWORK ($CIDR, this machine at $GATEWAY)"
    [ -s "$WORK/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C cluster-proof -f "$WORK/id_ed25519"
    mkdir -p "$WORK/node-key"
    cp "$WORK/id_ed25519.pub" "$WORK/node-key/authorized_keys"
    "$PY" -m deploy.proof.cluster inventory 1
    "$PY" -m deploy.proof.cluster boot
}

# ------------------------------------------------------------------- step 4

step_site() {
    # moto as the cluster's object storage, on this machine's address on the nodes' network: the WAL
    # archive (PostgreSQL's containers) and backup.yml's dumps (the control machine). It outlives the
    # command, until the clean step stops it by its pid file.
    "$PY" -m deploy.proof.cluster s3
    "$PY" -m deploy.proof.cluster vars
    "$PY" -m deploy.proof.cluster site
}

# ------------------------------------------------------------------- step 13

remove_nodes() {
    docker_up || return 0
    docker ps -aq --filter "label=$NODE_LABEL" | xargs -r docker rm -f >/dev/null
    # Volumes a VM still held a moment ago may already be gone: what is left matters.
    docker volume ls -q --filter "label=$NODE_LABEL" | xargs -r docker volume rm >/dev/null 2>&1 || true
    docker network ls -q --filter "label=$NODE_LABEL" | xargs -r docker network rm >/dev/null
}

stop_s3() {
    [ -e "$WORK/moto.pid" ] && kill "$(cat "$WORK/moto.pid")" 2>/dev/null || true
}

step_clean() {
    stop_s3
    remove_nodes
    log "nodes, their volumes and the network removed"
    # The playbooks' logs (per-task times and results) outlive the run folder: what a failure did.
    rm -rf "$STATE/playbook-logs"
    mkdir -p "$STATE/playbook-logs"
    cp "$WORK"/ansible-*.log "$STATE/playbook-logs/" 2>/dev/null || true
    log "playbook logs kept in $STATE/playbook-logs"
    rm -rf "$WORK"
    engine_restore
}

# The steps after the site, each a command of deploy/proof/cluster.py.
declare -A FAULT_STEPS=(
    [delivery]=delivery [manager]=kill-manager [remove-add]=remove-add-node [scale]=scale
    [backup]=backup-restore [migrate]=migrate [again]=again [database]=lose-database
)

# `deploy/cluster-proof.sh run STEP...`: those steps again on a cluster a
# kept run (PULSESTACK_PROOF_KEEP=1 or _UNTIL) left up, which stays up.
run_on_kept() {
    [ $# -gt 0 ] || die "usage: $0 run STEP... (steps: ${!FAULT_STEPS[*]})"
    PULSESTACK_PROOF_KEEP=1
    proof_start all
    ensure_venv
    [ -s "$WORK/inventory/hosts.yml" ] || die "no kept cluster in $WORK (run with PULSESTACK_PROOF_KEEP=1 first)"
    local name
    for name in "$@"; do
        [ -n "${FAULT_STEPS[$name]:-}" ] || die "no step $name (steps: ${!FAULT_STEPS[*]})"
        step "$name" "$PY" -m deploy.proof.cluster "${FAULT_STEPS[$name]}"
    done
}

main() {
    if [ "${1:-}" = run ]; then
        shift
        run_on_kept "$@"
        exit 0
    fi
    proof_start "$@"
    step engine step_engine
    ensure_venv
    # What an interrupted or kept earlier run may have left; its host keys too (new VMs, new keys).
    stop_s3
    remove_nodes
    rm -rf "$WORK"
    step images step_images_and_node
    step nodes step_nodes
    step site step_site
    local name
    for name in delivery manager remove-add scale backup; do
        step "$name" "$PY" -m deploy.proof.cluster "${FAULT_STEPS[$name]}"
    done
    if [ "$PULSESTACK_PROOF_MIGRATE" = 1 ]; then
        step migrate "$PY" -m deploy.proof.cluster migrate
    else
        echo "=== step migrate: not run (PULSESTACK_PROOF_MIGRATE=0)"
    fi
    step again "$PY" -m deploy.proof.cluster again
    # Last: the inventory still labels the deleted node database (restore.yml says to change that).
    step database "$PY" -m deploy.proof.cluster lose-database
    proof_passed
}

main "$@"
