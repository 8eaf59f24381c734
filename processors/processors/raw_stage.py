"""RAW -> raw_messages -> PULSES.

A RAW message is acknowledged only after its readings are committed *and* the
PULSES message carrying their row ids has its PubAck. A crash in between means
redelivery: the readings are found already stored (same row ids) and the pulse
message is published again, which JetStream or the pulse stage deduplicates.
"""

from __future__ import annotations

import asyncio

import asyncpg
import msgspec
from nats.aio.msg import Msg

from processors.stage import Entry, Stage
from pulsestack import faults, metrics
from pulsestack.bus.publisher import MSG_ID, TRACE_ID, Publisher
from pulsestack.bus.quarantine import Quarantine
from pulsestack.bus.streams import PULSES
from pulsestack.store.raw import RawRow, insert_readings
from pulsestack.wire.reading import PulseItem, Reading, decode_raw, encode_pulse


class RawStage(Stage[Reading, list[RawRow]]):
    name = "raw"

    def __init__(self, pool: asyncpg.Pool, publisher: Publisher, quarantine: Quarantine) -> None:
        super().__init__(pool, quarantine)
        self._publisher = publisher

    def unpack(self, data: bytes) -> list[Reading]:
        return decode_raw(data).readings

    def reading(self, item: Reading) -> Reading:
        return item

    async def write(self, conn: asyncpg.Connection, items: list[Reading]) -> list[RawRow]:
        return await insert_readings(conn, items)

    async def after_commit(
        self, msgs: list[Msg], written: list[tuple[list[Entry[Reading]], list[RawRow]]], errors: list[str | None]
    ) -> None:
        per_message: dict[int, list[PulseItem]] = {}
        for group, rows in written:
            for (i, reading), row in zip(group, rows, strict=True):
                metrics.processor_messages.labels(self.name, "stored" if row.inserted else "duplicate").inc()
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

    async def _publish_pulses(self, source: Msg, items: list[PulseItem]) -> None:
        headers = {
            # Same source message, same id: a redelivered RAW message's pulses dedupe in the window.
            MSG_ID: f"pulse:{source.metadata.sequence.stream}",
            TRACE_ID: items[0].reading.trace_id,
            "Pulsestack-Envelope": "pulse/1",
        }
        await self._publisher.publish(f"pulse.{items[0].reading.protocol}", encode_pulse(items), headers, PULSES)
