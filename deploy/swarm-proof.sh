#!/usr/bin/env bash
# The swarm proof: stack.yml deployed unmodified on a real Docker engine in
# swarm mode, on a machine without registry access, and shown to deliver
# every reading exactly once through rolling updates, a NATS server killed
# and processors scaled. Run as root on Debian (CI: .ci/swarm-proof.sh).
#
#   1 engine      Debian's docker.io, debootstrap, docker-registry (installed if
#                 missing); a local registry, used by the engine as its registry
#                 mirror; dockerd started if none runs
#   2 base        Debian bookworm and forky (PostgreSQL's stand-in) base images
#                 made with debootstrap from this machine's apt mirror (cached
#                 under $PULSESTACK_PROOF_CACHE)
#   3 images      pulsestack's four images and the stand-ins for third-party
#                 images (NATS, PostgreSQL, Prometheus, Alertmanager, node
#                 exporter), tagged with stack.yml's names, pushed to the mirror
#   4 deploy      swarm init, node labels, secrets with random values, stack
#                 deploy (+ tests/swarm/stack.override.yml), wait until healthy
#   5 delivery    simulated fleet over UDP (host mode) and HTTP, exact delivery
#   6 prometheus  every pulsestack task up == 1 through swarm service discovery
#                 (through the socket proxy), pipeline recording rules return data
#   6b edge       the real Traefik: routes from its swarm provider (through the
#                 socket proxy), TLS, admin routes 401 without credentials, 403
#                 outside the allow-list behind a PROXY v2 header, 429 to a
#                 flood, HTTP redirected; the socket proxy refuses writes;
#                 (step 5's Sigfox traffic already went through Traefik)
#   6c postgres   the services' sessions all over TLS (stack.yml's ssl=on, the
#                 stand-in being Debian's postgresql-18); from the db network
#                 a role without TLS and the superuser refused (pg_hba.conf)
#   6d archive    WAL archived into an S3 stand-in (moto on the engine's gateway
#                 bridge) encrypted, none failed; archive-scheduler's base backup
#   7 faults      under traffic: rolling update of each processor, a NATS server
#                 killed, processors scaled 1 -> 3 -> 1; nothing lost or duplicated
#   8 clean       stack, secrets, volumes, swarm, registry, daemon.json and a
#                 dockerd this script started are removed or restored
#
# Idempotent: safe to run again after a failure (it cleans up first). Images
# and the base rootfs stay cached; PULSESTACK_PROOF_PURGE=1 removes them too.
# PULSESTACK_PROOF_KEEP=1 leaves the stack running at the end (for a look).
# Budget: 15 minutes; each step's time is printed, and the delivery figures.
set -Eeuo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
CACHE="${PULSESTACK_PROOF_CACHE:-/var/cache/pulsestack}"
STATE="$CACHE/proof-state"
WORK="$CACHE/proof-run"
STACK=pulsestack
mkdir -p "$CACHE" "$STATE"
PROOF_NAME=swarm-proof
PROOF_TITLE="of stack.yml"
WHAT_STAYS="the stack"

# shellcheck source=deploy/lib/engine.sh
. "$REPO/deploy/lib/engine.sh"

# What the proof deploys with (operator settings of stack.yml; see deploy/README.md).
export PULSESTACK_VERSION="${PULSESTACK_VERSION:-$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')}"
export PULSESTACK_REGISTRY=""
export PULSESTACK_DOMAIN="${PULSESTACK_DOMAIN:-pulsestack.test}"
export PULSESTACK_INGEST_HTTP_REPLICAS=1         # its test port is published in host mode: one per node
export PULSESTACK_RAW_PROCESSOR_REPLICAS=1       # scaled 1 -> 3 -> 1 in step 7
export PULSESTACK_PROOF_HTTP_PORT="${PULSESTACK_PROOF_HTTP_PORT:-17070}"
# The proof plays Scaleway's load balancer from this machine, whose connections reach Traefik's host-mode ports
# from the engine's bridges (docker-proxy): Traefik believes PROXY protocol headers from there, and admin routes
# answer only the bridges and a documentation network (step 6b checks 403 for a client outside it).
export PULSESTACK_EDGE_PROXY_CIDR="${PULSESTACK_EDGE_PROXY_CIDR:-172.16.0.0/12}"
export PULSESTACK_ADMIN_CIDRS="${PULSESTACK_ADMIN_CIDRS:-172.16.0.0/12,198.51.100.0/24}"
export PULSESTACK_PROOF_PG_PORT="${PULSESTACK_PROOF_PG_PORT:-15432}"
export PULSESTACK_PROOF_NATS_1_PORT="${PULSESTACK_PROOF_NATS_1_PORT:-14222}"
export PULSESTACK_PROOF_NATS_2_PORT="${PULSESTACK_PROOF_NATS_2_PORT:-14223}"
export PULSESTACK_PROOF_NATS_3_PORT="${PULSESTACK_PROOF_NATS_3_PORT:-14224}"
export PULSESTACK_PROOF_NATS_PORTS="$PULSESTACK_PROOF_NATS_1_PORT,$PULSESTACK_PROOF_NATS_2_PORT,$PULSESTACK_PROOF_NATS_3_PORT"
export PULSESTACK_PROOF_UDP_PORT="${PULSESTACK_UDP_PORT:-2204}"
export PULSESTACK_PROOF_SECRETS="$WORK/secrets"
export PULSESTACK_PROOF_WORK="$WORK"
export PULSESTACK_PROOF_FIGURES="$STATE/figures.json"
# Device numbers of this run's fleets (a run that failed may have left others behind).
export PULSESTACK_PROOF_RUN_BASE="${PULSESTACK_PROOF_RUN_BASE:-$(( ($(date +%s) % 997) * 20000 ))}"
COMPOSE=(-c stack.yml -c tests/swarm/stack.override.yml -c tests/swarm/edge.override.yml)

# shellcheck source=deploy/lib/proof.sh
. "$REPO/deploy/lib/proof.sh"
# shellcheck source=deploy/lib/images.sh
. "$REPO/deploy/lib/images.sh"

# ------------------------------------------------------------------- step 4

step_deploy() {
    if [ "$(docker info --format '{{.Swarm.LocalNodeState}}')" != active ]; then
        docker swarm init --advertise-addr 127.0.0.1 >/dev/null
        touch "$STATE/swarm-initialized"
        log "swarm initialized (single manager)"
    else
        log "swarm already active"
    fi
    local node
    node="$(docker info --format '{{.Swarm.NodeID}}')"
    docker node update --label-add database=true --label-add ingest=true --label-add edge=true \
        --label-add nats-1=true --label-add nats-2=true --label-add nats-3=true "$node" >/dev/null
    log "node labels database ingest edge nats-1 nats-2 nats-3 on $(docker node inspect -f '{{.Description.Hostname}}' "$node")"
    mkdir -p "$WORK"
    chmod 700 "$WORK"
    # WAL archiving into the S3 stand-in (moto takes any credentials; the stack's are secrets all the same).
    mkdir -p "$PULSESTACK_PROOF_SECRETS"
    printf 'proof%s\n' "$(openssl rand -hex 6)" > "$PULSESTACK_PROOF_SECRETS/archive_access_key_id"
    openssl rand -hex 20 > "$PULSESTACK_PROOF_SECRETS/archive_secret_access_key"
    read -r PULSESTACK_ARCHIVE_URL PULSESTACK_ARCHIVE_ENDPOINT < <("$PY" -m deploy.proof.swarm s3) \
        || die "the S3 stand-in did not start (see above)"
    export PULSESTACK_ARCHIVE_URL PULSESTACK_ARCHIVE_ENDPOINT PULSESTACK_ARCHIVE_REGION=us-east-1
    log "S3 stand-in for the WAL archive at $PULSESTACK_ARCHIVE_ENDPOINT"
    deploy/secrets.sh "$PULSESTACK_PROOF_SECRETS"
    # Traefik's certificate for the proof's domain (tests/swarm/edge.override.yml says why).
    (. deploy/secrets.sh; server_cert "$PULSESTACK_PROOF_SECRETS" edge "$PULSESTACK_DOMAIN" "*.$PULSESTACK_DOMAIN")
    deploy/deploy.sh -c tests/swarm/stack.override.yml -c tests/swarm/edge.override.yml
    export PULSESTACK_PROOF_NOT_RUNNABLE
    PULSESTACK_PROOF_NOT_RUNNABLE="$(paste -sd, "$STATE/not-runnable")"
    "$PY" -m deploy.proof.swarm wait
}

# ------------------------------------------------------------------- step 8

remove_stack() {
    docker info >/dev/null 2>&1 || return 0
    [ "$(docker info --format '{{.Swarm.LocalNodeState}}')" = active ] || return 0
    if [ -n "$(docker service ls -q --filter "label=com.docker.stack.namespace=$STACK")" ]; then
        docker stack rm "$STACK" >/dev/null
        log "stack $STACK removed; waiting for its containers to stop"
    fi
    local i ids
    for i in $(seq 1 60); do
        ids="$(docker ps -aq --filter "label=com.docker.stack.namespace=$STACK")"
        [ -z "$ids" ] && break
        # After 20 s (NATS drains 30 s in lame-duck mode): stop waiting for them.
        # shellcheck disable=SC2086
        [ "$i" -gt 20 ] && docker rm -f $ids >/dev/null 2>&1 || true
        sleep 1
    done
    for i in $(seq 1 30); do
        [ -z "$(docker network ls -q --filter "label=com.docker.stack.namespace=$STACK")" ] && break
        sleep 1
    done
    local volumes
    volumes="$(docker volume ls -q --filter "label=com.docker.stack.namespace=$STACK")"
    # shellcheck disable=SC2086
    [ -n "$volumes" ] && docker volume rm $volumes >/dev/null
    deploy/secrets.sh --remove
    docker config ls --format '{{.Name}}' | grep "^${STACK}_" | xargs -r docker config rm >/dev/null 2>&1 || true
}

step_clean() {
    remove_stack
    [ -e "$WORK/moto.pid" ] && kill "$(cat "$WORK/moto.pid")" 2>/dev/null || true
    if docker info >/dev/null 2>&1 && [ -e "$STATE/swarm-initialized" ]; then
        docker swarm leave --force >/dev/null 2>&1 || true
        rm -f "$STATE/swarm-initialized"
        log "left the swarm"
    elif docker info >/dev/null 2>&1 && [ "$(docker info --format '{{.Swarm.LocalNodeState}}')" = active ]; then
        docker node update --label-rm database --label-rm ingest --label-rm edge \
            --label-rm nats-1 --label-rm nats-2 --label-rm nats-3 \
            "$(docker info --format '{{.Swarm.NodeID}}')" >/dev/null 2>&1 || true
    fi
    if [ "${PULSESTACK_PROOF_PURGE:-0}" = 1 ] && docker info >/dev/null 2>&1; then
        # Only what the proof built (recorded in step 3), the base image, and dangling build stages.
        { [ -e "$STATE/built-images" ] && sort -u "$STATE/built-images"; echo "$BASE_IMAGE"; echo "$POSTGRES_BASE_IMAGE"; } \
            | xargs -r docker rmi -f >/dev/null 2>&1 || true
        rm -f "$STATE/built-images"
        docker image prune -f >/dev/null
        rm -rf "$CACHE/base" "$CACHE/registry"
        log "images, base rootfs and registry storage purged"
    fi
    rm -rf "$WORK"
    engine_restore
}

proof_failed() {
    docker_up && docker service ls --filter "label=com.docker.stack.namespace=$STACK"
}

main() {
    proof_start "$@"
    step engine step_engine
    remove_stack   # what an interrupted earlier run may have left
    step base step_base
    step images step_images
    step deploy step_deploy
    step delivery "$PY" -m deploy.proof.swarm delivery
    step prometheus "$PY" -m deploy.proof.swarm prometheus
    step edge "$PY" -m deploy.proof.swarm edge
    step postgres "$PY" -m deploy.proof.swarm postgres
    step archive "$PY" -m deploy.proof.swarm archive
    step faults "$PY" -m deploy.proof.swarm faults
    proof_passed
}

main "$@"
