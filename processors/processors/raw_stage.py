"""RAW -> raw_messages -> PULSES.

A RAW message is acknowledged only after its readings are committed *and* the
PULSES message carrying their row ids has its PubAck. A crash in between means
redelivery: the readings are found already stored (same row ids) and the pulse
message is published again, which JetStream or the pulse stage deduplicates.
"""

from __future__ import annotations

import asyncio
import time

import asyncpg
import msgspec
from nats.aio.msg import Msg

from processors.writes import write_isolating
from pulsestack import faults, metrics
from pulsestack.bus.publisher import MSG_ID, TRACE_ID, Publisher
from pulsestack.bus.quarantine import Quarantine
from pulsestack.bus.streams import PULSES
from pulsestack.logs import get_logger
from pulsestack.store.raw import RawRow, insert_readings
from pulsestack.wire.reading import PulseItem, Reading, decode_raw, encode_pulse, invariant_problem

STAGE = "raw"
log = get_logger(__name__)


class RawStage:
    def __init__(self, pool: asyncpg.Pool, publisher: Publisher, quarantine: Quarantine) -> None:
        self._pool = pool
        self._publisher = publisher
        self._quarantine = quarantine

    async def process(self, msgs: list[Msg]) -> list[str | None]:
        errors: list[str | None] = [None] * len(msgs)
        entries: list[tuple[int, Reading]] = []
        for i, msg in enumerate(msgs):
            try:
                readings = decode_raw(msg.data).readings
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                if not await self._quarantine.put(STAGE, "envelope", str(exc), source="raw", payload=msg.data):
                    errors[i] = "undecodable envelope not quarantined"
                continue
            for reading in readings:
                faults.check_poison(reading.trace_id)
                problem = invariant_problem(reading)
                if problem is None:
                    entries.append((i, reading))
                elif not await self._reject(reading, "invariant", problem):
                    errors[i] = f"invalid reading not quarantined: {problem}"
        if not entries:
            return errors
        metrics.processor_batch_size.labels(STAGE).observe(len(entries))
        started = time.monotonic()
        written, rejected = await write_isolating(self._pool, entries, _insert)
        metrics.processor_db_write_seconds.labels(STAGE).observe(time.monotonic() - started)
        for (i, reading), error in rejected:
            if not await self._reject(reading, "database", error):
                errors[i] = f"rejected by the database and not quarantined: {error}"
        faults.hit("raw.after_commit")

        per_message: dict[int, list[PulseItem]] = {}
        for group, rows in written:
            for (i, reading), row in zip(group, rows, strict=True):
                outcome = "stored" if row.inserted else "duplicate"
                metrics.processor_messages.labels(STAGE, outcome).inc()
                # The raw bytes stay in raw_messages; the pulse stage does not need them.
                item = PulseItem(row.raw_id, msgspec.structs.replace(reading, payload=b""))
                per_message.setdefault(i, []).append(item)
        results = await asyncio.gather(
            *(self._publish_pulses(msgs[i], items) for i, items in per_message.items()), return_exceptions=True
        )
        for i, result in zip(per_message, results, strict=True):
            if isinstance(result, BaseException):
                errors[i] = f"pulse message not published: {result}"
        faults.hit("raw.after_pulse_puback")
        return errors

    async def _publish_pulses(self, source: Msg, items: list[PulseItem]) -> None:
        protocol = items[0].reading.protocol
        headers = {
            # Same source message, same id: a redelivered RAW message's pulses dedupe in the window.
            MSG_ID: f"pulse:{source.metadata.sequence.stream}",
            TRACE_ID: items[0].reading.trace_id,
            "Pulsestack-Envelope": "pulse/1",
        }
        await self._publisher.publish(f"pulse.{protocol}", encode_pulse(items), headers, PULSES)

    async def _reject(self, reading: Reading, reason: str, detail: str) -> bool:
        log.warning(
            "reading quarantined", stage=STAGE, reason=reason, detail=detail, device=reading.device,
            seq=reading.seq, trace_id=reading.trace_id,
        )
        return await self._quarantine.put(
            STAGE, reason, detail, source=f"{reading.protocol}:{reading.device}", reading=reading
        )


async def _insert(conn: asyncpg.Connection, entries: list[tuple[int, Reading]]) -> list[RawRow]:
    return await insert_readings(conn, [reading for _, reading in entries])

