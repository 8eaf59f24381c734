#!/usr/bin/env bash
# Deploys (or updates) the stack from a manager:
#   deploy/deploy.sh [-c EXTRA_COMPOSE_FILE ...] [docker stack deploy options]
#
# Besides `docker stack deploy -c stack.yml pulsestack` it sets each
# PULSESTACK_*_CONFIG_VERSION that is not set already to a hash of the files
# behind those configs (deploy/config-versions.sh): an edited file gets a new
# swarm config name, and the services that use it roll (a swarm config cannot
# change in place). Configs
# of earlier versions that no task uses any more are removed afterwards.
# Every other setting comes from the environment (see the head of stack.yml).
set -euo pipefail
cd "$(dirname "$0")/.."
STACK=pulsestack  # fixed: traefik/traefik.yml routes over pulsestack_edge

versions="$(deploy/config-versions.sh)"
# shellcheck disable=SC2086  # NAME=VALUE words, split on purpose
export $versions

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
