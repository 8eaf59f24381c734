"""What both proofs stand on: where the swarm is (this machine's engine or a simulated cluster's), its
services and tasks, the stack's NATS and PostgreSQL as a proof reaches them, Prometheus's API, and the secrets
deploy/secrets.sh made.

Environment (set by deploy/swarm-proof.sh and deploy/cluster-proof.sh): PULSESTACK_PROOF_SECRETS (the secret
files), PULSESTACK_PROOF_WORK, PULSESTACK_PROOF_UDP_PORT, _HTTP_PORT, _PG_PORT, _NATS_PORTS (comma-separated),
PULSESTACK_PROOF_NOT_RUNNABLE (services without an offline image, comma-separated).
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import nats
from nats.aio.client import Client as NATS

from pulsestack.services import SERVICES

STACK = "pulsestack"
PULSESTACK_JOBS = tuple(s.name for s in SERVICES)
# Stand-ins run these too, and pulsestack/postgres's base-backup scheduler; their targets must be up as well.
SCRAPED_JOBS = (*PULSESTACK_JOBS, "archive-scheduler", "prometheus", "alertmanager", "node-exporter")
REPO = Path(__file__).resolve().parents[2]
SECRETS = Path(os.environ.get("PULSESTACK_PROOF_SECRETS", "/nonexistent"))
WORK = Path(os.environ.get("PULSESTACK_PROOF_WORK", "/tmp"))
UDP_PORT = int(os.environ.get("PULSESTACK_PROOF_UDP_PORT", "2204"))
HTTP_PORT = int(os.environ.get("PULSESTACK_PROOF_HTTP_PORT", "17070"))
PG_PORT = int(os.environ.get("PULSESTACK_PROOF_PG_PORT", "15432"))
NATS_PORTS = [int(p) for p in os.environ.get("PULSESTACK_PROOF_NATS_PORTS", "14222,14223,14224").split(",")]
NOT_RUNNABLE = {s for s in os.environ.get("PULSESTACK_PROOF_NOT_RUNNABLE", "").split(",") if s}
DOMAIN = os.environ.get("PULSESTACK_DOMAIN", "pulsestack.test")


def say(*parts: object) -> None:
    print(time.strftime("%H:%M:%S"), *parts, flush=True)


def secret(name: str) -> str:
    return (SECRETS / name).read_text().strip()


# ------------------------------------------------------------------------------------------- docker


@dataclass
class Engines:
    """Where the proof finds the swarm: this machine's engine (the swarm proof), or the engines of a simulated
    cluster's nodes (the cluster proof: containers named by the node's host name, reached with docker exec).
    The harness's one piece of state, changed only through `point_at` and `use_manager`."""

    manager: str = ""  # node whose engine answers as a manager; "": this machine's
    addresses: dict[str, str] = field(default_factory=dict)  # node host name -> its address; empty: 127.0.0.1
    # A node's swarm ID names it for as long as it is in the swarm (one that joins again gets a new ID).
    hostnames: dict[str, str] = field(default_factory=dict)

    def point_at(self, addresses: dict[str, str]) -> None:
        """A cluster's nodes (host name -> address); the manager in use stays if it is one of them."""
        self.addresses = dict(addresses)
        if self.manager not in self.addresses:
            self.manager = ""

    def use_manager(self, node: str) -> None:
        self.manager = node

    def command(self, node: str = "") -> list[str]:
        node = node or self.manager
        return ["docker", "exec", "-i", node, "docker"] if node else ["docker"]

    def address(self, node: str) -> str:
        return self.addresses.get(node, "127.0.0.1")


ENGINES = Engines()


def docker(*args: str, check: bool = True, node: str = "") -> str:
    done = subprocess.run([*ENGINES.command(node), *args], capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def node_of(task: dict[str, Any]) -> str:
    """Host name of the node a task was scheduled on ("" on a one-engine swarm)."""
    if not ENGINES.addresses:
        return ""
    node_id = task["NodeID"]
    known = ENGINES.hostnames
    if node_id not in known:
        known[node_id] = docker("node", "inspect", "--format", "{{.Description.Hostname}}", node_id).strip()
    return known[node_id]


def in_task(task: dict[str, Any], *args: str, check: bool = True) -> str:
    """`docker exec` into a task's container, on whichever node it runs."""
    container = task["Status"]["ContainerStatus"]["ContainerID"]
    return docker("exec", container, *args, check=check, node=node_of(task))


def running(name: str) -> list[dict[str, Any]]:
    return [t for t in service_tasks(name)
            if t.get("DesiredState") == "running" and t["Status"]["State"] == "running"]


def address_of(name: str) -> str:
    """Address of the node running a service's (first) task: where its host-mode ports answer."""
    tasks = running(name)
    if not tasks:
        raise RuntimeError(f"{name} has no running task")
    return ENGINES.address(node_of(tasks[0]))


def docker_json_lines(*args: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in docker(*args, "--format", "{{json .}}").splitlines() if line.strip()]


def stack_services() -> dict[str, dict[str, Any]]:
    """Short service name -> `docker service inspect` of every service of the stack."""
    ids = docker("service", "ls", "-q", "--filter", f"label=com.docker.stack.namespace={STACK}").split()
    if not ids:
        return {}
    out = {}
    for service in json.loads(docker("service", "inspect", *ids)):
        out[service["Spec"]["Name"].removeprefix(f"{STACK}_")] = service
    return out


def service_tasks(name: str) -> list[dict[str, Any]]:
    ids = docker("service", "ps", "-q", "--no-trunc", f"{STACK}_{name}").split()
    # Tasks may be pruned from the history between the two calls: take those still there.
    return json.loads(docker("inspect", "--type", "task", *ids, check=False) or "[]") if ids else []


def container_health(task: dict[str, Any]) -> str:
    """healthy | unhealthy | starting | none (no healthcheck) | gone."""
    container = (task["Status"].get("ContainerStatus") or {}).get("ContainerID", "")
    if not container:
        return "gone"
    out = docker("inspect", "--format", "{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}",
                 container, check=False, node=node_of(task)).strip()
    return out or "gone"


@dataclass
class ServiceState:
    desired: int
    running: int
    healthy: int
    completed: int
    job: bool

    @property
    def ready(self) -> bool:
        if self.job:
            return self.completed >= self.desired
        return self.running == self.desired and self.healthy == self.desired


def service_state(name: str, service: dict[str, Any]) -> ServiceState:
    mode = service["Spec"]["Mode"]
    job = "ReplicatedJob" in mode
    tasks = service_tasks(name)
    if "Replicated" in mode:
        desired = int(mode["Replicated"].get("Replicas", 1))
    elif job:
        desired = int(mode["ReplicatedJob"].get("TotalCompletions", 1))
    else:  # global: one task per eligible node, which the orchestrator knows
        desired = sum(1 for t in tasks if t.get("DesiredState") == "running")
    running_count = healthy = completed = 0
    for task in tasks:
        state = task["Status"]["State"]
        if state == "complete":
            completed += 1
        if task.get("DesiredState") != "running" or state != "running":
            continue
        running_count += 1
        if container_health(task) in ("healthy", "none"):
            healthy += 1
    return ServiceState(desired, running_count, healthy, completed, job)


def wait_converged(names: list[str], timeout: float, what: str) -> float:
    """Waits until each named service runs its desired replicas, all healthy (jobs: completed)."""
    started = time.monotonic()
    last_report = 0.0
    while True:
        services = stack_services()
        pending = {}
        for name in names:
            if name not in services:
                pending[name] = "missing"
                continue
            st = service_state(name, services[name])
            if not st.ready:
                pending[name] = (f"{st.completed}/{st.desired} completed" if st.job
                                 else f"{st.running}/{st.desired} running, {st.healthy} healthy")
        elapsed = time.monotonic() - started
        if not pending:
            return elapsed
        if elapsed > timeout:
            for name in pending:
                print(docker("service", "ps", "--no-trunc", f"{STACK}_{name}", check=False), file=sys.stderr)
            raise SystemExit(f"{what}: not converged after {timeout:.0f} s: {pending}")
        if elapsed - last_report >= 15:
            say(f"  waiting ({elapsed:.0f} s): " + ", ".join(f"{k} {v}" for k, v in sorted(pending.items())))
            last_report = elapsed
        time.sleep(2)


def runnable_services(not_runnable: Collection[str] = NOT_RUNNABLE) -> list[str]:
    return sorted(name for name in stack_services() if name not in not_runnable)


# --------------------------------------------------------------------------------------- the bus & db


def nats_urls(user: str, password: str) -> list[str]:
    quoted = urllib.parse.quote(password, safe="")
    urls = []
    for number, port in enumerate(NATS_PORTS, start=1):
        try:
            urls.append(f"tls://{user}:{quoted}@{address_of(f'nats-{number}')}:{port}")
        except RuntimeError:  # a server being replaced: the others answer
            continue
    return urls


async def admin_nats() -> NATS:
    # TLS with the stack's CA; the servers' certificate is for their names on the bus network, not this address.
    return await nats.connect(nats_urls("admin", secret("nats_admin_password")), max_reconnect_attempts=-1,
                              reconnect_time_wait=0.5, connect_timeout=5, allow_reconnect=True,
                              tls=ssl.create_default_context(cafile=str(SECRETS / "ca_cert")), tls_hostname="nats")


class TLSFor(ssl.SSLContext):
    """Verifies a server's certificate for `name` whatever address is dialled: asyncpg checks the host it
    connects to, and the proof reaches PostgreSQL by a relay's published port, not by the name `postgres` that
    the certificate holds (and that the services check, with sslmode=verify-full)."""

    name: str

    def wrap_bio(self, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, server_side: bool = False,
                 server_hostname: str | bytes | None = None, session: ssl.SSLSession | None = None) -> ssl.SSLObject:
        return super().wrap_bio(incoming, outgoing, server_side, self.name, session)


def tls_for(name: str) -> TLSFor:
    context = TLSFor(ssl.PROTOCOL_TLS_CLIENT)  # verifies the chain and the name
    context.load_verify_locations(cafile=str(SECRETS / "ca_cert"))
    context.name = name
    return context


async def db(role: str, password_secret: str) -> asyncpg.Connection:
    # Through tests/swarm/stack.override.yml's relay on the db network, over TLS (pg_hba.conf wants both).
    return await asyncpg.connect(host=address_of("postgres-relay"), port=PG_PORT, user=role,
                                 password=secret(password_secret), database="pulsestack", timeout=10,
                                 ssl=tls_for("postgres"))


async def eventually(check: Callable[[], Awaitable[bool]], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            if await check():
                return
        except Exception as exc:  # a server or a connection may be briefly away
            last = str(exc)
        else:
            last = "condition false"
        if time.monotonic() > deadline:
            raise SystemExit(f"{what}: still not true after {within:.0f} s ({last})")
        await asyncio.sleep(0.5)


def metric_value(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        if head.split("{")[0] != name:
            continue
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def service_log_tail(name: str, lines: int = 20) -> str:
    """A service's newest log lines from all its tasks (containers log to stderr, passed on as stderr)."""
    done = subprocess.run([*ENGINES.command(""), "service", "logs", "--tail", str(lines), f"{STACK}_{name}"],
                          capture_output=True, text=True)
    return done.stdout + done.stderr


# --------------------------------------------------------------------------------------- Prometheus


def prometheus_get(path: str, **params: str) -> Any:
    tasks = running("prometheus")
    if not tasks:
        raise RuntimeError("no running Prometheus task")
    url = f"http://127.0.0.1:9090{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
    out = in_task(tasks[0], "wget", "-q", "-O", "-", url)
    body = json.loads(out)
    if body.get("status") != "success":
        raise RuntimeError(f"{path}: {body}")
    return body["data"]


def running_tasks(name: str) -> int:
    return len(running(name))


# The bucket stack.yml's PostgreSQL archives into (the S3 stand-in's, in both proofs).
ARCHIVE_BUCKET = "pulsestack-archive"
ARCHIVE_URL = f"s3://{ARCHIVE_BUCKET}/db"
