# pulsestack/runtime: what every pulsestack service image stands on. A virtual environment with the
# pulsestack distribution (the shared package and every service's package) and its dependencies, a
# non-root user, the environment of a read-only container, and the OCI labels they share. Each
# service's Dockerfile (ingest-udp/, ingest-http/, processors/, alerting/, api/, swarm-exporter/) adds
# its ports, health check, entry point and title.
#
# Build from the repository root, first (deploy/build-images.sh does it all):
#   docker build -f deploy/runtime.Dockerfile -t pulsestack/runtime:0.1.0 .
# The base image is an argument, so the same file builds on a locally made Debian base
# (deploy/swarm-proof.sh) or on the official python image. build/wheels holds the pulsestack wheel
# (`pip wheel --no-deps .`) and its dependencies, built on the host. PIP_INSTALL_OPTIONS=--no-index
# installs only from there (no index reachable from containers); empty, pip may fetch what it lacks.
ARG PYTHON_IMAGE=python:3.12-slim

FROM ${PYTHON_IMAGE} AS build
ARG PIP_INSTALL_OPTIONS=""
COPY build/wheels/ /wheels/
RUN set -e; \
    python3 -m venv /opt/pulsestack; \
    /opt/pulsestack/bin/pip install --no-cache-dir --disable-pip-version-check --no-compile \
        ${PIP_INSTALL_OPTIONS} --find-links /wheels pulsestack; \
    /opt/pulsestack/bin/pip uninstall -y -q pip setuptools wheel >/dev/null 2>&1 || true; \
    /opt/pulsestack/bin/python -m compileall -q /opt/pulsestack/lib; \
    /opt/pulsestack/bin/python -c "import pulsestack, ingest_udp, ingest_http, processors, alerting, api, swarm_exporter, pulsestack_cli"

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 pulsestack \
 && useradd --system --uid 10001 --gid pulsestack --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin pulsestack
COPY --from=build /opt/pulsestack /opt/pulsestack
# jemalloc for every allocation, CPython's small objects included (pulsestack/allocator.py: on CPython's own
# allocators a service's resident memory creeps up after each burst). The proof's base image has it already.
RUN set -e; \
    if ! ls /usr/lib/*-linux-gnu/libjemalloc.so.2 >/dev/null 2>&1; then \
        apt-get update -qq; \
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libjemalloc2 >/dev/null; \
        apt-get clean; rm -rf /var/lib/apt/lists/*; \
    fi; \
    ln -s /usr/lib/*-linux-gnu/libjemalloc.so.2 /usr/local/lib/libjemalloc.so.2
# Every service's health check: `healthz PORT` (deploy/healthz), a shell, not an interpreter.
COPY deploy/healthz /opt/pulsestack/bin/healthz
# Nothing is written at run time (bytecode compiled at build): a read-only root
# filesystem works. Secrets come as files (*_FILE variables, /run/secrets).
ENV PATH=/opt/pulsestack/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LD_PRELOAD=/usr/local/lib/libjemalloc.so.2 \
    PYTHONMALLOC=malloc
USER 10001:10001
# Every service drains on SIGTERM (see its Dockerfile); stack.yml gives it a stop grace period.
STOPSIGNAL SIGTERM

ARG PYTHON_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.vendor="pulsestack" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
