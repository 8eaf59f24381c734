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


async def test_added_readings_share_their_group_future_and_a_full_group_starts_a_new_one(nc: NATS) -> None:
    publisher = Publisher(nc)
    await publisher.start()
    # No stream takes this subject: every group is answered with a PublishError (no responders).
    grouper = ReadingGrouper(publisher, stream=RAW, subject_of=lambda r: "grouper.test", max_readings=2,
                             max_delay=0.01)
    try:
        first = grouper.add(reading(1, "a"))
        own = grouper.submit(reading(2, "b"))  # fills the group
        second = grouper.add(reading(3, "c"))
        assert grouper.add(reading(4, "d")) is second
        assert len({id(first), id(own), id(second)}) == 3
        for future in (first, own, second):
            with pytest.raises(PublishError):
                await asyncio.wait_for(asyncio.shield(future), 2.0)
        assert grouper.pending == 0
    finally:
        await publisher.stop()
