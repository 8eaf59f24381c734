"""An alerting process: the sweep loop, the outbox, the notifier consumer, and ops endpoints."""

from __future__ import annotations

import asyncio

import asyncpg

from alerting.config import AlertingConfig
from alerting.notifier import Notifier
from pulsestack import metrics
from pulsestack.alerts.outbox import publish_pending
from pulsestack.alerts.sweep import Sweeper
from pulsestack.bus.consumer import BatchConsumer, ConsumerSettings
from pulsestack.bus.publisher import Publisher
from pulsestack.bus.topology import ALERTS, NOTIFIER_CONSUMER, NOTIFIER_MAX_DELIVER
from pulsestack.logs import get_logger
from pulsestack.service import Lifecycle, sleep_or_stop
from pulsestack.store.db import create_pool
from pulsestack.store.maintenance import maintain

log = get_logger(__name__)


async def _sweep_loop(pool: asyncpg.Pool, publisher: Publisher, config: AlertingConfig, stop: asyncio.Event) -> None:
    sweeper = Sweeper(pool, config.default_interval)
    while not stop.is_set():
        try:
            changed = await sweeper.sweep()
            if changed:
                log.info("sweep changed alerts", count=len(changed))
            # Everything unpublished, not only this sweep's: the outbox also covers crashed writers.
            await publish_pending(pool, publisher)
        except (OSError, asyncpg.PostgresError) as exc:
            log.warning("sweep failed; next one retries", error=str(exc))
        except Exception:
            # Anything else too (asyncpg's InterfaceError on a connection that died with the server, a
            # bug): a sweep loop that ended would stop every silent-meter alert until a restart.
            log.exception("sweep failed unexpectedly; next one retries")
        await sleep_or_stop(stop, config.sweep_every)


async def _maintenance_loop(pool: asyncpg.Pool, config: AlertingConfig, stop: asyncio.Event) -> None:
    """Partitions ahead and retention, on a schedule; one instance runs at a time (pulsestack/store/maintenance.py)."""
    metrics.maintenance_last_success.set(0)
    while not stop.is_set():
        try:
            async with pool.acquire() as conn:
                report = await maintain(conn, config.retention, config.months_ahead, config.common.clock.today())
            if report.ran:
                for table, months in report.months_ahead.items():
                    metrics.partitions_ahead.labels(table).set(months)
                for table, rows in report.default_rows.items():
                    metrics.default_partition_rows.labels(table).set(rows)
                metrics.maintenance_last_success.set(report.finished_at)
                log.info("maintenance done", dropped=report.dropped, deleted=report.deleted,
                         months_ahead=report.months_ahead, default_rows=report.default_rows)
        except Exception as exc:
            # The next run retries; MaintenanceNotRunning fires if none succeeds for a day.
            log.warning("maintenance failed; the next run retries", error=f"{type(exc).__name__}: {exc}")
        await sleep_or_stop(stop, config.maintenance_every)


async def serve(config: AlertingConfig, stop: asyncio.Event) -> None:
    async with Lifecycle(config.common.service) as life:
        await _serve(config, stop, life)


async def _serve(config: AlertingConfig, stop: asyncio.Event, life: Lifecycle) -> None:
    nc = await life.nats(config.common)
    publisher = Publisher(nc)
    await publisher.start()
    life.on_close(publisher.stop)
    # Sweeps and the outbox, and the maintenance run beside them.
    pool = await create_pool(config.database_url, size=3, keyed_lookups=False)
    life.on_close(pool.close)
    notifier = Notifier(config.webhook_url, config.webhook_secret, config.webhook_timeout)
    life.on_close(notifier.close)
    consumer = BatchConsumer(
        nc.jetstream(), publisher, ConsumerSettings(
            ALERTS, NOTIFIER_CONSUMER, "notifier", batch=32, max_deliver=NOTIFIER_MAX_DELIVER
        ),
        notifier.process,
    )

    async def ready() -> str | None:
        if not nc.is_connected:
            return "not connected to NATS"
        if not consumer.bound:
            return "notifier consumer not bound"
        return None

    await life.ops(config.ops_host, config.ops_port, ready)
    # Awaited, not cancelled, once the notifier has stopped: each ends its round at the stop.
    sweeper = life.beside(_sweep_loop(pool, publisher, config, stop))
    maintenance = life.beside(_maintenance_loop(pool, config, stop))
    life.started(webhook=bool(config.webhook_url), sweep_every=config.sweep_every)
    await consumer.run(stop)
    await sweeper
    await maintenance
