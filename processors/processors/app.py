"""A processor process: one stage, its pool, its consumer and its ops endpoints."""

from __future__ import annotations

import asyncio

import asyncpg

from processors.config import ProcessorConfig
from processors.pulse_stage import PulseStage
from processors.raw_stage import RawStage
from pulsestack import metrics, ops
from pulsestack.bus.consumer import TRANSIENT, BatchConsumer, ConsumerSettings, report_backlog
from pulsestack.bus.publisher import Publisher
from pulsestack.bus.quarantine import Quarantine
from pulsestack.bus.streams import PULSE_CONSUMER, PULSES, RAW, RAW_CONSUMER, RAW_REPLAY
from pulsestack.logs import get_logger
from pulsestack.service import close_nats, connect_nats
from pulsestack.store.db import create_pool

log = get_logger(__name__)


async def _pool_when_available(config: ProcessorConfig, stop: asyncio.Event) -> asyncpg.Pool | None:
    while not stop.is_set():
        try:
            return await create_pool(config.database_url, size=config.pool_size)
        except (OSError, asyncpg.PostgresError) as exc:
            log.warning("database unavailable, retrying", error=str(exc))
            try:
                await asyncio.wait_for(stop.wait(), 2.0)
            except TimeoutError:
                pass
    return None


async def serve(config: ProcessorConfig, stop: asyncio.Event) -> None:
    nc = await connect_nats(config.common, f"{config.stage}-processor")
    js = nc.jetstream()
    publisher = Publisher(nc)
    await publisher.start()
    pool = await _pool_when_available(config, stop)
    if pool is None:
        await nc.close()
        return
    quarantine = Quarantine(publisher)
    metrics.prime_stage(config.stage)
    if config.stage == "raw":
        stream, durable, process = RAW, RAW_CONSUMER, RawStage(pool, publisher, quarantine).process
    else:
        stream, durable, process = PULSES, PULSE_CONSUMER, PulseStage(pool, publisher, quarantine).process
    settings = ConsumerSettings(
        stream, durable, config.stage, config.batch, config.max_wait, config.limits.max_deliver,
        transient=(*TRANSIENT, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
                   asyncpg.CannotConnectNowError, asyncpg.TooManyConnectionsError),
        concurrency=config.concurrency,
    )
    consumer = BatchConsumer(js, publisher, settings, process)

    async def ready() -> str | None:
        if not nc.is_connected:
            return "not connected to NATS"
        if not consumer.bound:
            return f"consumer {durable} not bound"
        try:
            await asyncio.wait_for(pool.fetchval("SELECT 1"), 2.0)
        except Exception as exc:
            return f"database: {exc}"
        return None

    runner = await ops.serve(config.ops_host, config.ops_port, ready)
    # The raw stage also watches the replay copy its stream feeds.
    also = (RAW_REPLAY,) if stream == RAW else ()
    backlog = asyncio.create_task(report_backlog(js, stream, durable, stop, also))
    log.info("processor started", stage=config.stage, ops_port=config.ops_port)
    try:
        await consumer.run(stop)  # returns after the in-flight batch is acknowledged
    finally:
        backlog.cancel()
        await publisher.stop()
        await close_nats(nc)
        await pool.close()
        await runner.cleanup()
        log.info("processor stopped", stage=config.stage)
