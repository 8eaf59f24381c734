"""Faults under sustained traffic: whatever was acknowledged to a device ends up stored exactly once."""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Awaitable, Callable

import asyncpg
import pytest
from nats.aio.client import Client as NATS

from pulsestack.bus.topology import DEAD, MSG_ID
from pulsestack.wire.reading import Reading, encode_raw
from pulsestack_cli.local import LocalStack
from simulator.run import Simulation, SimulationConfig, SimulationReport
from tests.helpers import delivery_once_drained, device_rows, eventually, forget_devices, metric

pytestmark = pytest.mark.slow
RATE = 300.0  # readings/s, both protocols
DEVICES = 400
_fleets = itertools.count(1)


async def under_traffic(
    stack: LocalStack, nc: NATS, fault: Callable[[], Awaitable[None]], seconds: float = 14.0
) -> SimulationReport:
    """Drives a fresh fleet at RATE for `seconds`, runs `fault` 2 s in, then checks exact delivery."""
    first_id = next(_fleets) * 100_000 + (os.getpid() % 100) * 1_000_000
    await stack.provision(DEVICES, 0.5, first_id)
    simulation = Simulation(SimulationConfig(
        devices=DEVICES, rate=RATE, duration=seconds, udp_target=("127.0.0.1", stack.udp_port),
        http_url=f"http://127.0.0.1:{stack.http_port}/v1/sigfox", sigfox_token=stack.sigfox_token,
        master_key=stack.master_key, first_id=first_id, ack_timeout=1.0, sigfox_retry_delays=(1, 2, 4, 8),
    ))
    traffic = asyncio.create_task(simulation.run(settle_timeout=90))
    await asyncio.sleep(2.0)
    await fault()
    report = await traffic
    delivery = await delivery_once_drained(stack, nc, report.acked_readings)
    assert sum(report.acked.values()) > RATE * seconds * 0.5, report.lines()
    assert delivery.exact, (delivery.line(), delivery.total_mismatches[:5], report.lines())
    assert delivery.delivered == len({(r.protocol, r.device, r.seq) for r in report.acked_readings})
    return report


def crash_at(stack: LocalStack, service: str, point: str, hit: int) -> Callable[[], Awaitable[None]]:
    """Restarts `service` armed to SIGKILL itself at `point`, waits for the crash, starts it clean."""

    async def fault() -> None:
        proc = stack.services[service]
        proc.stop()
        proc.start(PULSESTACK_FAULTS=f"{point}={hit}")
        code = await asyncio.to_thread(proc.wait_exit, 60)
        assert code == -9, f"{service} was expected to die at {point}, exited {code}"
        proc.start()
        await asyncio.to_thread(proc.wait_ready)

    return fault


@pytest.mark.parametrize(
    ("service", "point", "hit"),
    [
        ("raw-processor", "raw.after_commit", 5),
        ("ingest-udp", "udp.after_puback", 200),
    ],
)
async def test_kill_9_at_an_injection_point(stack: LocalStack, nc: NATS, service: str, point: str, hit: int) -> None:
    await under_traffic(stack, nc, crash_at(stack, service, point, hit))


async def test_postgres_down_for_20_seconds(stack: LocalStack, nc: NATS) -> None:
    assert stack.postgres is not None

    async def outage() -> None:
        await asyncio.to_thread(stack.postgres.stop)  # type: ignore[union-attr]
        await asyncio.sleep(20)
        await asyncio.to_thread(stack.postgres.resume)  # type: ignore[union-attr]

    await under_traffic(stack, nc, outage, seconds=26)


async def test_nats_restart(stack: LocalStack, nc: NATS) -> None:
    assert stack.nats is not None

    async def restart() -> None:
        await asyncio.to_thread(stack.nats.stop)  # type: ignore[union-attr]
        await asyncio.sleep(6)
        await asyncio.to_thread(stack.nats.start)  # type: ignore[union-attr]

    report = await under_traffic(stack, nc, restart, seconds=16)
    # While NATS was away the HTTP ingester said so, and the Sigfox backend retried.
    assert report.http_statuses[503] > 0, report.lines()


async def test_poison_message_reaches_dead_without_holding_up_others(stack: LocalStack, nc: NATS) -> None:
    proc = stack.services["raw-processor"]
    proc.stop()
    proc.start(PULSESTACK_FAULT_POISON_TRACE="poison-trace")
    await asyncio.to_thread(proc.wait_ready)
    js = nc.jetstream()
    dead_before = (await js.stream_info(DEAD)).state.messages
    now = int(time.time()) - 86_400
    period_end = now - now % 900

    def reading(device: str, trace: str) -> Reading:
        return Reading("nbiot", device, 1, period_end, period_end, 900, [1, 1, 1, 1], 10, 3600, 0, time.time(),
                       trace, b"")

    poison = reading("356938999000001", "poison-trace")
    healthy = [reading(f"35693899900{i:04d}", f"healthy-{i}") for i in range(2, 12)]
    conn = await asyncpg.connect(stack.database_url)
    await device_rows(conn, [poison, *healthy])  # published to RAW as an ingester would, so registered
    for i, r in enumerate([poison, *healthy]):
        await js.publish("raw.nbiot", encode_raw([r]), headers={MSG_ID: f"poison-test-{i}-{period_end}"})
    try:
        async def healthy_stored() -> bool:
            n = await conn.fetchval(
                "SELECT count(*) FROM buckets WHERE device_id = ANY($1)", [r.device for r in healthy]
            )
            return n == 4 * len(healthy)

        # Stored while the poison message is still being redelivered (its last try comes after ~8 s).
        await eventually(healthy_stored, timeout=5)
        await eventually(lambda: _dead_count(nc, dead_before + 1), timeout=60)
        msg = await js.get_last_msg(DEAD, "dead.raw")
        assert msg.headers is not None
        assert msg.headers["Pulsestack-Error"] == "InjectedFault: injected poison (trace poison-trace)"
        assert msg.headers["Pulsestack-Deliveries"] == "5"
        assert metric(stack, "raw-processor", "pulsestack_dead_letters_total", stage="raw") == 1
    finally:
        await forget_devices(conn, [poison, *healthy])
        await conn.close()
        proc.stop()
        proc.start()
        await asyncio.to_thread(proc.wait_ready)


async def _dead_count(nc: NATS, expected: int) -> bool:
    return bool((await nc.jetstream().stream_info(DEAD)).state.messages == expected)
