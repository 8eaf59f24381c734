"""The processor process: the raw stage, its pool, its consumer and its ops endpoints."""

from __future__ import annotations

import asyncio

import asyncpg

from processors.config import ProcessorConfig
from processors.raw_stage import RawStage
from pulsestack import metrics
from pulsestack.bus.consumer import TRANSIENT, BatchConsumer, ConsumerSettings, report_backlog
from pulsestack.bus.publisher import Publisher
from pulsestack.bus.quarantine import Quarantine
from pulsestack.bus.topology import RAW, RAW_CONSUMER, RAW_REPLAY
from pulsestack.logs import get_logger
from pulsestack.service import Lifecycle, sleep_or_stop
from pulsestack.store.db import create_pool

log = get_logger(__name__)


async def _pool_when_available(config: ProcessorConfig, stop: asyncio.Event) -> asyncpg.Pool | None:
    while not stop.is_set():
        try:
            return await create_pool(config.database_url, size=config.pool_size)
        except (OSError, asyncpg.PostgresError) as exc:
            log.warning("database unavailable, retrying", error=str(exc))
            await sleep_or_stop(stop, 2.0)
    return None


async def serve(config: ProcessorConfig, stop: asyncio.Event) -> None:
    async with Lifecycle(config.common.service) as life:
        await _serve(config, stop, life)


async def _serve(config: ProcessorConfig, stop: asyncio.Event, life: Lifecycle) -> None:
    nc = await life.nats(config.common)
    js = nc.jetstream()
    publisher = Publisher(nc)
    await publisher.start()
    life.on_close(publisher.stop)
    pool = await _pool_when_available(config, stop)
    if pool is None:
        return
    life.on_close(pool.close)
    quarantine = Quarantine(publisher)
    stage = RawStage(pool, publisher, quarantine)
    metrics.prime_stage(stage.name)
    settings = ConsumerSettings(
        RAW, RAW_CONSUMER, stage.name, config.batch, config.max_wait, config.limits.max_deliver,
        # A missing privilege is the database's state, not the message's: the v1 -> v2 move revokes the
        # stage's INSERT while it runs (pulsestack/store/v1_move.py), and a grant fixed by hand must find the
        # readings still there, not in DEAD.
        transient=(*TRANSIENT, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
                   asyncpg.CannotConnectNowError, asyncpg.TooManyConnectionsError,
                   asyncpg.InsufficientPrivilegeError),
        concurrency=config.concurrency,
    )
    consumer = BatchConsumer(js, publisher, settings, stage.process)

    async def ready() -> str | None:
        if not nc.is_connected:
            return "not connected to NATS"
        if not consumer.bound:
            return f"consumer {RAW_CONSUMER} not bound"
        try:
            await asyncio.wait_for(pool.fetchval("SELECT 1"), 2.0)
        except Exception as exc:
            return f"database: {exc}"
        return None

    await life.ops(config.ops_host, config.ops_port, ready)
    # Also watched: the replay copy RAW feeds.
    life.beside(report_backlog(js, RAW, RAW_CONSUMER, stop, (RAW_REPLAY,)))
    life.started(ops_port=config.ops_port)
    await consumer.run(stop)  # returns after the in-flight batch is acknowledged
