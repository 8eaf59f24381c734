"""swarm-exporter: Docker API answers (as engine 20.10, API 1.41, gives them) turned into the documented series,
served by the real exporter against a fake Docker API on a unix socket."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import tempfile
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

REPO = Path(__file__).resolve().parents[2]
try:
    import swarm_exporter  # noqa: F401 - installed with the distribution once pyproject lists it
except ImportError:
    sys.path.insert(0, str(REPO / "swarm-exporter"))

from swarm_exporter.app import SwarmCollector, serve  # noqa: E402
from swarm_exporter.config import SwarmExporterConfig  # noqa: E402
from swarm_exporter.docker_api import nodes_of, replicas_of  # noqa: E402
from swarm_exporter.wal import WalStatus  # noqa: E402

SERVICES: list[dict[str, Any]] = [
    {  # replicated, one task missing
        "ID": "a1", "Spec": {"Name": "pulsestack_raw-processor", "Mode": {"Replicated": {"Replicas": 2}},
                             "Labels": {"com.docker.stack.namespace": "pulsestack"}},
        "ServiceStatus": {"RunningTasks": 1, "DesiredTasks": 2, "CompletedTasks": 0},
    },
    {  # global: desired is the number of eligible nodes
        "ID": "b2", "Spec": {"Name": "pulsestack_ingest-udp", "Mode": {"Global": {}},
                             "Labels": {"com.docker.stack.namespace": "pulsestack"}},
        "ServiceStatus": {"RunningTasks": 3, "DesiredTasks": 3, "CompletedTasks": 0},
    },
    {  # a job: nothing to keep running, left out
        "ID": "c3", "Spec": {"Name": "pulsestack_setup", "Mode": {"ReplicatedJob": {"MaxConcurrent": 1}},
                             "Labels": {"com.docker.stack.namespace": "pulsestack"}},
        "ServiceStatus": {"RunningTasks": 0, "DesiredTasks": 0, "CompletedTasks": 1},
    },
    {  # another stack
        "ID": "d4", "Spec": {"Name": "other_web", "Mode": {"Replicated": {"Replicas": 1}}, "Labels": {}},
        "ServiceStatus": {"RunningTasks": 0, "DesiredTasks": 1, "CompletedTasks": 0},
    },
]
NODES: list[dict[str, Any]] = [
    {"ID": "n1", "Description": {"Hostname": "pulsestack-manager-1"}, "Spec": {"Role": "manager"},
     "Status": {"State": "ready"}},
    {"ID": "n2", "Description": {"Hostname": "pulsestack-worker-1"}, "Spec": {"Role": "worker"},
     "Status": {"State": "down"}},
]


def test_replicas_from_service_status() -> None:
    got = {r.service: (r.desired, r.running) for r in replicas_of(SERVICES)}
    assert got == {"pulsestack_raw-processor": (2, 1), "pulsestack_ingest-udp": (3, 3), "other_web": (1, 0)}
    only = {r.service for r in replicas_of(SERVICES, stack="pulsestack")}
    assert only == {"pulsestack_raw-processor", "pulsestack_ingest-udp"}


def test_replicas_without_service_status() -> None:
    # An engine older than API 1.41 has no ServiceStatus: replicated services still count, global ones cannot.
    old = [{**s, "ServiceStatus": None} for s in SERVICES]
    got = {r.service: (r.desired, r.running) for r in replicas_of(old)}
    assert got == {"pulsestack_raw-processor": (2, 0), "other_web": (1, 0)}


def test_nodes() -> None:
    got = [(n.node, n.role, n.ready) for n in nodes_of(NODES)]
    assert got == [("pulsestack-manager-1", "manager", True), ("pulsestack-worker-1", "worker", False)]


def test_collector_exposes_only_documented_names() -> None:
    collector = SwarmCollector()
    collector.services = replicas_of(SERVICES)
    collector.nodes = nodes_of(NODES)
    collector.postgres_up = 1.0
    collector.wal = WalStatus(archiving=True, archived=3, failed=1, since_archived=5.0, since_failed=60.0,
                              bytes=3 * 2**24, files=3, ready=0, max_bytes=2**30)
    names = {sample.name for family in collector.collect() for sample in family.samples}
    documented = yaml.safe_load((REPO / "monitoring" / "pulsestack-metrics.yml").read_text())["metrics"]
    assert names == {
        "pulsestack_swarm_service_desired_replicas", "pulsestack_swarm_service_running_replicas",
        "pulsestack_swarm_node_ready", "pulsestack_postgres_up",
        "pulsestack_postgres_wal_archiving_enabled", "pulsestack_postgres_wal_archived_total",
        "pulsestack_postgres_wal_archive_failures_total", "pulsestack_postgres_wal_last_archived_age_seconds",
        "pulsestack_postgres_wal_last_archive_failure_age_seconds", "pulsestack_postgres_wal_archive_ready_files",
        "pulsestack_postgres_wal_bytes", "pulsestack_postgres_wal_files", "pulsestack_postgres_wal_max_bytes",
    }
    assert names <= set(documented)
    for name in names:
        assert "swarm-exporter" in documented[name]["exporters"], name


@contextlib.asynccontextmanager
async def fake_docker(path: str) -> AsyncIterator[list[str]]:
    seen: list[str] = []

    async def services(request: web.Request) -> web.Response:
        seen.append(f"{request.method} {request.path_qs}")
        return web.json_response(SERVICES)

    async def nodes(request: web.Request) -> web.Response:
        seen.append(f"{request.method} {request.path_qs}")
        return web.json_response(NODES)

    app = web.Application()
    app.router.add_get("/services", services)
    app.router.add_get("/nodes", nodes)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.UnixSite(runner, path).start()
    try:
        yield seen
    finally:
        await runner.cleanup()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


async def test_exporter_serves_the_swarm_from_the_docker_api() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        sock = f"{tmp}/docker.sock"
        async with fake_docker(sock) as seen:
            port = free_port()
            config = SwarmExporterConfig(
                docker_host=f"unix://{sock}", ops_host="127.0.0.1", ops_port=port, interval=0.2,
                stack="pulsestack", probe_postgres=False, probe_timeout=1.0, log_level="warning",
            )
            stop = asyncio.Event()
            task = asyncio.create_task(serve(config, stop))
            try:
                text = ""
                for _ in range(50):
                    await asyncio.sleep(0.1)
                    try:
                        text = await asyncio.to_thread(fetch, f"http://127.0.0.1:{port}/metrics")
                        break
                    except OSError:
                        continue
                ready = await asyncio.to_thread(fetch, f"http://127.0.0.1:{port}/readyz")
            finally:
                stop.set()
                await asyncio.wait_for(task, 10)
    assert 'pulsestack_swarm_service_desired_replicas{service="pulsestack_raw-processor"} 2.0' in text
    assert 'pulsestack_swarm_service_running_replicas{service="pulsestack_raw-processor"} 1.0' in text
    assert 'pulsestack_swarm_node_ready{node="pulsestack-worker-1",role="worker"} 0.0' in text
    assert "other_web" not in text and "pulsestack_setup" not in text
    assert "pulsestack_postgres_up" not in text  # no DATABASE_URL, no probe
    assert '"ready"' in ready
    # Read-only use of the API: GET only, and only these two endpoints.
    assert set(seen) <= {"GET /services?status=true", "GET /nodes"}, seen


@pytest.mark.parametrize("host", ["tcp://socket-proxy:2375", "unix:///var/run/docker.sock"])
def test_docker_host_forms(host: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", host)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    config = SwarmExporterConfig.from_env()
    assert config.docker_host == host and not config.probe_postgres
