"""RAW -> raw_messages -> PULSES.

A RAW message is acknowledged only after its readings are committed *and* the
PULSES message carrying their row ids has its PubAck. A crash in between means
redelivery: the readings are found already stored (same row ids) and the pulse
message is published again, which JetStream or the pulse stage deduplicates.
"""

from __future__ import annotations

import asyncio
import hashlib

import asyncpg
import msgspec
from nats.aio.msg import Msg

from processors.stage import Entry, Stage
from pulsestack import faults, metrics
from pulsestack.bus.publisher import MSG_ID, TRACE_ID, Publisher, PublishError
from pulsestack.bus.quarantine import Quarantine
from pulsestack.bus.streams import PULSES
from pulsestack.store.raw import RawRow, insert_readings
from pulsestack.wire.reading import PulseItem, Reading, decode_raw, encode_pulse

# ~80 bytes a pulse item: 4,000 keep a message far below NATS's 1 MiB payload limit.
PULSE_CHUNK = 4000


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
        # One PULSES message per protocol and chunk of the batch, not per RAW message: with fsync before
        # every PubAck, the number of messages is what costs.
        by_protocol: dict[str, list[tuple[int, PulseItem]]] = {}
        for group, rows in written:
            for (i, reading), row in zip(group, rows, strict=True):
                metrics.processor_messages.labels(self.name, "stored" if row.inserted else "duplicate").inc()
                # The raw bytes stay in raw_messages; the pulse stage does not need them.
                item = PulseItem(row.raw_id, msgspec.structs.replace(reading, payload=b""))
                by_protocol.setdefault(reading.protocol, []).append((i, item))
        chunks = [
            (protocol, entries[start : start + PULSE_CHUNK])
            for protocol, entries in by_protocol.items()
            for start in range(0, len(entries), PULSE_CHUNK)
        ]
        results = await asyncio.gather(
            *(self._publish_pulses(protocol, msgs, chunk) for protocol, chunk in chunks), return_exceptions=True
        )
        refused = [r for r in results if isinstance(r, PublishError)]
        if refused:
            # PULSES is full (its consumer is behind) or the bus is down: not these messages' fault, so no
            # redelivery is spent. The batch stays in hand and is retried whole (its rows are found stored,
            # its pulse messages dedupe); RAW fills meanwhile, and ingest refuses past its budget.
            raise refused[0]
        for (_, chunk), result in zip(chunks, results, strict=True):
            if isinstance(result, BaseException):
                for i, _ in chunk:
                    errors[i] = f"pulse message not published: {result}"
        faults.hit("raw.after_pulse_puback")

    async def _publish_pulses(self, protocol: str, msgs: list[Msg], chunk: list[tuple[int, PulseItem]]) -> None:
        # The same readings of the same RAW messages make the same id: a redelivered batch's pulses dedupe
        # in the window. A batch put together differently gets another id; the pulse stage then dedupes
        # by raw id.
        origin = ",".join(f"{msgs[i].metadata.sequence.stream}/{item.raw_id}" for i, item in chunk)
        items = [item for _, item in chunk]
        headers = {
            MSG_ID: "pulse:" + hashlib.blake2b(origin.encode(), digest_size=16).hexdigest(),
            TRACE_ID: items[0].reading.trace_id,
            "Pulsestack-Envelope": "pulse/1",
        }
        await self._publisher.publish(f"pulse.{protocol}", encode_pulse(items), headers, PULSES)
