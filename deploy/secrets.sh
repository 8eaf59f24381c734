#!/usr/bin/env bash
# The swarm secrets stack.yml needs (all declared external there).
#
#   deploy/secrets.sh DIR            fill DIR with a file per secret (missing files
#                                    only: random values for passwords and keys,
#                                    derived files rebuilt), then create each
#                                    missing swarm secret from its file
#   deploy/secrets.sh --files DIR    only write the files
#   deploy/secrets.sh --remove       remove the swarm secrets (not the files)
#   deploy/secrets.sh --list         print the secret names
#
# Put your own values in DIR first where random ones make no sense:
#   alertmanager_webhook_url    the on-call webhook (chat or paging tool) URL
#   alertmanager_smtp_password  the SMTP relay's password
#   admin_users                 htpasswd lines for Traefik's basic auth, e.g.
#                               htpasswd -nbB admin 'a long passphrase' > DIR/admin_users
#   sigfox_tokens               one token per line (the Sigfox callback's
#                               Authorization header value)
#   lorawan_tokens              the same for the LoRaWAN network servers'
#                               HTTP integrations (ChirpStack, The Things Stack)
#   api_tokens                  the read API's bearer tokens, one per line
#   alerts_webhook_url          where alert events are posted (blank: nowhere);
#                               alerts_webhook_secret signs them
#   archive_access_key_id       the WAL archive bucket's credentials (blank until
#   archive_secret_access_key   PULSESTACK_ARCHIVE_URL is set: docs/durability.md);
#                               archive_key, generated, encrypts the WAL before
#                               upload: keep a copy apart from the bucket's
# Generated values are hex (URL- and config-safe). DIR holds secrets: keep it
# on the control machine only (mode 0700), or delete it once the secrets exist.
#
# TLS inside the stack: a CA of its own (ca_cert, ca_key; the key never leaves
# DIR) signs the NATS servers' certificate (nats_server_cert, nats_server_key),
# valid for the names clients and routes use, and PostgreSQL's
# (postgres_server_cert, postgres_server_key, for the name `postgres`). Delete
# a certificate's files to get a new one; ca_key is needed for that (keep DIR,
# or start a new CA).
# The NATS servers hold bcrypt hashes of the service passwords, never the
# passwords: the hashing needs the `bcrypt` package, in the repository's
# .venv (make .venv/bin/.installed) or the python3 of PULSESTACK_PYTHON.
#
# A swarm secret cannot change while a service uses it. To rotate one, create
# it under a new name, point the service at it (stack.yml), deploy, then remove
# the old one. nats_server_secrets is derived from the NATS passwords: rebuild
# it (delete the file, run this again) whenever one of them changes.
set -euo pipefail

SECRETS=(
    postgres_password postgres_raw_password
    postgres_registry_password postgres_reader_password postgres_alerting_password postgres_owner_password
    nats_admin_password nats_ingest_udp_password nats_ingest_http_password
    nats_raw_processor_password nats_alerting_password
    nats_system_password nats_route_password nats_server_secrets
    ca_cert ca_key nats_server_cert nats_server_key postgres_server_cert postgres_server_key
    device_master_key sigfox_tokens lorawan_tokens api_tokens alerts_webhook_url alerts_webhook_secret
    grafana_admin_password admin_users admin_password portainer_admin_password
    alertmanager_webhook_url alertmanager_smtp_password
    archive_access_key_id archive_secret_access_key archive_key
)
# Files that are inputs only (their values reach the swarm through a derived secret).
INPUT_ONLY=(nats_system_password nats_route_password admin_password ca_key)
LABEL="org.pulsestack.created-by=deploy/secrets.sh"

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PULSESTACK_PYTHON:-$( [ -x "$REPO/.venv/bin/python" ] && echo "$REPO/.venv/bin/python" || echo python3)}"

random_hex() { python3 -c "import secrets, sys; print(secrets.token_hex(int(sys.argv[1])))" "$1"; }

write_new() {  # write_new FILE VALUE: only if FILE does not exist yet
    [ -e "$1" ] && return 0
    (umask 077; printf '%s\n' "$2" > "$1")
}

# The stack's own CA (DIR/ca_cert, DIR/ca_key), once: what its internal TLS servers' certificates chain to.
ca() {  # ca DIR
    [ -e "$1/ca_cert" ] && return 0
    (umask 077; openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
        -subj "/CN=pulsestack internal CA" -keyout "$1/ca_key" -out "$1/ca_cert" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null)
}

# A certificate signed by that CA (DIR/NAME_cert, DIR/NAME_key), once, valid for the names SAN... (host
# names or IP addresses) as a server and as a client (NATS routes present it to each other).
server_cert() {  # server_cert DIR NAME SAN...
    local dir="$1" name="$2" sans="" san
    shift 2
    [ -e "$dir/${name}_cert" ] && return 0
    for san in "$@"; do
        case "$san" in *[!0-9.]*) sans+="${sans:+,}DNS:$san" ;; *) sans+="${sans:+,}IP:$san" ;; esac
    done
    (umask 077
     openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=$1" \
         -keyout "$dir/${name}_key" -out "$dir/${name}.csr" 2>/dev/null
     openssl x509 -req -in "$dir/${name}.csr" -CA "$dir/ca_cert" -CAkey "$dir/ca_key" -CAcreateserial \
         -days 825 -out "$dir/${name}_cert" -extfile <(printf '%s\n' "subjectAltName=$sans" \
         "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth,clientAuth") 2>/dev/null
     rm -f "$dir/${name}.csr" "$dir/ca_cert.srl")
}

write_files() {
    local dir="$1" name
    mkdir -p "$dir"
    chmod 700 "$dir"
    for name in postgres_password postgres_raw_password postgres_registry_password \
        postgres_reader_password postgres_alerting_password postgres_owner_password nats_admin_password \
        nats_ingest_udp_password nats_ingest_http_password nats_raw_processor_password nats_alerting_password \
        nats_system_password nats_route_password grafana_admin_password admin_password portainer_admin_password \
        alertmanager_smtp_password alerts_webhook_secret; do
        write_new "$dir/$name" "$(random_hex 24)"
    done
    # 32 bytes, 64 hex digits: the device keys' master secret (pulsestack/keys.py).
    write_new "$dir/device_master_key" "$(random_hex 32)"
    write_new "$dir/sigfox_tokens" "$(random_hex 24)"
    write_new "$dir/lorawan_tokens" "$(random_hex 24)"
    write_new "$dir/api_tokens" "$(random_hex 24)"
    # 32 random bytes in base64: the WAL archive's AES-256-GCM key (pulsestack/store/archive.py).
    write_new "$dir/archive_key" "$(python3 -c 'import base64, os; print(base64.b64encode(os.urandom(32)).decode())')"
    # Blank: the bucket's credentials are the operator's (a secret cannot be empty, hence the newline).
    write_new "$dir/archive_access_key_id" ""
    write_new "$dir/archive_secret_access_key" ""
    # Blank: no webhook for alert events until the operator sets one (a secret cannot be empty).
    write_new "$dir/alerts_webhook_url" ""
    # Nowhere to deliver to until the operator sets a real URL; Alertmanager needs a valid one.
    write_new "$dir/alertmanager_webhook_url" "http://127.0.0.1:9/alertmanager-webhook-not-configured"
    if [ ! -e "$dir/admin_users" ]; then
        local hash
        if command -v htpasswd >/dev/null 2>&1; then
            hash="$(htpasswd -nbB admin "$(cat "$dir/admin_password")")"
        else
            hash="admin:$(openssl passwd -apr1 "$(cat "$dir/admin_password")")"
        fi
        write_new "$dir/admin_users" "$hash"
    fi
    ca "$dir"
    # The names clients (nats, and the servers they learn of) and routes (nats-N) reach the servers by.
    server_cert "$dir" nats_server nats nats-1 nats-2 nats-3
    # PostgreSQL, as its clients reach it (`postgres` on the db network; they verify the name).
    server_cert "$dir" postgres_server postgres
    # What the NATS servers read (deploy/nats/nats-server.conf includes it): bcrypt hashes of every
    # user's password, the routes' password (plain too: a server logs in to the others with it), as
    # config variables.
    "$PYTHON" - "$dir" <<'EOF'
import json, os, sys
try:
    import bcrypt
except ImportError:
    sys.exit("secrets: the bcrypt package is missing: make .venv/bin/.installed, or set PULSESTACK_PYTHON "
             "to a python3 that has it")
d = sys.argv[1]
read = lambda name: open(os.path.join(d, name)).read().strip()
route = read("nats_route_password")
lines = ["# Generated by deploy/secrets.sh from the nats_* password files; a NATS config fragment."]
# Cost 11, as `nats server passwd`: ~0.1 s per connection, which clients pay once, not per message.
hashed = lambda value: bcrypt.hashpw(value.encode(), bcrypt.gensalt(11)).decode()
for var, name in [
    ("NATS_ADMIN_PASSWORD", "nats_admin_password"),
    ("NATS_INGEST_UDP_PASSWORD", "nats_ingest_udp_password"),
    ("NATS_INGEST_HTTP_PASSWORD", "nats_ingest_http_password"),
    ("NATS_RAW_PROCESSOR_PASSWORD", "nats_raw_processor_password"),
    ("NATS_ALERTING_PASSWORD", "nats_alerting_password"),
    ("NATS_SYSTEM_PASSWORD", "nats_system_password"),
    ("NATS_ROUTE_PASSWORD", "nats_route_password"),
]:
    lines.append(f"{var}: {json.dumps(hashed(read(name)))}")
routes = [f"nats-route://route:{route}@nats-{i}:6222" for i in (1, 2, 3)]
lines.append(f"NATS_ROUTES: {json.dumps(routes)}")
path = os.path.join(d, "nats_server_secrets")
fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
with os.fdopen(fd, "w") as f:
    f.write("\n".join(lines) + "\n")
os.replace(path + ".tmp", path)
EOF
}

is_input_only() { local n; for n in "${INPUT_ONLY[@]}"; do [ "$n" = "$1" ] && return 0; done; return 1; }

create_secrets() {
    local dir="$1" name created=0
    for name in "${SECRETS[@]}"; do
        is_input_only "$name" && continue
        [ -s "$dir/$name" ] || { echo "secrets: $dir/$name missing" >&2; exit 1; }
        if docker secret inspect "$name" >/dev/null 2>&1; then
            continue
        fi
        docker secret create --label "$LABEL" "$name" "$dir/$name" >/dev/null
        created=$((created + 1))
    done
    echo "secrets: $created created, $(( ${#SECRETS[@]} - ${#INPUT_ONLY[@]} - created )) already present"
}

remove_secrets() {
    local name
    for name in "${SECRETS[@]}"; do
        is_input_only "$name" && continue
        docker secret rm "$name" >/dev/null 2>&1 || true
    done
}

# Sourced (tests: ca, server_cert), it only defines the functions (`return` works only there).
if (return 0 2>/dev/null); then return 0; fi
case "${1:-}" in
    --files) [ -n "${2:-}" ] || { echo "usage: $0 --files DIR" >&2; exit 2; }; write_files "$2" ;;
    --remove) remove_secrets ;;
    --list) for n in "${SECRETS[@]}"; do is_input_only "$n" || echo "$n"; done ;;
    ""|-h|--help) sed -n '2,38p' "$0"; exit 2 ;;
    *) write_files "$1"; create_secrets "$1" ;;
esac
