"""PULSES -> pulses, gaps, meter events, device state, rollups and alerts."""

from __future__ import annotations

import asyncio
import time

import asyncpg
from nats.aio.msg import Msg

from processors.stage import Entry, Stage
from pulsestack import metrics
from pulsestack.bus.alerts import publish_pending
from pulsestack.bus.publisher import Publisher
from pulsestack.bus.quarantine import Quarantine
from pulsestack.logs import get_logger
from pulsestack.store.pulses import PulseOutcome, write_pulses
from pulsestack.wire.reading import PulseItem, Reading, decode_pulse

log = get_logger(__name__)


class PulseStage(Stage[PulseItem, PulseOutcome]):
    name = "pulse"

    def __init__(self, pool: asyncpg.Pool, publisher: Publisher, quarantine: Quarantine) -> None:
        super().__init__(pool, quarantine)
        self._publisher = publisher
        self._announcing: set[asyncio.Task[int]] = set()

    def unpack(self, data: bytes) -> list[PulseItem]:
        return decode_pulse(data).items

    def reading(self, item: PulseItem) -> Reading:
        return item.reading

    async def write(self, conn: asyncpg.Connection, items: list[PulseItem]) -> PulseOutcome:
        return await write_pulses(conn, items)

    async def after_commit(
        self, msgs: list[Msg], written: list[tuple[list[Entry[PulseItem]], PulseOutcome]], errors: list[str | None]
    ) -> None:
        committed = time.time()
        changed_alerts: list[int] = []
        for _, outcome in written:
            self._count(outcome, committed)
            changed_alerts += outcome.alerts
        if changed_alerts:
            # Announced beside the batch, never in its way; the alerting sweep catches what this misses.
            task = asyncio.create_task(publish_pending(self._pool, self._publisher, changed_alerts))
            self._announcing.add(task)
            task.add_done_callback(self._announced)

    def _announced(self, task: asyncio.Task[int]) -> None:
        self._announcing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("alert events not published now; the sweep will", error=str(task.exception()))

    def _count(self, outcome: PulseOutcome, committed: float) -> None:
        metrics.processor_messages.labels(self.name, "stored").inc(len(outcome.stored))
        metrics.processor_messages.labels(self.name, "duplicate").inc(outcome.duplicates)
        metrics.bucket_conflicts.inc(outcome.conflicts)
        metrics.device_gaps.inc(outcome.gaps)
        metrics.meter_resets.inc(outcome.resets)
        for reading in outcome.stored:
            metrics.end_to_end_seconds.labels(reading.protocol).observe(max(0.0, committed - reading.received_at))
