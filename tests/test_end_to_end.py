"""Readings of both protocols through both stages, checked row by row in PostgreSQL."""

from __future__ import annotations

import datetime as dt

import aiohttp
import asyncpg

from pulsestack.wire import nbiot, sigfox
from pulsestack_cli.local import LocalStack
from tests.helpers import (
    READING_ROWS,
    READINGS_OF,
    UdpDevice,
    eventually,
    metric,
    now_aligned,
    register,
    unique_number,
)

UTC = dt.UTC


def ts(seconds: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, UTC)


async def pulses_of(db: asyncpg.Connection, protocol: str, device: str) -> list[tuple[int, int]]:
    rows = await db.fetch(
        "SELECT bucket_start, count FROM buckets WHERE protocol = $1 AND device_id = $2 ORDER BY bucket_start",
        protocol, device,
    )
    return [(int(r["bucket_start"].timestamp()), r["count"]) for r in rows]


async def gaps_of(db: asyncpg.Connection, device: str) -> list[tuple[int, int, int, str]]:
    rows = await db.fetch(
        "SELECT interval_start, interval_end, volume, kind FROM gaps WHERE protocol = 'nbiot' AND device_id = $1"
        " ORDER BY from_period_end",
        device,
    )
    return [(int(r["interval_start"].timestamp()), int(r["interval_end"].timestamp()), r["volume"], r["kind"])
            for r in rows]


async def nbiot_device(stack: LocalStack) -> UdpDevice:
    number = unique_number(356_938_100_000_000)
    await register(stack, "nbiot", [str(number)])
    device = UdpDevice(stack, number)
    return device


async def test_nbiot_reading_is_stored_exactly(stack: LocalStack, db: asyncpg.Connection) -> None:
    device = await nbiot_device(stack)
    end = now_aligned()
    assert await device.send(seq=7, period_end=end, counts=[12, 0, 7, 40], index=123456) == (7, nbiot.ACK_STORED)
    expected = [(end - 3600, 12), (end - 2700, 0), (end - 1800, 7), (end - 900, 40)]
    await eventually(lambda: _equals(pulses_of(db, "nbiot", str(device.number)), expected))
    raw = await db.fetchrow(READING_ROWS, "nbiot", str(device.number))
    assert (raw["seq"], raw["meter_index"], raw["counts"], raw["device_time"]) == (7, 123456, [12, 0, 7, 40], ts(end))
    assert raw["payload"] == device.frame(seq=7, period_end=end, counts=[12, 0, 7, 40], index=123456)
    state = await db.fetchrow("SELECT * FROM device_state WHERE protocol = 'nbiot' AND device_id = $1",
                              str(device.number))
    assert (state["last_seq"], state["last_index"], state["readings"]) == (7, 123456, 1)
    device.close()


async def _equals(coro, expected):  # type: ignore[no-untyped-def]
    got = await coro
    return got if got == expected else None


async def test_sigfox_callback_is_stored_exactly(stack: LocalStack, db: asyncpg.Connection) -> None:
    device = f"{unique_number(0x2B000000):X}"
    await register(stack, "sigfox", [device])
    time_ = now_aligned() + 437
    body = {
        "device": device.lower(), "time": time_, "seqNumber": 4095, "station": "1F2E", "rssi": -120.5,
        "data": sigfox.encode_payload(index=99, counts=[1, 2, 3, 4], battery_mv=3300).hex(), "duplicate": False,
    }
    async with aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{stack.http_port}/v1/sigfox"
        headers = {"Authorization": f"Bearer {stack.sigfox_token}"}
        async with http.post(url, json=body, headers=headers) as response:
            assert (response.status, await response.json()) == (200, {"status": "stored"})
        # Another base station's copy of the same message.
        async with http.post(url, json={**body, "duplicate": True}, headers=headers) as response:
            assert (response.status, await response.json()) == (200, {"status": "duplicate"})
    end = time_ - time_ % 900
    expected = [(end - 3600, 1), (end - 2700, 2), (end - 1800, 3), (end - 900, 4)]
    await eventually(lambda: _equals(pulses_of(db, "sigfox", device), expected))
    raw = await db.fetch(READING_ROWS, "sigfox", device)
    assert len(raw) == 1
    assert (raw[0]["seq"], raw[0]["device_time"]) == (4095, ts(time_))
    assert '"station": "1F2E"' in raw[0]["meta"]
    assert await db.fetchval("SELECT last_battery_mv FROM device_state WHERE protocol = 'sigfox' AND device_id = $1",
                             device) == 3300


async def test_retransmission_is_acked_again_and_stored_once(stack: LocalStack, db: asyncpg.Connection) -> None:
    device = await nbiot_device(stack)
    end = now_aligned()
    before = metric(stack, "ingest-udp", "pulsestack_ingest_duplicates_total")
    assert await device.send(seq=1, period_end=end) == (1, nbiot.ACK_STORED)
    assert await device.send(seq=1, period_end=end, flags=0x01) == (1, nbiot.ACK_DUPLICATE)
    assert await device.send(seq=1, period_end=end, flags=0x01) == (1, nbiot.ACK_DUPLICATE)
    await eventually(lambda: _equals(_count(db, device), 4))
    assert await db.fetchval(READINGS_OF, "nbiot", str(device.number)) == 1
    assert metric(stack, "ingest-udp", "pulsestack_ingest_duplicates_total") - before == 2
    device.close()


async def _count(db: asyncpg.Connection, device: UdpDevice) -> int:
    return int(await db.fetchval("SELECT count(*) FROM buckets WHERE device_id = $1", str(device.number)))


async def test_gap_is_attributed_then_recomputed_when_a_late_reading_lands(
    stack: LocalStack, db: asyncpg.Connection
) -> None:
    device = await nbiot_device(stack)
    name = str(device.number)
    t0 = now_aligned(3600, 5 * 86_400)
    # A ends at t0; C covers [t0 + 2h, t0 + 3h): the hour between is uncovered.
    assert await device.send(seq=1, period_end=t0, counts=[1, 1, 1, 1], index=1000)
    assert await device.send(seq=3, period_end=t0 + 3 * 3600, counts=[2, 2, 2, 2], index=1000 + 20 + 8)
    await eventually(lambda: _equals(gaps_of(db, name), [(t0, t0 + 7200, 20, "gap")]))
    # B arrives late and covers the second hour: 10 pulses in its buckets, the index says 12.
    assert await device.send(seq=2, period_end=t0 + 2 * 3600, counts=[1, 2, 3, 4], index=1000 + 12)
    recomputed = [(t0, t0 + 3600, 2, "gap"), (t0 + 7200, t0 + 7200, 8, "adjustment")]
    await eventually(lambda: _equals(gaps_of(db, name), recomputed))
    total = await db.fetchval(
        "SELECT (SELECT sum(count) FROM buckets WHERE device_id = $1 AND bucket_start >= $2)"
        " + (SELECT sum(volume) FROM gaps WHERE device_id = $1)", name, ts(t0),
    )
    assert total == 28  # the index difference between the first and the last reading
    device.close()


async def test_index_wrap_and_meter_reset(stack: LocalStack, db: asyncpg.Connection) -> None:
    device = await nbiot_device(stack)
    name = str(device.number)
    t0 = now_aligned(3600, 4 * 86_400)
    assert await device.send(seq=1, period_end=t0, index=2**32 - 6)
    assert await device.send(seq=2, period_end=t0 + 3600, counts=[1, 2, 3, 4], index=4)  # wrapped: +10
    assert await device.send(seq=3, period_end=t0 + 7200, counts=[0, 0, 0, 1], index=1)  # replaced meter
    await eventually(lambda: db.fetchval("SELECT count(*) FROM meter_events WHERE device_id = $1", name))
    event = await db.fetchrow("SELECT * FROM meter_events WHERE device_id = $1", name)
    assert (event["kind"], event["from_index"], event["to_index"], event["seq"]) == ("reset", 4, 1, 3)
    await eventually(lambda: _equals(_count(db, device), 12))
    assert await gaps_of(db, name) == []
    device.close()


async def test_bucket_conflict_goes_to_the_later_reading(stack: LocalStack, db: asyncpg.Connection) -> None:
    device = await nbiot_device(stack)
    name = str(device.number)
    t0 = now_aligned(3600, 3 * 86_400)
    before = metric(stack, "raw-processor", "pulsestack_bucket_conflicts_total")
    # The later reading (seq 2, later device time) re-reports the last two quarter-hours with other counts.
    assert await device.send(seq=2, period_end=t0 + 1800, counts=[9, 9, 9, 9], index=1030)
    await eventually(lambda: _equals(_count(db, device), 4))
    assert await device.send(seq=1, period_end=t0, counts=[1, 2, 3, 4], index=1010)
    await eventually(lambda: _equals(_count(db, device), 6))
    assert await pulses_of(db, "nbiot", name) == [
        (t0 - 3600, 1), (t0 - 2700, 2), (t0 - 1800, 9), (t0 - 900, 9), (t0, 9), (t0 + 900, 9)
    ]
    assert metric(stack, "raw-processor", "pulsestack_bucket_conflicts_total") - before == 2
    device.close()
