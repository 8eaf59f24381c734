#!/usr/bin/env bash
# PostgreSQL stand-in (Debian's postgresql-18) with the parts of the official
# postgres image's entrypoint contract that stack.yml uses:
#   POSTGRES_PASSWORD / POSTGRES_PASSWORD_FILE  superuser password (required on first start)
#   POSTGRES_USER (default postgres), POSTGRES_DB (default: POSTGRES_USER)
#   POSTGRES_INITDB_ARGS, PGDATA (default /var/lib/postgresql/18/docker, as the 18+ images)
#   /docker-entrypoint-initdb.d/*.sh (executed if executable, else sourced) and
#   *.sql, run once against a fresh data directory through the local socket
#   command `postgres [flags]`; runs as the postgres user
set -Eeo pipefail

file_env() {
    # file_env VAR [DEFAULT]: VAR, or the content of the file named by VAR_FILE.
    local var="$1" file_var="${1}_FILE" def="${2:-}"
    if [ -n "${!var:-}" ] && [ -n "${!file_var:-}" ]; then
        echo >&2 "error: both $var and $file_var are set (but are exclusive)"
        exit 1
    fi
    local val="$def"
    if [ -n "${!var:-}" ]; then
        val="${!var}"
    elif [ -n "${!file_var:-}" ]; then
        val="$(< "${!file_var}")"
    fi
    export "$var"="$val"
    unset "$file_var"
}

if [ "${1:0:1}" = '-' ]; then
    set -- postgres "$@"
fi

if [ "$1" = 'postgres' ] && [ "$(id -u)" = '0' ]; then
    mkdir -p "$PGDATA"
    chown -R postgres:postgres "$PGDATA" /var/run/postgresql
    chmod 700 "$PGDATA"
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$BASH_SOURCE" "$@"
fi

if [ "$1" = 'postgres' ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
    file_env POSTGRES_PASSWORD
    file_env POSTGRES_USER postgres
    file_env POSTGRES_DB "$POSTGRES_USER"
    file_env POSTGRES_INITDB_ARGS
    if [ -z "$POSTGRES_PASSWORD" ]; then
        echo >&2 "error: database is uninitialized and superuser password is not specified (POSTGRES_PASSWORD[_FILE])"
        exit 1
    fi
    pwfile="$(mktemp)"
    printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
    # shellcheck disable=SC2086
    initdb --username="$POSTGRES_USER" --pwfile="$pwfile" --auth-local=trust --auth-host=scram-sha-256 \
        $POSTGRES_INITDB_ARGS -D "$PGDATA" >/dev/null
    rm -f "$pwfile"
    {
        echo
        echo "listen_addresses = '*'"
    } >> "$PGDATA/postgresql.conf"
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"

    # Temporary server on the socket only, for the database and the init scripts.
    pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -p ${PGPORT:-5432}" -w start >/dev/null
    export PGPASSWORD="$POSTGRES_PASSWORD"
    psql=(psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password --no-psqlrc)
    if [ "$POSTGRES_DB" != 'postgres' ]; then
        "${psql[@]}" --dbname postgres --set db="$POSTGRES_DB" <<<'CREATE DATABASE :"db";' >/dev/null
    fi
    psql+=(--dbname "$POSTGRES_DB")
    for f in /docker-entrypoint-initdb.d/*; do
        case "$f" in
            *.sh)
                if [ -x "$f" ]; then
                    echo "$0: running $f"; "$f"
                else
                    echo "$0: sourcing $f"; . "$f"
                fi
                ;;
            *.sql) echo "$0: running $f"; "${psql[@]}" -f "$f" ;;
            *) [ -e "$f" ] && echo "$0: ignoring $f" ;;
        esac
    done
    unset PGPASSWORD
    pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
    echo "PostgreSQL init process complete; ready for start up."
fi

exec "$@"
