"""The consumer's rules alone (pulsestack/bus/consumer.py), with a real nats-server and no service: a poison
message fails alone and ends in DEAD after `max_deliver` deliveries while the rest of its batch is processed
once; a message that fails comes back; an outage holds the batch without using up its deliveries, and a stop
during one hands the batch back.

Each test has its own subject and durable consumer on a stream of its own, and its own stage name, so its
dead letters (`dead.<stage>`) are its own."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, RawStreamMsg, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from pulsestack.bus.consumer import TRANSIENT, BatchConsumer, ConsumerSettings, Postponed, redelivery_delay
from pulsestack.bus.publisher import Publisher
from pulsestack.bus.topology import DEAD
from tests.helpers import eventually

STREAM = "UNIT_CONSUMER"
ProcessBatch = Callable[[list[Msg]], Awaitable[list[str | None]]]


class Bus:
    def __init__(self, js: JetStreamContext, publisher: Publisher) -> None:
        self.js = js
        self.publisher = publisher
        self.tag = uuid.uuid4().hex[:10]
        self.subject = f"unit_consumer.{self.tag}"
        self.stage = f"unit-{self.tag}"

    def settings(self, max_deliver: int, durable: str = "", **options: object) -> ConsumerSettings:
        # The stage's own outage errors beside the bus's, as the raw processor adds the database's.
        transient = (*TRANSIENT, asyncpg.CannotConnectNowError)
        return ConsumerSettings(STREAM, durable or self.tag, self.stage, max_deliver=max_deliver, max_wait=0.2,
                                transient=transient, **options)  # type: ignore[arg-type]

    async def add_consumer(self, max_deliver: int) -> None:
        await self.js.add_consumer(STREAM, ConsumerConfig(
            durable_name=self.tag, filter_subject=self.subject, ack_policy=AckPolicy.EXPLICIT, ack_wait=30,
            max_deliver=max_deliver))

    async def send(self, *payloads: bytes) -> list[int]:
        """Stream sequences of the published payloads, in order."""
        return [(await self.js.publish(self.subject, p)).seq for p in payloads]

    async def dead_letter(self) -> RawStreamMsg | None:
        try:
            return await self.js.get_last_msg(DEAD, f"dead.{self.stage}")
        except NotFoundError:
            return None

    async def settled(self) -> bool:
        info = await self.js.consumer_info(STREAM, self.tag)
        return not (info.num_pending or info.num_ack_pending)

    async def consume(self, settings: ConsumerSettings, process: ProcessBatch,
                      until: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
        """Runs a BatchConsumer until `until` holds (AssertionError after `timeout`), then stops it."""
        stop = asyncio.Event()
        consumer = BatchConsumer(self.js, self.publisher, settings, process)
        running = asyncio.create_task(consumer.run(stop))
        try:
            await eventually(until, timeout=timeout)
        finally:
            stop.set()
            await asyncio.wait_for(running, 10)


@pytest.fixture
async def bus(servers_nc: NATS) -> AsyncIterator[Bus]:
    js = servers_nc.jetstream()
    await js.add_stream(StreamConfig(name=STREAM, subjects=["unit_consumer.*"], storage=StorageType.MEMORY))
    publisher = Publisher(servers_nc)
    await publisher.start()
    yield Bus(js, publisher)
    await publisher.stop()


async def test_a_poison_message_fails_alone_and_goes_to_dead_after_max_deliver(bus: Bus) -> None:
    await bus.add_consumer(max_deliver=2)
    seqs = await bus.send(b"0", b"1", b"poison", b"3", b"4")
    processed: Counter[bytes] = Counter()
    poison_deliveries: list[int] = []

    async def process(msgs: list[Msg]) -> list[str | None]:
        if any(m.data == b"poison" for m in msgs):
            if len(msgs) == 1:
                poison_deliveries.append(msgs[0].metadata.num_delivered)
            raise ValueError("cannot read this")
        processed.update(m.data for m in msgs)
        return [None] * len(msgs)

    async def done() -> bool:
        return await bus.dead_letter() is not None and await bus.settled()

    await bus.consume(bus.settings(max_deliver=2, batch=10, concurrency=1), process, done)
    assert processed == Counter({b"0": 1, b"1": 1, b"3": 1, b"4": 1})
    assert poison_deliveries == [1, 2]  # tried alone at each delivery, then no more
    dead = await bus.dead_letter()
    assert dead is not None and dead.data == b"poison"
    assert dead.headers is not None
    assert dead.headers["Pulsestack-Error"] == "ValueError: cannot read this"
    assert dead.headers["Pulsestack-Source-Stream"] == STREAM
    assert dead.headers["Pulsestack-Source-Seq"] == str(seqs[2])
    assert dead.headers["Pulsestack-Deliveries"] == "2"


async def test_a_message_that_fails_comes_back_and_is_acknowledged_once_it_succeeds(bus: Bus) -> None:
    await bus.add_consumer(max_deliver=3)
    await bus.send(b"late", b"fine")
    seen: list[tuple[bytes, int]] = []

    async def process(msgs: list[Msg]) -> list[str | None]:
        seen.extend((m.data, m.metadata.num_delivered) for m in msgs)
        return ["not yet" if m.data == b"late" and m.metadata.num_delivered == 1 else None for m in msgs]

    await bus.consume(bus.settings(max_deliver=3, batch=10, concurrency=1), process, bus.settled)
    assert sorted(seen) == [(b"fine", 1), (b"late", 1), (b"late", 2)]
    assert await bus.dead_letter() is None


@pytest.mark.parametrize("outage", [ConnectionRefusedError("bus down"), asyncpg.CannotConnectNowError("db down")])
async def test_an_outage_holds_the_batch_without_using_up_its_deliveries(bus: Bus, outage: Exception) -> None:
    # max_deliver 1: were an outage a failure, the first would send every message to DEAD.
    await bus.add_consumer(max_deliver=1)
    await bus.send(b"a", b"b", b"c")
    calls = itertools.count()
    processed: list[tuple[bytes, int]] = []

    async def process(msgs: list[Msg]) -> list[str | None]:
        if next(calls) < 2:
            raise outage
        processed.extend((m.data, m.metadata.num_delivered) for m in msgs)
        return [None] * len(msgs)

    await bus.consume(bus.settings(max_deliver=1, batch=10, concurrency=1), process, bus.settled)
    assert sorted(processed) == [(b"a", 1), (b"b", 1), (b"c", 1)]
    assert await bus.dead_letter() is None


async def test_stopping_during_an_outage_hands_the_batch_back_at_once(bus: Bus) -> None:
    await bus.add_consumer(max_deliver=5)
    await bus.send(b"a", b"b")
    tried = asyncio.Event()

    async def down(msgs: list[Msg]) -> list[str | None]:
        tried.set()
        raise OSError("database unreachable")

    async def has_tried() -> bool:
        return tried.is_set()

    await bus.consume(bus.settings(max_deliver=5, batch=10, concurrency=1), down, has_tried)
    processed: list[tuple[bytes, int]] = []

    async def up(msgs: list[Msg]) -> list[str | None]:
        processed.extend((m.data, m.metadata.num_delivered) for m in msgs)
        return [None] * len(msgs)

    # Well within the ack wait (30 s): the messages came back by the stop's nak, not by their deadline.
    await bus.consume(bus.settings(max_deliver=5, batch=10, concurrency=1), up, bus.settled, timeout=10)
    assert sorted(processed) == [(b"a", 2), (b"b", 2)]


def message(seq: int, data: bytes, delivered: int = 1) -> Msg:
    """A JetStream message as a pull consumer receives it: its metadata is in the reply subject."""
    return Msg(_client=None, subject="unit", reply=f"$JS.ACK.S.C.{delivered}.{seq}.{seq}.0.0",  # type: ignore[arg-type]
               data=data)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(poison=st.lists(st.booleans(), min_size=1, max_size=12))
async def test_isolation_answers_each_message_and_processes_each_good_one_once(poison: list[bool]) -> None:
    msgs = [message(i + 1, b"poison" if bad else b"%d" % i) for i, bad in enumerate(poison)]
    processed: Counter[int] = Counter()

    async def process(batch: list[Msg]) -> list[str | None]:
        if any(m.data == b"poison" for m in batch):
            raise ValueError("poison")
        processed.update(m.metadata.sequence.stream for m in batch)
        return [None] * len(batch)

    consumer = BatchConsumer(None, None, ConsumerSettings(STREAM, "d", "unit"), process)  # type: ignore[arg-type]
    errors = await consumer._process_isolating(msgs)
    assert errors == ["ValueError: poison" if bad else None for bad in poison]
    assert processed == Counter(i + 1 for i, bad in enumerate(poison) if not bad)


async def test_an_outage_is_postponed_not_isolated() -> None:
    calls: list[int] = []

    async def process(batch: list[Msg]) -> list[str | None]:
        calls.append(len(batch))
        raise TimeoutError("no PubAck")

    consumer = BatchConsumer(None, None, ConsumerSettings(STREAM, "d", "unit"), process)  # type: ignore[arg-type]
    with pytest.raises(Postponed) as raised:
        await consumer._process_isolating([message(1, b"a"), message(2, b"b")])
    assert isinstance(raised.value.__cause__, TimeoutError) and calls == [2]


@given(deliveries=st.integers(1, 1000))
def test_redelivery_waits_longer_each_time_up_to_thirty_seconds(deliveries: int) -> None:
    assert redelivery_delay(1) == 0.5
    assert redelivery_delay(deliveries) <= redelivery_delay(deliveries + 1) <= 30.0
