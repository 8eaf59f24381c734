"""RAW -> readings, and what each reading derives (buckets, gaps, meter events, device state, rollups,
alerts), in one transaction.

A RAW message is acknowledged only after that transaction commits. A crash before means redelivery: what
the transaction did is either all there (the readings are found stored, and nothing is derived twice) or
not at all. Storing and
deriving together keeps every stored reading applied (docs/storage-model.md), and costs one NATS hop and one
commit per batch.
"""

from __future__ import annotations

import asyncio
import time

import asyncpg
from nats.aio.msg import Msg

from processors.stage import Entry, Stage
from pulsestack import metrics
from pulsestack.alerts.outbox import publish_pending
from pulsestack.bus.publisher import Publisher
from pulsestack.bus.quarantine import Quarantine
from pulsestack.logs import get_logger
from pulsestack.store.readings import Stored, store_readings
from pulsestack.wire.reading import Reading, decode_raw

log = get_logger(__name__)


class RawStage(Stage[Reading, Stored]):
    name = "raw"

    def __init__(self, pool: asyncpg.Pool, publisher: Publisher, quarantine: Quarantine) -> None:
        super().__init__(pool, quarantine)
        self._publisher = publisher
        self._announcing: set[asyncio.Task[int]] = set()

    def unpack(self, data: bytes) -> list[Reading]:
        return decode_raw(data).readings

    def reading(self, item: Reading) -> Reading:
        return item

    async def write(self, conn: asyncpg.Connection, items: list[Reading]) -> Stored:
        return await store_readings(conn, items)

    async def after_commit(
        self, msgs: list[Msg], written: list[tuple[list[Entry[Reading]], Stored]], errors: list[str | None]
    ) -> None:
        committed = time.time()
        changed_alerts: list[int] = []
        for _, stored in written:
            self._count(stored, committed)
            changed_alerts += stored.outcome.alerts
        if changed_alerts:
            # Announced beside the batch, never in its way; the alerting sweep catches what this misses.
            task = asyncio.create_task(publish_pending(self._pool, self._publisher, changed_alerts))
            self._announcing.add(task)
            task.add_done_callback(self._announced)

    def _announced(self, task: asyncio.Task[int]) -> None:
        self._announcing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("alert events not published now; the sweep will", error=str(task.exception()))

    def _count(self, stored: Stored, committed: float) -> None:
        inserted = sum(stored.inserted)
        metrics.processor_messages.labels(self.name, "stored").inc(inserted)
        metrics.processor_messages.labels(self.name, "duplicate").inc(len(stored.inserted) - inserted)
        outcome = stored.outcome
        metrics.bucket_conflicts.inc(outcome.conflicts)
        metrics.device_gaps.inc(outcome.gaps)
        metrics.meter_resets.inc(outcome.resets)
        for reading in outcome.stored:
            metrics.end_to_end_seconds.labels(reading.protocol).observe(max(0.0, committed - reading.received_at))
