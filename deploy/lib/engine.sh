# Sourced by deploy/swarm-proof.sh and deploy/cluster-proof.sh: a Docker engine, a local registry used as
# the engine's registry mirror, and a base image made without any registry.
#
# Everything this file changes on the machine is recorded under $STATE so
# that engine_restore() can undo it: packages stay installed (they are the
# machine's tools), but the daemon.json edit, the registry process and a
# dockerd this script started are taken back.

REGISTRY_ADDR="${PULSESTACK_PROOF_REGISTRY:-127.0.0.1:5000}"
# Where the registry listens: this machine only, unless other engines (the
# cluster proof's nodes) pull from it too.
REGISTRY_LISTEN="${PULSESTACK_PROOF_REGISTRY_LISTEN:-$REGISTRY_ADDR}"
BASE_IMAGE="pulsestack-proof/debian-base:bookworm"
# The PostgreSQL stand-in's base: Debian's postgresql-18 (built with OpenSSL, so the stand-in speaks TLS as
# the official image does) is in forky, whose packages need forky's libraries (libc6 2.43), not bookworm's.
POSTGRES_BASE_IMAGE="pulsestack-proof/debian-base:forky"

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf '%s: %s\n' "${PROOF_NAME:-proof}" "$*" >&2; exit 1; }

# Installs Debian packages (by the command each provides) that are missing,
# without letting their daemons start on install.
apt_install_missing() {
    local packages=() pair cmd pkg
    for pair in "$@"; do
        cmd="${pair%%=*}"; pkg="${pair#*=}"
        command -v "$cmd" >/dev/null 2>&1 || packages+=("$pkg")
    done
    [ "${#packages[@]}" -eq 0 ] && return 0
    log "installing ${packages[*]} (apt)"
    local created_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        created_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -qq --no-install-recommends "${packages[@]}" >"$CACHE/apt.log" 2>&1; then
        apt-get update -qq >>"$CACHE/apt.log" 2>&1
        apt-get install -y -qq --no-install-recommends "${packages[@]}" >>"$CACHE/apt.log" 2>&1 \
            || { [ "$created_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d; tail -20 "$CACHE/apt.log" >&2; die "apt-get install failed"; }
    fi
    [ "$created_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
    return 0
}

registry_up() { (exec 3<>"/dev/tcp/${REGISTRY_ADDR%:*}/${REGISTRY_ADDR#*:}") 2>/dev/null; }

start_registry() {
    if registry_up; then
        log "registry already answering on $REGISTRY_ADDR"
        return 0
    fi
    mkdir -p "$CACHE/registry"
    cat > "$STATE/registry.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $CACHE/registry
  delete:
    enabled: true
http:
  addr: $REGISTRY_LISTEN
EOF
    setsid docker-registry serve "$STATE/registry.yml" >"$STATE/registry.log" 2>&1 < /dev/null &
    echo $! > "$STATE/registry.pid"
    local i
    for i in $(seq 1 50); do registry_up && { log "registry started on $REGISTRY_ADDR (pid $(cat "$STATE/registry.pid"))"; return 0; }; sleep 0.2; done
    cat "$STATE/registry.log" >&2
    die "the registry did not start"
}

# daemon.json: the local registry as mirror of Docker Hub (so stack.yml keeps
# its image names) and as an insecure (plain HTTP) registry.
configure_daemon_json() {
    mkdir -p /etc/docker
    if [ -e /etc/docker/daemon.json ] && [ ! -e "$STATE/daemon.json.orig" ] && [ ! -e "$STATE/daemon.json.absent" ]; then
        cp -p /etc/docker/daemon.json "$STATE/daemon.json.orig"
    elif [ ! -e /etc/docker/daemon.json ] && [ ! -e "$STATE/daemon.json.orig" ]; then
        touch "$STATE/daemon.json.absent"
    fi
    python3 - "$REGISTRY_ADDR" <<'EOF'
import json, os, sys
addr = sys.argv[1]
path = "/etc/docker/daemon.json"
conf = json.load(open(path)) if os.path.exists(path) and os.path.getsize(path) else {}
mirrors = conf.setdefault("registry-mirrors", [])
if f"http://{addr}" not in mirrors:
    mirrors.insert(0, f"http://{addr}")
insecure = conf.setdefault("insecure-registries", [])
if addr not in insecure:
    insecure.append(addr)
json.dump(conf, open(path, "w"), indent=2)
EOF
}

docker_up() { docker info >/dev/null 2>&1; }

# This machine's dockerd: not the ones inside the cluster proof's VMs, which
# the host's process list shows too (they live in other mount namespaces).
host_dockerd_pid() {
    local pid own
    own="$(readlink /proc/self/ns/mnt)"
    for pid in $(pidof dockerd); do
        [ "$(readlink "/proc/$pid/ns/mnt" 2>/dev/null)" = "$own" ] && { echo "$pid"; return 0; }
    done
    return 1
}

start_dockerd() {
    if host_dockerd_pid >/dev/null; then
        # registry-mirrors and insecure-registries are reloaded on SIGHUP.
        kill -HUP "$(host_dockerd_pid)"
        sleep 1
        log "dockerd already running; configuration reloaded"
    else
        setsid dockerd >"$CACHE/dockerd.log" 2>&1 < /dev/null &
        echo $! > "$STATE/dockerd.pid"
        log "dockerd started (pid $(cat "$STATE/dockerd.pid"), log $CACHE/dockerd.log)"
    fi
    local i
    for i in $(seq 1 120); do docker_up && break; sleep 0.5; done
    docker_up || { tail -30 "$CACHE/dockerd.log" >&2; die "dockerd did not come up"; }
    docker info --format '{{json .RegistryConfig.Mirrors}}' | grep -q "$REGISTRY_ADDR" \
        || die "the engine does not list the registry mirror http://$REGISTRY_ADDR"
}

step_engine() {
    [ "$(id -u)" = 0 ] || die "run as root (installs packages, starts dockerd)"
    apt_install_missing dockerd=docker.io debootstrap=debootstrap docker-registry=docker-registry
    log "$(dockerd --version)"
    start_registry
    configure_daemon_json
    start_dockerd
}

# The apt mirror this machine is configured with (never written into the repo); it serves every Debian
# suite, forky included.
apt_mirror() {
    python3 - <<'EOF'
import glob, re
uris = []
for path in ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*"))]:
    try:
        text = open(path).read()
    except OSError:
        continue
    if path.endswith(".sources"):
        for stanza in re.split(r"\n\s*\n", text):
            fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.*)$", stanza, re.M))
            if "bookworm" in fields.get("Suites", "").split() and "deb" in fields.get("Types", "deb").split():
                uris += fields.get("URIs", "").split()
    else:
        for line in text.splitlines():
            m = re.match(r"\s*deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+bookworm\s", line)
            if m:
                uris.append(m.group(1))
uris = [u for u in uris if u.startswith(("http://", "https://"))]
print(uris[0] if uris else "")
EOF
}

# base_image SUITE IMAGE [PACKAGE,...]: IMAGE made by debootstrap (minbase) of SUITE from the machine's apt
# mirror, with the packages named; its rootfs is cached under $CACHE/base.
base_image() {
    local suite="$1" image="$2" include="ca-certificates${3:+,$3}"
    # An image or a cached rootfs made from another package list (a package added since) is not reused.
    if [ "$(docker image inspect -f '{{index .Config.Labels "pulsestack.packages"}}' "$image" 2>/dev/null)" = "$include" ]; then
        log "base image $image present"
        return 0
    fi
    local tarball="$CACHE/base/$suite-minbase-$(printf %s "$include" | md5sum | cut -c1-8).tar"
    if [ ! -s "$tarball" ]; then
        local mirror rootfs script=()
        mirror="$(apt_mirror)"
        [ -n "$mirror" ] || die "no bookworm apt mirror found in /etc/apt/sources.list*"
        # A suite newer than this debootstrap (forky on bookworm's) bootstraps as sid, like every testing suite.
        [ -e "/usr/share/debootstrap/scripts/$suite" ] || script=(/usr/share/debootstrap/scripts/sid)
        rootfs="$(mktemp -d "$CACHE/rootfs.XXXXXX")"
        log "debootstrap $suite (minbase + $include) from the machine's apt mirror"
        debootstrap --variant=minbase --include="$include" "$suite" "$rootfs" "$mirror" "${script[@]}" \
            >"$CACHE/debootstrap-$suite.log" 2>&1 \
            || { tail -20 "$CACHE/debootstrap-$suite.log" >&2; rm -rf "$rootfs"; die "debootstrap $suite failed"; }
        # Smaller image: no apt lists or caches; apt inside builds fetches its lists again.
        rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb
        # The machine's own word on release dates goes with its mirror: a mirror serving a frozen snapshot
        # has testing's Release files past their Valid-Until, which apt then refuses (stable's have none).
        local dates="$rootfs/etc/apt/apt.conf.d/99machine-release-dates"
        apt-config dump | grep -E '^Acquire::Check-(Valid-Until|Date) ' > "$dates" || rm -f "$dates"
        mkdir -p "$CACHE/base"
        tar -C "$rootfs" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
        rm -rf "$rootfs"
    else
        log "base rootfs from cache $tarball"
    fi
    echo "$image" >> "$STATE/built-images"
    docker import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' --change "LABEL pulsestack.packages=$include" \
        "$tarball" "$image" >/dev/null
    log "imported $image ($(docker image inspect -f '{{.Size}}' "$image" | awk '{printf "%d MB", $1/1e6}'))"
}

step_base() {
    # libjemalloc2: the services' allocator (deploy/runtime.Dockerfile, pulsestack/allocator.py).
    base_image bookworm "$BASE_IMAGE" python3,python3-venv,libjemalloc2
    base_image forky "$POSTGRES_BASE_IMAGE"
}

engine_restore() {
    if [ -e "$STATE/registry.pid" ]; then
        kill "$(cat "$STATE/registry.pid")" 2>/dev/null || true
        rm -f "$STATE/registry.pid"
        log "registry stopped"
    fi
    if [ -e "$STATE/daemon.json.orig" ]; then
        cp -p "$STATE/daemon.json.orig" /etc/docker/daemon.json && rm -f "$STATE/daemon.json.orig"
    elif [ -e "$STATE/daemon.json.absent" ]; then
        rm -f /etc/docker/daemon.json "$STATE/daemon.json.absent"
    fi
    if [ -e "$STATE/dockerd.pid" ]; then
        local pid
        pid="$(cat "$STATE/dockerd.pid")"
        kill "$pid" 2>/dev/null || true
        local i
        for i in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        rm -f "$STATE/dockerd.pid"
        log "dockerd stopped"
    elif host_dockerd_pid >/dev/null; then
        kill -HUP "$(host_dockerd_pid)" 2>/dev/null || true
    fi
}
