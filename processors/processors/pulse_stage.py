"""PULSES -> pulses, gaps, meter events and device state."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import msgspec
from nats.aio.msg import Msg

from processors.writes import write_isolating
from pulsestack import faults, metrics
from pulsestack.bus.alerts import publish_pending
from pulsestack.bus.publisher import Publisher
from pulsestack.bus.quarantine import Quarantine
from pulsestack.logs import get_logger
from pulsestack.store.pulses import PulseOutcome, write_pulses
from pulsestack.wire.reading import PulseItem, decode_pulse, invariant_problem

STAGE = "pulse"
log = get_logger(__name__)


class PulseStage:
    def __init__(self, pool: asyncpg.Pool, publisher: Publisher, quarantine: Quarantine) -> None:
        self._pool = pool
        self._publisher = publisher
        self._quarantine = quarantine
        self._announcing: set[asyncio.Task[int]] = set()

    async def process(self, msgs: list[Msg]) -> list[str | None]:
        errors: list[str | None] = [None] * len(msgs)
        entries: list[tuple[int, PulseItem]] = []
        for i, msg in enumerate(msgs):
            try:
                items = decode_pulse(msg.data).items
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                if not await self._quarantine.put(STAGE, "envelope", str(exc), source="pulse", payload=msg.data):
                    errors[i] = "undecodable envelope not quarantined"
                continue
            for item in items:
                problem = invariant_problem(item.reading)
                if problem is None:
                    entries.append((i, item))
                elif not await self._reject(item, "invariant", problem):
                    errors[i] = f"invalid reading not quarantined: {problem}"
        if not entries:
            return errors
        metrics.processor_batch_size.labels(STAGE).observe(len(entries))
        started = time.monotonic()
        written, rejected = await write_isolating(self._pool, entries, _write)
        committed = time.time()
        metrics.processor_db_write_seconds.labels(STAGE).observe(time.monotonic() - started)
        faults.hit("pulse.after_commit")
        for (i, item), error in rejected:
            if not await self._reject(item, "database", error):
                errors[i] = f"rejected by the database and not quarantined: {error}"
        changed_alerts: list[int] = []
        for _, outcome in written:
            self._count(outcome, committed)
            changed_alerts += outcome.alerts
        if changed_alerts:
            # Announced beside the batch, never in its way; the alerting sweep catches what this misses.
            task = asyncio.create_task(publish_pending(self._pool, self._publisher, changed_alerts))
            self._announcing.add(task)
            task.add_done_callback(self._announced)
        return errors

    def _announced(self, task: asyncio.Task[int]) -> None:
        self._announcing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("alert events not published now; the sweep will", error=str(task.exception()))

    @staticmethod
    def _count(outcome: PulseOutcome, committed: float) -> None:
        metrics.processor_messages.labels(STAGE, "stored").inc(len(outcome.stored))
        metrics.processor_messages.labels(STAGE, "duplicate").inc(outcome.duplicates)
        metrics.bucket_conflicts.inc(outcome.conflicts)
        metrics.device_gaps.inc(outcome.gaps)
        metrics.meter_resets.inc(outcome.resets)
        for reading in outcome.stored:
            metrics.end_to_end_seconds.labels(reading.protocol).observe(max(0.0, committed - reading.received_at))

    async def _reject(self, item: PulseItem, reason: str, detail: str) -> bool:
        r = item.reading
        log.warning(
            "reading quarantined", stage=STAGE, reason=reason, detail=detail, device=r.device, seq=r.seq,
            trace_id=r.trace_id,
        )
        return await self._quarantine.put(STAGE, reason, detail, source=f"{r.protocol}:{r.device}", reading=r)


async def _write(conn: asyncpg.Connection, entries: list[tuple[int, PulseItem]]) -> PulseOutcome:
    return await write_pulses(conn, [item for _, item in entries])
