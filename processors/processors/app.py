"""The processor process: the raw stage, its pool, its consumer and its ops endpoints."""

from __future__ import annotations

import asyncio

import asyncpg

from processors.config import ProcessorConfig
from processors.raw_stage import RawStage
from pulsestack import metrics, ops
from pulsestack.bus.consumer import TRANSIENT, BatchConsumer, ConsumerSettings, report_backlog
from pulsestack.bus.publisher import Publisher
from pulsestack.bus.quarantine import Quarantine
from pulsestack.bus.topology import RAW, RAW_CONSUMER, RAW_REPLAY
from pulsestack.logs import get_logger
from pulsestack.service import close_nats, connect_nats, sleep_or_stop
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
    nc = await connect_nats(config.common, config.common.service)
    js = nc.jetstream()
    publisher = Publisher(nc)
    await publisher.start()
    pool = await _pool_when_available(config, stop)
    if pool is None:
        await nc.close()
        return
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

    runner = await ops.serve(config.ops_host, config.ops_port, ready)
    # Also watched: the replay copy RAW feeds.
    backlog = asyncio.create_task(report_backlog(js, RAW, RAW_CONSUMER, stop, (RAW_REPLAY,)))
    log.info("processor started", ops_port=config.ops_port)
    try:
        await consumer.run(stop)  # returns after the in-flight batch is acknowledged
    finally:
        backlog.cancel()
        await publisher.stop()
        await close_nats(nc)
        await pool.close()
        await runner.cleanup()
        log.info("processor stopped")
