"""The grouping publisher against a real nats-server: whatever fails while a group is published, every reading
of the group gets its answer and the pending count comes back to zero (issue #17, defect 2)."""

from __future__ import annotations

import asyncio

import pytest
from nats.aio.client import Client as NATS

from pulsestack.bus.publisher import Publisher, PublishError, ReadingGrouper
from pulsestack.bus.streams import RAW
from pulsestack.wire.reading import Reading
from tests.helpers import now_aligned


def reading(seq: int, trace_id: str) -> Reading:
    end = now_aligned()
    return Reading("sigfox", "ABC", seq, end, end, 900, [1, 2, 3, 4], 10, 3300, 0, float(end), trace_id, b"")


async def test_a_group_that_cannot_be_encoded_fails_every_reading_and_frees_its_place(nc: NATS) -> None:
    publisher = Publisher(nc)
    await publisher.start()
    # Subject raw.test: no reading of this test reaches a stream or the stack's processors.
    grouper = ReadingGrouper(publisher, stream=RAW, subject_of=lambda r: "raw.test", max_delay=0.01)
    try:
        good = grouper.submit(reading(1, "fine"))
        bad = grouper.submit(reading(2, "\udcff"))  # a lone surrogate: msgpack cannot encode it
        assert grouper.pending == 2
        for future in (good, bad):
            with pytest.raises(PublishError):
                await asyncio.wait_for(future, 2.0)
        assert grouper.pending == 0
    finally:
        await publisher.stop()
