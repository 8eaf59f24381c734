#!/usr/bin/env bash
# Deploys (or updates) the stack from a manager:
#   deploy/deploy.sh [-c EXTRA_COMPOSE_FILE ...] [docker stack deploy options]
#
# Besides `docker stack deploy -c stack.yml pulsestack` it sets each
# PULSESTACK_*_CONFIG_VERSION that is not set already to a hash of the files
# behind those configs: an edited file gets a new swarm config name, and the
# services that use it roll (a swarm config cannot change in place). Configs
# of earlier versions that no task uses any more are removed afterwards.
# Every other setting comes from the environment (see the head of stack.yml).
set -euo pipefail
cd "$(dirname "$0")/.."
STACK=pulsestack  # fixed: traefik/traefik.yml routes over pulsestack_edge

version_of() {  # a short hash of the given files' contents
    cat "$@" | sha256sum | cut -c1-10
}

export PULSESTACK_NATS_CONFIG_VERSION="${PULSESTACK_NATS_CONFIG_VERSION:-$(version_of deploy/nats/nats-server.conf)}"
export PULSESTACK_POSTGRES_CONFIG_VERSION="${PULSESTACK_POSTGRES_CONFIG_VERSION:-$(version_of deploy/postgres/initdb/10-pulsestack-roles.sh pulsestack/store/postgresql.conf pulsestack/store/pg_hba.conf pulsestack/store/owner.sql)}"
export PULSESTACK_PROMETHEUS_CONFIG_VERSION="${PULSESTACK_PROMETHEUS_CONFIG_VERSION:-$(version_of monitoring/prometheus/prometheus.yml monitoring/prometheus/rules/*.yml)}"
export PULSESTACK_ALERTMANAGER_CONFIG_VERSION="${PULSESTACK_ALERTMANAGER_CONFIG_VERSION:-$(version_of monitoring/alertmanager/alertmanager.yml)}"
export PULSESTACK_GRAFANA_CONFIG_VERSION="${PULSESTACK_GRAFANA_CONFIG_VERSION:-$(version_of monitoring/grafana/provisioning/*/*.yml monitoring/grafana/dashboards/*.json)}"
export PULSESTACK_TRAEFIK_CONFIG_VERSION="${PULSESTACK_TRAEFIK_CONFIG_VERSION:-$(version_of traefik/traefik.yml traefik/dynamic/*.yml)}"

files=(-c stack.yml)
while [ $# -gt 0 ] && [ "$1" = "-c" ]; do
    files+=(-c "$2")
    shift 2
done

docker stack deploy "${files[@]}" "$@" "$STACK"

# Old config versions: remove those that neither the services' specs nor their
# previous specs (what a rollback returns to) refer to.
services="$(docker service ls -q --filter "label=com.docker.stack.namespace=$STACK")"
[ -n "$services" ] || exit 0
# shellcheck disable=SC2086
docker service inspect $services | python3 -c '
import json, sys
used = set()
for service in json.load(sys.stdin):
    for spec in (service.get("Spec"), service.get("PreviousSpec")):
        for config in ((spec or {}).get("TaskTemplate", {}).get("ContainerSpec", {}).get("Configs") or []):
            used.add(config["ConfigName"])
print("\n".join(sorted(used)))' > "${TMPDIR:-/tmp}/pulsestack-configs-in-use.$$"
docker config ls --format '{{.Name}}' | grep "^${STACK}_" | while read -r name; do
    grep -qx "$name" "${TMPDIR:-/tmp}/pulsestack-configs-in-use.$$" && continue
    docker config rm "$name" >/dev/null 2>&1 && echo "removed unused config $name" || true
done
rm -f "${TMPDIR:-/tmp}/pulsestack-configs-in-use.$$"
