"""A swarm-exporter process: polls the Docker API and PostgreSQL, serves the result on its ops port."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import asyncpg
from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from pulsestack.config import database_url
from pulsestack.logs import get_logger
from pulsestack.service import Lifecycle, sleep_or_stop
from pulsestack.services import SWARM_EXPORTER
from swarm_exporter.config import SwarmExporterConfig
from swarm_exporter.docker_api import DockerApi, NodeState, ServiceReplicas
from swarm_exporter.wal import WalStatus, wal_status

log = get_logger(__name__)


class SwarmCollector(Collector):
    """The last snapshot, exposed as a whole: a scrape never sees half of a poll, and a removed
    service or node disappears with the next poll instead of keeping its last value."""

    def __init__(self) -> None:
        self.services: list[ServiceReplicas] = []
        self.nodes: list[NodeState] = []
        self.postgres_up: float | None = None
        self.wal: WalStatus | None = None

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        desired = GaugeMetricFamily(
            "pulsestack_swarm_service_desired_replicas",
            "Tasks swarm wants for a service (replicas, or eligible nodes of a global service)",
            labels=["service"],
        )
        running = GaugeMetricFamily(
            "pulsestack_swarm_service_running_replicas", "Tasks of the service whose state is running",
            labels=["service"],
        )
        for s in self.services:
            desired.add_metric([s.service], s.desired)
            running.add_metric([s.service], s.running)
        ready = GaugeMetricFamily(
            "pulsestack_swarm_node_ready", "1 when the swarm node's status is ready, else 0", labels=["node", "role"]
        )
        for n in self.nodes:
            ready.add_metric([n.node, n.role], 1.0 if n.ready else 0.0)
        yield desired
        yield running
        yield ready
        if self.postgres_up is not None:
            yield GaugeMetricFamily(
                "pulsestack_postgres_up", "1 when PostgreSQL answered a trivial query at the last probe, else 0",
                value=self.postgres_up,
            )
        if self.wal is not None:
            yield from wal_families(self.wal)


def wal_families(wal: WalStatus) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
    yield GaugeMetricFamily("pulsestack_postgres_wal_archiving_enabled",
                            "1 when PostgreSQL's archive_mode is on, else 0", value=1.0 if wal.archiving else 0.0)
    yield CounterMetricFamily("pulsestack_postgres_wal_archived", "WAL segments archived (pg_stat_archiver)",
                              value=wal.archived)
    yield CounterMetricFamily("pulsestack_postgres_wal_archive_failures",
                              "Failed attempts to archive a WAL segment (pg_stat_archiver)", value=wal.failed)
    # Absent until the first success or failure: an age since "never" has no value that alerts could compare.
    if wal.since_archived is not None:
        yield GaugeMetricFamily("pulsestack_postgres_wal_last_archived_age_seconds",
                                "Seconds since the last WAL segment was archived", value=wal.since_archived)
    if wal.since_failed is not None:
        yield GaugeMetricFamily("pulsestack_postgres_wal_last_archive_failure_age_seconds",
                                "Seconds since the last failed attempt to archive a WAL segment",
                                value=wal.since_failed)
    yield GaugeMetricFamily("pulsestack_postgres_wal_archive_ready_files",
                            "Completed WAL segments waiting for the archiver", value=wal.ready)
    yield GaugeMetricFamily("pulsestack_postgres_wal_bytes", "Size of pg_wal", value=wal.bytes)
    yield GaugeMetricFamily("pulsestack_postgres_wal_files", "Files in pg_wal", value=wal.files)
    yield GaugeMetricFamily("pulsestack_postgres_wal_max_bytes", "PostgreSQL's max_wal_size", value=wal.max_bytes)


async def probe_postgres(url: str, seconds: float) -> tuple[bool, WalStatus | None]:
    """Whether PostgreSQL answers, and its WAL's status: None when that query failed, which drops only its
    series (a role without the grants of migration 007 must not turn pulsestack_postgres_up to 0)."""
    try:
        conn = await asyncpg.connect(url, timeout=seconds)
    except Exception as exc:
        log.warning("postgres probe failed", error=str(exc) or type(exc).__name__)
        return False, None
    try:
        if await asyncio.wait_for(conn.fetchval("SELECT 1"), seconds) != 1:
            return False, None
        try:
            return True, await asyncio.wait_for(wal_status(conn), seconds)
        except Exception as exc:
            log.warning("postgres wal probe failed", error=str(exc) or type(exc).__name__)
            return True, None
    except Exception as exc:
        log.warning("postgres probe failed", error=str(exc) or type(exc).__name__)
        return False, None
    finally:
        await conn.close(timeout=seconds)


async def poll_once(api: DockerApi, collector: SwarmCollector, config: SwarmExporterConfig, url: str) -> bool:
    """One round; returns whether the Docker API answered."""
    swarm_ok = True
    try:
        services, nodes = await asyncio.gather(api.services(config.stack), api.nodes())
        collector.services, collector.nodes = services, nodes
    except Exception as exc:
        # Stale replica counts would hide an outage: no series rather than old ones.
        collector.services, collector.nodes = [], []
        swarm_ok = False
        log.warning("docker api unavailable", error=str(exc) or type(exc).__name__)
    if config.probe_postgres:
        up, collector.wal = await probe_postgres(url, config.probe_timeout)
        collector.postgres_up = 1.0 if up else 0.0
    return swarm_ok


async def serve(config: SwarmExporterConfig, stop: asyncio.Event) -> None:
    collector = SwarmCollector()
    REGISTRY.register(collector)
    api = DockerApi(config.docker_host)
    url = database_url() if config.probe_postgres else ""
    last_ok = 0.0

    async def ready() -> str | None:
        if time.monotonic() - last_ok > 3 * config.interval:
            return "no answer from the Docker API"
        return None

    async with Lifecycle(SWARM_EXPORTER.name) as life:
        life.on_close(lambda: REGISTRY.unregister(collector))
        life.on_close(api.close)
        if await poll_once(api, collector, config, url):
            last_ok = time.monotonic()
        await life.ops(config.ops_host, config.ops_port, ready)
        life.started(ops_port=config.ops_port, docker=config.docker_host, stack=config.stack or "*",
                     postgres=config.probe_postgres)
        while not await sleep_or_stop(stop, config.interval):
            if await poll_once(api, collector, config, url):
                last_ok = time.monotonic()
