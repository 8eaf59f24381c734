"""The grouping publisher against a real nats-server and no service: whatever fails while a group is published,
every reading of the group gets its answer and the pending count comes back to zero (issue #17, defect 2); what
is published is every reading, once, in order, per subject, in messages of at most `max_readings`; a lone
reading's message id dedupes its retransmission; past `max_pending_readings` a reading is refused at once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import StorageType, StreamConfig

from pulsestack.bus.publisher import Publisher, PublishError, ReadingGrouper, Stored
from pulsestack.bus.topology import ENVELOPE, MSG_ID, RAW, TRACE_ID
from pulsestack.wire.reading import Reading, decode_raw
from tests.helpers import now_aligned

STREAM = "UNIT_GROUPER"


def reading(seq: int, trace_id: str) -> Reading:
    end = now_aligned()
    return Reading("sigfox", "ABC", seq, end, end, 900, [1, 2, 3, 4], 10, 3300, 0, float(end), trace_id, b"")


async def test_a_group_that_cannot_be_encoded_fails_every_reading_and_frees_its_place(servers_nc: NATS) -> None:
    publisher = Publisher(servers_nc)
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


async def test_added_readings_share_their_group_future_and_a_full_group_starts_a_new_one(servers_nc: NATS) -> None:
    publisher = Publisher(servers_nc)
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


@pytest.fixture
async def publisher(servers_nc: NATS) -> AsyncIterator[Publisher]:
    await servers_nc.jetstream().add_stream(StreamConfig(
        name=STREAM, subjects=["unit_grouper.>"], storage=StorageType.MEMORY, duplicate_window=60))
    started = Publisher(servers_nc)
    await started.start()
    yield started
    await started.stop()


async def published(nc: NATS, subjects: str) -> list[Msg]:
    """The stream's messages on `subjects`, in order."""
    sub = await nc.jetstream().pull_subscribe(subjects, stream=STREAM)
    try:
        msgs = await sub.fetch(1000, timeout=1)
    finally:
        await sub.unsubscribe()
    for msg in msgs:
        await msg.ack()
    return msgs


def of_device(device: str, seq: int) -> Reading:
    end = now_aligned()
    return Reading("sigfox", device, seq, end, end, 900, [1], seq, 3300, 0, float(end), f"{device}-{seq}", b"")


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(devices=st.lists(st.sampled_from(["A", "B", "C"]), min_size=1, max_size=30),
       max_readings=st.integers(1, 8))
async def test_every_reading_is_published_once_in_order_per_subject_in_bounded_messages(
    servers_nc: NATS, publisher: Publisher, devices: list[str], max_readings: int
) -> None:
    tag = uuid.uuid4().hex[:10]
    grouper = ReadingGrouper(publisher, stream=STREAM, subject_of=lambda r: f"unit_grouper.{tag}.{r.device}",
                             max_readings=max_readings, max_delay=0.01)
    # Devices of this example alone: a lone reading's message id is its own, deduplicated across examples.
    sent = [of_device(device + tag, seq) for seq, device in enumerate(devices)]
    stored = await asyncio.gather(*(grouper.submit(r) for r in sent))
    assert stored == [Stored(duplicate=False)] * len(sent) and grouper.pending == 0
    got: dict[str, list[Reading]] = {}
    for msg in await published(servers_nc, f"unit_grouper.{tag}.>"):
        readings = decode_raw(msg.data).readings
        assert 1 <= len(readings) <= max_readings
        assert msg.headers is not None and msg.headers[ENVELOPE] == "raw/1"
        assert msg.headers[TRACE_ID] == readings[0].trace_id
        assert msg.headers[MSG_ID] == readings[0].msg_id if len(readings) == 1 else msg.headers[MSG_ID][:2] == "g:"
        got.setdefault(msg.subject.rsplit(".", 1)[1], []).extend(readings)
    assert got == {d + tag: [r for r in sent if r.device == d + tag] for d in set(devices)}


async def test_a_lone_readings_retransmission_is_a_duplicate(servers_nc: NATS, publisher: Publisher) -> None:
    tag = uuid.uuid4().hex[:10]
    grouper = ReadingGrouper(publisher, stream=STREAM, subject_of=lambda r: f"unit_grouper.{tag}.A", max_delay=0.01)
    r = of_device("A" + tag, 1)
    assert await grouper.submit(r) == Stored(duplicate=False)
    # The device sends it again: received later, with a trace id of its own.
    again = msgspec.structs.replace(r, received_at=r.received_at + 30, trace_id=r.trace_id + "-again")
    assert await grouper.submit(again) == Stored(duplicate=True)
    assert len(await published(servers_nc, f"unit_grouper.{tag}.>")) == 1


async def test_past_the_pending_limit_a_reading_is_refused_at_once(publisher: Publisher) -> None:
    tag = uuid.uuid4().hex[:10]
    grouper = ReadingGrouper(publisher, stream=STREAM, subject_of=lambda r: f"unit_grouper.{tag}.A",
                             max_delay=0.05, max_pending_readings=2)
    held = [grouper.submit(of_device("A", seq)) for seq in (1, 2)]
    refused = grouper.submit(of_device("A", 3))
    assert refused.done() and isinstance(refused.exception(), PublishError)
    assert grouper.add(of_device("A", 4)).done()
    assert await asyncio.gather(*held) == [Stored(duplicate=False)] * 2 and grouper.pending == 0
    assert await grouper.submit(of_device("A", 5)) == Stored(duplicate=False)  # room again
