"""Streams in compressed time: limits a thousand times smaller than production's, so what happens after days
of traffic happens in a minute.

- RAW holds the backlog, not the history: a stack whose RAW holds 1 MiB takes over twenty times that at a
  rate its processors keep up with, refusing nothing and losing nothing. (RAW
  must hold some seconds of traffic: the replay copy's source acknowledges RAW in steps of about 7 s, so
  RAW gives up what the raw stage took only then; at production sizes that is a few MB. With a buffer of
  ten seconds, a pause of the processors of a few seconds drew refusals in one of two quiet CI runs;
  twenty seconds it is, and the test takes about 7 minutes: twenty buffers.);
- with the processors stopped the streams fill, ingest refuses (no UDP ack, HTTP 503 with Retry-After),
  and once the processors are back everything the devices were told is stored, exactly once;
- RAW_REPLAY keeps a copy for the replay window, whatever RAW has handed on.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import os
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import StreamConfig

from pulsestack.bus.topology import (
    RAW,
    RAW_BYTES_PER_READING,
    RAW_CONSUMER,
    RAW_REPLAY,
    RETIRED_CONSUMER,
    RETIRED_STREAM,
    BusLimits,
    SetupError,
    consumer_config,
    retire_pulses,
    setup,
)
from pulsestack.config import ConfigError
from pulsestack_cli.local import LocalStack
from pulsestack_cli.localstack import NatsServer
from simulator.run import Simulation, SimulationConfig, SimulationReport
from tests.helpers import delivery_once_drained, eventually, metric

pytestmark = pytest.mark.slow
TINY = 384 * 1024  # RAW's when the processor is stopped
HOLD = 1024 * 1024  # RAW's at a steady rate: about 20 s of it
RATE = 300.0
DEVICES = 300
_fleets = itertools.count(1)


@contextlib.asynccontextmanager
async def tiny_streams(nc: NATS, raw_bytes: int = TINY, replay_bytes: int = TINY) -> AsyncIterator[None]:
    """RAW limited to `raw_bytes` for the test, the replay copy to `replay_bytes`; put back afterwards."""
    js = nc.jetstream()
    saved: list[StreamConfig] = []
    for name, size in ((RAW, raw_bytes), (RAW_REPLAY, replay_bytes)):
        config = (await js.stream_info(name)).config
        saved.append(StreamConfig.from_response(config.as_dict()))
        config.max_bytes = size
        await js.update_stream(config)
    try:
        yield
    finally:
        for config in saved:
            await js.update_stream(config)


def simulation(stack: LocalStack, rate: float, seconds: float, first_id: int) -> Simulation:
    return Simulation(SimulationConfig(
        devices=DEVICES, rate=rate, duration=seconds, udp_target=("127.0.0.1", stack.udp_port),
        http_url=f"http://127.0.0.1:{stack.http_port}/v1/sigfox", sigfox_token=stack.sigfox_token,
        master_key=stack.master_key, first_id=first_id, ack_timeout=1.0, retransmissions=8,
        sigfox_retry_delays=(1, 2, 4, 8, 8, 8),
    ))


async def fresh_fleet(stack: LocalStack) -> int:
    first_id = next(_fleets) * 100_000 + (os.getpid() % 100) * 1_000_000 + 50_000_000
    await stack.provision(DEVICES, 0.5, first_id)
    return first_id


async def exactly_stored(stack: LocalStack, nc: NATS, report: SimulationReport) -> None:
    delivery = await delivery_once_drained(stack, nc, report.acked_readings)
    assert delivery.exact, (delivery.line(), report.lines())


def refused(stack: LocalStack) -> float:
    return sum(metric(stack, service, "pulsestack_ingest_rejected_total", reason="overloaded")
               for service in ("ingest-udp", "ingest-http"))


@contextlib.asynccontextmanager
async def own_server(stack: LocalStack, name: str) -> AsyncIterator[JetStreamContext]:
    """A nats-server of the test's own, so the stack's streams stay as they are."""
    server = NatsServer(stack.workdir / name)
    server.start()
    nc = await nats.connect(server.url)
    try:
        yield nc.jetstream()
    finally:
        await nc.close()
        server.stop()


async def test_streams_hold_the_backlog_not_the_history(stack: LocalStack, nc: NATS) -> None:
    js = nc.jetstream()
    first_id = await fresh_fleet(stack)
    before = refused(stack)
    replay_before = (await js.stream_info(RAW_REPLAY)).state
    async with tiny_streams(nc, raw_bytes=HOLD, replay_bytes=1024**3):
        report = await simulation(stack, rate=RATE, seconds=420, first_id=first_id).run(settle_timeout=60)
        await exactly_stored(stack, nc, report)
        replay = (await js.stream_info(RAW_REPLAY)).state
    through = replay.bytes - replay_before.bytes
    readings = sum(report.acked.values())
    assert refused(stack) == before, "a stream refused at a rate its processors keep up with"
    assert through >= 20 * HOLD, f"only {through} bytes went through RAW"
    assert readings == sum(report.sent.values()) and not sum(report.gave_up.values()), report.lines()
    # The sizing rule's bytes per reading (docs/durability.md) hold at this low rate, where most RAW
    # messages carry one reading.
    assert through / readings <= RAW_BYTES_PER_READING, through / readings


async def test_stopped_processors_fill_the_streams_then_ingest_refuses_then_all_is_stored(
    stack: LocalStack, nc: NATS
) -> None:
    first_id = await fresh_fleet(stack)
    before = {service: metric(stack, service, "pulsestack_ingest_rejected_total", reason="overloaded")
              for service in ("ingest-udp", "ingest-http")}
    async with tiny_streams(nc):
        stack.services["raw-processor"].stop()
        traffic = asyncio.create_task(simulation(stack, rate=300, seconds=25, first_id=first_id).run(
            settle_timeout=90))
        # Full within seconds: both ingesters refuse (the simulation's devices retransmit, Sigfox retries).
        await eventually(lambda: _refusing(stack, before), timeout=30)
        assert (await nc.jetstream().stream_info(RAW)).state.bytes > TINY * 0.9
        await asyncio.sleep(5)
        stack.services["raw-processor"].start()
        report = await traffic
        await exactly_stored(stack, nc, report)
    assert sum(report.acked.values()) > 300 * 25 * 0.5, report.lines()


async def _refusing(stack: LocalStack, before: dict[str, float]) -> bool:
    return all(metric(stack, service, "pulsestack_ingest_rejected_total", reason="overloaded") > count
               for service, count in before.items())


def test_limits_that_cannot_hold_the_peak_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PULSESTACK_PEAK_RATE", "1000")
    monkeypatch.setenv("PULSESTACK_RAW_MAX_BYTES", str(1024**3))  # 1 GiB: under an hour at 1,000/s
    with pytest.raises(ConfigError, match="PULSESTACK_RAW_MAX_BYTES=1073741824 holds less than"):
        BusLimits.from_env()
    monkeypatch.delenv("PULSESTACK_RAW_MAX_BYTES")
    limits = BusLimits.from_env()
    assert limits.raw_max_bytes == 1000 * 6 * 3600 * RAW_BYTES_PER_READING


async def test_setup_moves_a_limits_stream_to_a_work_queue_only_once_it_is_processed(stack: LocalStack) -> None:
    """What `setup` does to a RAW stream made by an earlier version (limits retention), on a server of its own
    so the stack's streams stay as they are."""
    async with own_server(stack, "nats-migration") as js:
        limits = BusLimits.from_env()
        old = StreamConfig(name=RAW, subjects=["raw.*"], max_bytes=16 * 1024**2, max_age=3 * 86_400)
        await js.add_stream(old)
        await setup(js, limits)  # nothing to process: moved
        assert (await js.stream_info(RAW)).config.retention == "workqueue"
        # Again, with another ack wait: the existing consumer takes it.
        await setup(js, dataclasses.replace(limits, ack_wait_seconds=45.0))
        assert (await js.consumer_info(RAW, RAW_CONSUMER)).config.ack_wait == 45.0
        await js.delete_stream(RAW)
        await js.add_stream(old)
        await js.publish("raw.nbiot", b"an unprocessed reading")
        await js.add_consumer(RAW, consumer_config(RAW_CONSUMER, "raw.*", limits))
        with pytest.raises(SetupError, match="1 message"):
            await setup(js, limits)
        assert (await js.stream_info(RAW)).state.messages == 1  # kept, still to be processed


async def test_setup_removes_the_retired_pulses_stream_only_once_it_is_empty(stack: LocalStack) -> None:
    """An earlier version's PULSES (the pulse stage's stream) goes once nothing in it waits for the old pulse
    processor; before, setup refuses, so nothing derived from a stored reading is lost in the upgrade."""
    async with own_server(stack, "nats-retire") as js:
        limits = BusLimits.from_env()
        await retire_pulses(js)  # no such stream: nothing to do
        old = StreamConfig(name=RETIRED_STREAM, subjects=["pulse.*"], retention="workqueue", max_bytes=1024**2)
        await js.add_stream(old)
        await js.add_consumer(RETIRED_STREAM, consumer_config(RETIRED_CONSUMER, "pulse.*", limits))
        await js.publish("pulse.nbiot", b"readings stored, not yet derived")
        with pytest.raises(SetupError, match=f"{RETIRED_STREAM} still holds 1 message"):
            await setup(js, limits)
        assert (await js.stream_info(RETIRED_STREAM)).state.messages == 1
        # The old pulse processor takes and acknowledges it: the stream is empty, and goes.
        sub = await js.pull_subscribe("pulse.*", RETIRED_CONSUMER, stream=RETIRED_STREAM)
        for msg in await sub.fetch(1, timeout=5):
            await msg.ack_sync()
        await setup(js, limits)
        assert RETIRED_STREAM not in [info.config.name for info in await js.streams_info()]
        assert (await js.stream_info(RAW)).config.retention == "workqueue"
