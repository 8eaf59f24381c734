#!/usr/bin/env bash
# Prints NAME=VERSION for each PULSESTACK_*_CONFIG_VERSION of stack.yml that is not set already: a short hash
# of the files behind those swarm configs. An edited file then gets a new config name and the services using it
# roll; a swarm config cannot change in place ("only updates to Labels are allowed"). Read by deploy/deploy.sh
# and by the Ansible stack role (stack_config_versions_script), from the repository root.
set -euo pipefail
cd "$(dirname "$0")/.."

version_of() {  # a short hash of the given files' contents
    cat "$@" | sha256sum | cut -c1-10
}

emit() {  # NAME FILE...: NAME's value if set, else the files' hash
    local name=$1
    shift
    echo "$name=${!name:-$(version_of "$@")}"
}

emit PULSESTACK_NATS_CONFIG_VERSION deploy/nats/nats-server.conf
emit PULSESTACK_POSTGRES_CONFIG_VERSION deploy/postgres/initdb/10-pulsestack-roles.sh pulsestack/store/postgresql.conf \
    pulsestack/store/pg_hba.conf pulsestack/store/owner.sql
emit PULSESTACK_PROMETHEUS_CONFIG_VERSION monitoring/prometheus/prometheus.yml monitoring/prometheus/rules/*.yml
emit PULSESTACK_ALERTMANAGER_CONFIG_VERSION monitoring/alertmanager/alertmanager.yml
emit PULSESTACK_GRAFANA_CONFIG_VERSION monitoring/grafana/provisioning/*/*.yml monitoring/grafana/dashboards/*.json
emit PULSESTACK_TRAEFIK_CONFIG_VERSION traefik/traefik.yml traefik/dynamic/*.yml
