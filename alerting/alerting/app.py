"""An alerting process: the sweep loop, the outbox, the notifier consumer, and ops endpoints."""

from __future__ import annotations

import asyncio

import asyncpg

from alerting.config import AlertingConfig
from alerting.notifier import Notifier
from alerting.sweep import Sweeper
from pulsestack import ops
from pulsestack.bus.alerts import publish_pending
from pulsestack.bus.consumer import BatchConsumer, ConsumerSettings
from pulsestack.bus.publisher import Publisher
from pulsestack.bus.streams import ALERTS, NOTIFIER_CONSUMER, NOTIFIER_MAX_DELIVER
from pulsestack.logs import get_logger
from pulsestack.service import connect_nats
from pulsestack.store.db import create_pool

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
        try:
            await asyncio.wait_for(stop.wait(), config.sweep_every)
        except TimeoutError:
            pass


async def serve(config: AlertingConfig, stop: asyncio.Event) -> None:
    nc = await connect_nats(config.common, "alerting")
    publisher = Publisher(nc)
    await publisher.start()
    pool = await create_pool(config.database_url, size=2, keyed_lookups=False)
    notifier = Notifier(config.webhook_url, config.webhook_secret, config.webhook_timeout)
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

    runner = await ops.serve(config.ops_host, config.ops_port, ready)
    sweeper = asyncio.create_task(_sweep_loop(pool, publisher, config, stop))
    log.info("alerting started", webhook=bool(config.webhook_url), sweep_every=config.sweep_every)
    try:
        await consumer.run(stop)
        await sweeper
    finally:
        await notifier.close()
        await publisher.stop()
        await nc.drain()
        await pool.close()
        await runner.cleanup()
        log.info("alerting stopped")
