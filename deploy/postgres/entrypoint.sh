#!/usr/bin/env bash
# pulsestack/postgres's entry point (deploy/postgres/Dockerfile): the official image's docker-entrypoint.sh,
# with WAL archiving when PULSESTACK_ARCHIVE_URL is set, the base-backup scheduler, or a point-in-time restore.
set -Eeo pipefail
ARCHIVE=(/opt/pulsestack-archive/bin/python -m pulsestack.store.archive)

case "${1:-}" in
    postgres)
        if [ -n "${PULSESTACK_ARCHIVE_URL:-}" ]; then
            # As -c options, so the image's first-start server (the init scripts') does not archive.
            options=()
            while IFS= read -r -d '' option; do options+=(-c "$option"); done < <("${ARCHIVE[@]}" settings --options)
            set -- "$@" "${options[@]}"
        else
            echo "pulsestack/postgres: PULSESTACK_ARCHIVE_URL is not set; WAL is not archived (docs/durability.md)" >&2
        fi
        exec docker-entrypoint.sh "$@"
        ;;
    schedule)
        [ "$(id -u)" != 0 ] || { echo "pulsestack/postgres schedule: run it as the server's user (stack.yml: user)" >&2; exit 1; }
        exec "${ARCHIVE[@]}" schedule
        ;;
    restore)
        # A point-in-time restore into the empty data folder PGDATA names (ansible restore.yml runs it as a
        # job): the server's user must own what the server will start on.
        [ "$(id -u)" != 0 ] || { echo "pulsestack/postgres restore: run it as the server's user (999)" >&2; exit 1; }
        shift
        exec "${ARCHIVE[@]}" restore "${PGDATA:?PGDATA names the data folder to restore into}" "$@"
        ;;
    *)
        exec docker-entrypoint.sh "$@"
        ;;
esac
