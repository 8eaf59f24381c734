"""Rejected input, kept with its reason so it can be inspected and replayed.

Writes are rate-limited per source (token bucket): a flood from one address
cannot fill the stream or starve the bus; what the limiter refuses is counted.
"""

from __future__ import annotations

import asyncio
import time
from typing import Required, TypedDict, Unpack

import msgspec
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from pulsestack import metrics
from pulsestack.bus.publisher import Publisher, PublishError
from pulsestack.bus.topology import (
    ENVELOPE,
    MSG_ID,
    QUARANTINE,
    RAW,
    RAW_ENVELOPE,
    REASON,
    TRACE_ID,
    quarantine_subject,
    raw_subject,
)
from pulsestack.logs import get_logger
from pulsestack.wire.reading import Reading, encode_raw

log = get_logger(__name__)


class QuarantineRecord(msgspec.Struct, array_like=True):
    v: int
    stage: str
    reason: str
    detail: str
    source: str
    at: float
    reading: Reading | None = None  # decoded and authentic: replayable
    payload: bytes = b""  # what arrived, when it could not be decoded


class Origin(TypedDict, total=False):
    """Where a rejected input came from: the source (the rate limit's key) and what of it could be read."""

    source: Required[str]
    reading: Reading | None  # decoded and authentic: replayable
    payload: bytes  # what arrived, when it could not be decoded


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(QuarantineRecord)


def decode_record(data: bytes) -> QuarantineRecord:
    return _decoder.decode(data)


async def records(js: JetStreamContext, newest: int | None = None) -> tuple[list[tuple[int, QuarantineRecord]], int]:
    """The stream's records, or only its `newest` ones (read backwards from its end, not the whole stream),
    in stream order; and how many the stream holds."""
    state = (await js.stream_info(QUARANTINE)).state
    found: list[tuple[int, QuarantineRecord]] = []
    seq = state.last_seq
    # An empty stream has no message at first_seq (asking for it is an error, not a miss).
    while state.messages and seq >= state.first_seq and (newest is None or len(found) < newest):
        try:
            found.append((seq, decode_record((await js.get_msg(QUARANTINE, seq)).data or b"")))
        except NotFoundError:
            pass  # deleted after an earlier replay
        seq -= 1
    return found[::-1], state.messages


async def release(js: JetStreamContext, seq: int, reading: Reading) -> None:
    """Record `seq`'s reading back on RAW as an ingester would have published it, then the record deleted.
    The reading's own message id: released twice, or retransmitted by the device too, it is stored once."""
    headers = {MSG_ID: reading.msg_id, TRACE_ID: reading.trace_id, ENVELOPE: RAW_ENVELOPE}
    await js.publish(raw_subject(reading.protocol), encode_raw([reading]), stream=RAW, headers=headers)
    await js.delete_msg(QUARANTINE, seq)


class Quarantine:
    def __init__(self, publisher: Publisher, *, per_source_rate: float = 10.0, burst: float = 50.0) -> None:
        self._publisher = publisher
        self._rate = per_source_rate
        self._burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}
        self._tasks: set[asyncio.Task[bool]] = set()

    def _allow(self, source: str) -> bool:
        now = time.monotonic()
        tokens, last = self._buckets.get(source, (self._burst, now))
        tokens = min(self._burst, tokens + (now - last) * self._rate)
        if tokens < 1:
            self._buckets[source] = (tokens, now)
            return False
        if len(self._buckets) > 100_000:
            self._buckets.clear()
        self._buckets[source] = (tokens - 1, now)
        return True

    def submit(self, stage: str, reason: str, detail: str, **origin: Unpack[Origin]) -> asyncio.Task[bool] | None:
        """Schedules the write; None when the source is over its rate (cheap: no task is created)."""
        metrics.quarantined.labels(stage, reason).inc()
        if not self._allow(origin["source"]):
            return None
        reading = origin.get("reading")
        record = QuarantineRecord(1, stage, reason, detail, origin["source"], time.time(), reading,
                                  origin.get("payload", b""))
        headers = {REASON: reason}
        if reading is not None:
            headers[TRACE_ID] = reading.trace_id
        task = asyncio.create_task(self._write(quarantine_subject(stage), _encoder.encode(record), headers))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def put(self, stage: str, reason: str, detail: str, **origin: Unpack[Origin]) -> bool:
        """True once JetStream holds the record; False if rate-limited or the bus refused it."""
        task = self.submit(stage, reason, detail, **origin)
        return False if task is None else await task

    async def _write(self, subject: str, data: bytes, headers: dict[str, str]) -> bool:
        try:
            await self._publisher.publish(subject, data, headers, QUARANTINE)
        except PublishError as exc:
            log.warning("quarantine write failed", subject=subject, error=str(exc))
            return False
        return True
