#!/usr/bin/env bash
# First start of an empty PostgreSQL data directory (the official image runs
# /docker-entrypoint-initdb.d/* once, through the local socket): creates
# pulsestack's per-service login roles with their passwords, so that each
# service can log in as soon as the schema exists. The schema migration
# (`pulsestack setup`, the stack's setup job) creates the roles too if they are
# missing, grants each role exactly its tables, and sets the passwords again
# from the same secrets (a rotated secret takes effect at the next setup run).
#
# Passwords come from files named like `pulsestack migrate` expects them:
#   PULSESTACK_PULSESTACK_OWNER_PASSWORD_FILE     the schema's owner (20-pulsestack-owner.sql, the setup job)
#   PULSESTACK_PULSESTACK_RAW_PASSWORD_FILE       raw-processor (the processors)
#   PULSESTACK_PULSESTACK_REGISTRY_PASSWORD_FILE  the operator's device registry commands
#   PULSESTACK_PULSESTACK_READER_PASSWORD_FILE    Grafana, the read API, the swarm exporter's probe
#   PULSESTACK_PULSESTACK_ALERTING_PASSWORD_FILE  alerting
# A role whose variable is unset is left to the migration.
set -euo pipefail

for role in pulsestack_owner pulsestack_raw pulsestack_registry pulsestack_reader pulsestack_alerting; do
    var="PULSESTACK_${role^^}_PASSWORD_FILE"
    file="${!var:-}"
    if [ -z "$file" ]; then
        echo "10-pulsestack-roles: $var not set, $role left to the migration"
        continue
    fi
    [ -r "$file" ] || { echo "10-pulsestack-roles: cannot read $file ($var)" >&2; exit 1; }
    # The password goes through psql's own variable (read from the file by
    # psql), never through a command line.
    psql -v ON_ERROR_STOP=1 --no-psqlrc --username "${POSTGRES_USER:-postgres}" \
        --dbname "${POSTGRES_DB:-postgres}" --set role="$role" --set file="$file" >/dev/null <<'SQL'
\set password `cat :'file'`
SELECT format('CREATE ROLE %I LOGIN', :'role')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role') \gexec
ALTER ROLE :"role" WITH LOGIN PASSWORD :'password';
SQL
    echo "10-pulsestack-roles: $role ready"
done
