"""Rollups kept live equal a recomputation and a replay; alerts open once and resolve; the notifier signs
and retries; the read API keeps its OpenAPI contract."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import random
from collections import defaultdict
from zoneinfo import ZoneInfo

import aiohttp
import asyncpg
import orjson
from aiohttp import web
from nats.aio.client import Client as NATS

from pulsestack.bus.topology import ALERTS
from pulsestack.store.rollups import spread
from pulsestack_cli.local import LocalStack
from tests.helpers import READING_ROWS, UdpDevice, eventually, metric, now_aligned, register, run_cli, unique_number

HOUR = 3600


async def device_with(stack: LocalStack, *settings: str) -> UdpDevice:
    number = unique_number(356_938_600_000_000)
    await register(stack, "nbiot", [str(number)])
    if settings:
        code, out = await run_cli(stack, "devices", "set", "nbiot", str(number), *settings)
        assert code == 0, out
    return UdpDevice(stack, number)


async def processed(db: asyncpg.Connection, device: UdpDevice, readings: int) -> bool:
    n = await db.fetchval("SELECT readings FROM device_state WHERE device_id = $1", str(device.number))
    return n == readings


async def rollups(db: asyncpg.Connection, device: str) -> tuple[dict[object, int], dict[object, int]]:
    hourly = {r["hour"]: r["pulses"] for r in await db.fetch(
        "SELECT hour, pulses FROM consumption_hourly WHERE device_id = $1 AND pulses <> 0", device)}
    daily = {r["day"]: r["pulses"] for r in await db.fetch(
        "SELECT day, pulses FROM consumption_daily WHERE device_id = $1 AND pulses <> 0", device)}
    return hourly, daily


async def recomputed(db: asyncpg.Connection, device: str, zone: str) -> tuple[dict[object, int], dict[object, int]]:
    """The rollups computed from scratch out of pulses and gaps, independently of the live deltas."""
    slots: dict[int, int] = defaultdict(int)
    for r in await db.fetch("SELECT bucket_start, count FROM buckets WHERE device_id = $1", device):
        start = int(r["bucket_start"].timestamp())
        slots[start - start % 900] += r["count"]
    for g in await db.fetch("SELECT interval_start, interval_end, volume FROM gaps WHERE device_id = $1", device):
        for slot, share in spread(int(g["interval_start"].timestamp()), int(g["interval_end"].timestamp()),
                                  g["volume"]):
            slots[slot] += share
    hourly: dict[object, int] = defaultdict(int)
    daily: dict[object, int] = defaultdict(int)
    for slot, n in slots.items():
        moment = dt.datetime.fromtimestamp(slot, dt.UTC)
        hourly[moment.replace(minute=0)] += n
        daily[moment.astimezone(ZoneInfo(zone)).date()] += n
    return {k: v for k, v in hourly.items() if v}, {k: v for k, v in daily.items() if v}


async def test_live_rollups_equal_recomputation_and_replay(stack: LocalStack, db: asyncpg.Connection) -> None:
    device = await device_with(stack, "timezone=Asia/Kolkata")  # +05:30: days do not start on UTC hours
    name = str(device.number)
    rng = random.Random(7)
    t0 = now_aligned(HOUR, 6 * 86_400)
    readings = []
    index = 5000
    for k in range(30):
        counts = [rng.randrange(0, 20) for _ in range(4)]
        index += sum(counts) + (rng.randrange(1, 9) if k % 7 == 3 else 0)  # sometimes pulses no bucket shows
        readings.append({"seq": k + 1, "period_end": t0 + k * HOUR, "counts": counts, "index": index})
    held_back = [readings.pop(12), readings.pop(12)]  # a gap, one side of it filled late
    order = readings[:]
    rng.shuffle(order)  # out of order
    for r in order + order[:5]:  # and duplicates
        assert await device.send(**r) is not None
    assert await device.send(**held_back[0]) is not None
    await eventually(lambda: processed(db, device, len(readings) + 1), timeout=30)
    live = await rollups(db, name)
    assert live == await recomputed(db, name, "Asia/Kolkata")
    pulses = await db.fetch("SELECT * FROM buckets WHERE device_id = $1 ORDER BY bucket_start", name)
    gaps = await db.fetch("SELECT * FROM gaps WHERE device_id = $1 ORDER BY from_period_end", name)
    assert gaps, "the readings held back leave a gap"

    code, out = await run_cli(stack, "reprocess", "--protocol", "nbiot", "--device", name)
    assert code == 0 and out.startswith(f"reprocessed {len(readings) + 1} reading(s) of 1 device(s)"), out
    assert await rollups(db, name) == live
    assert await db.fetch("SELECT * FROM buckets WHERE device_id = $1 ORDER BY bucket_start", name) == pulses
    assert [(g["interval_start"], g["interval_end"], g["volume"]) for g in await db.fetch(
        "SELECT * FROM gaps WHERE device_id = $1 ORDER BY from_period_end", name)] == [
        (g["interval_start"], g["interval_end"], g["volume"]) for g in gaps]
    device.close()


async def test_a_decoding_error_is_fixed_by_replaying(stack: LocalStack, db: asyncpg.Connection) -> None:
    """Derived rows went wrong (as a buggy decoder would make them); reprocessing from the raw payload
    restores them, rollups included."""
    device = await device_with(stack)
    name = str(device.number)
    # All three readings on one UTC day, whatever the time of the run: the "buggy" daily rollup below adds
    # all three readings' error to one day (a run just after midnight failed on two).
    t0 = now_aligned(86_400, 5 * 86_400) + 3 * HOUR
    for k in range(3):
        assert await device.send(seq=k + 1, period_end=t0 + k * HOUR, counts=[1, 2, 3, 4], index=100 + 10 * (k + 1))
    await eventually(lambda: processed(db, device, 3))
    good = await rollups(db, name)
    # What a decoder that read every count as 9 would have stored, consistently, rollups included.
    await db.execute("UPDATE readings SET counts = '{9,9,9,9}'"
                     " WHERE device = (SELECT id FROM devices WHERE protocol = 'nbiot' AND device_id = $1)", name)
    await db.execute("UPDATE consumption_daily SET pulses = pulses + 3 * 26 WHERE device_id = $1", name)
    code, out = await run_cli(stack, "reprocess", "--protocol", "nbiot", "--device", name)
    assert code == 0 and "3 decoded differently now" in out, out
    assert await db.fetchval("SELECT sum(count) FROM buckets WHERE device_id = $1", name) == 30
    assert [r["counts"] for r in await db.fetch(READING_ROWS, "nbiot", name)] == [[1, 2, 3, 4]] * 3
    assert await rollups(db, name) == good
    device.close()


async def alert_rows(db: asyncpg.Connection, device: UdpDevice, kind: str) -> list[asyncpg.Record]:
    return list(await db.fetch(
        "SELECT * FROM alerts WHERE device_id = $1 AND kind = $2 ORDER BY id", str(device.number), kind))


async def published(nc: NATS, alert_id: int) -> list[str]:
    """Events of one alert on the ALERTS stream."""
    js = nc.jetstream()
    info = await js.stream_info(ALERTS)
    events = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        body = orjson.loads((await js.get_msg(ALERTS, seq)).data)
        if body["id"] == alert_id:
            events.append(body["event"])
    return events


async def test_flag_alerts_open_once_and_resolve(stack: LocalStack, db: asyncpg.Connection, nc: NATS) -> None:
    device = await device_with(stack)
    t0 = now_aligned(HOUR, 3 * 86_400)
    tamper = 0x04
    assert await device.send(seq=1, period_end=t0, flags=tamper)
    assert await device.send(seq=2, period_end=t0 + HOUR, flags=tamper)
    await eventually(lambda: processed(db, device, 2))
    assert await device.send(seq=3, period_end=t0 + 2 * HOUR)
    await eventually(lambda: processed(db, device, 3))
    rows = await alert_rows(db, device, "tamper")
    assert len(rows) == 1 and rows[0]["resolved_at"] is not None
    assert await eventually(lambda: published(nc, rows[0]["id"])) == ["opened", "resolved"]
    device.close()


async def test_leak_opens_after_a_day_of_flow_and_resolves_on_zero_flow(
    stack: LocalStack, db: asyncpg.Connection
) -> None:
    device = await device_with(stack)
    t0 = now_aligned(HOUR, 4 * 86_400)
    index = 0
    for k in range(26):  # 26 hours in which no quarter-hour is without flow
        index += 8
        assert await device.send(seq=k + 1, period_end=t0 + k * HOUR, counts=[2, 2, 2, 2], index=index)
    await eventually(lambda: processed(db, device, 26))
    rows = await alert_rows(db, device, "leak")
    assert len(rows) == 1 and rows[0]["resolved_at"] is None
    assert await device.send(seq=27, period_end=t0 + 26 * HOUR, counts=[2, 0, 2, 2], index=index + 6)
    await eventually(lambda: processed(db, device, 27))
    rows = await alert_rows(db, device, "leak")
    assert len(rows) == 1 and rows[0]["resolved_at"] is not None
    device.close()


async def test_daily_threshold_raised_once_per_day(stack: LocalStack, db: asyncpg.Connection) -> None:
    device = await device_with(stack, "pulse_weight=0.5", "daily_limit=20")
    day = now_aligned(86_400, 3 * 86_400)
    for k in range(4):  # 10 pulses an hour = 5 units an hour: the limit is crossed in the 4th hour
        assert await device.send(seq=k + 1, period_end=day + (k + 1) * HOUR, counts=[1, 2, 3, 4],
                                 index=10 * (k + 1))
    await eventually(lambda: processed(db, device, 4))
    rows = await alert_rows(db, device, "threshold")
    assert len(rows) == 1
    assert orjson.loads(rows[0]["detail"])["total"] == 20
    assert await device.send(seq=5, period_end=day + 5 * HOUR, counts=[1, 1, 1, 1], index=44)
    await eventually(lambda: processed(db, device, 5))
    assert len(await alert_rows(db, device, "threshold")) == 1  # once a day
    # That day is over, so the sweep ends the alert.
    await eventually(lambda: _resolved(db, device, "threshold"), timeout=10)
    device.close()


async def _resolved(db: asyncpg.Connection, device: UdpDevice, kind: str) -> bool:
    rows = await alert_rows(db, device, kind)
    return bool(rows) and all(r["resolved_at"] is not None for r in rows)


async def test_silent_meter_found_by_the_sweep_and_resolved_by_a_reading(
    stack: LocalStack, db: asyncpg.Connection
) -> None:
    device = await device_with(stack)
    t0 = now_aligned(HOUR, 2 * 86_400)
    for k in range(4):  # reports every ~0.5 s: that is its interval now
        assert await device.send(seq=k + 1, period_end=t0 + k * HOUR)
        await asyncio.sleep(0.5)
    await eventually(lambda: processed(db, device, 4))
    rows = await eventually(lambda: alert_rows(db, device, "silent"), timeout=15)
    assert len(rows) == 1 and rows[0]["resolved_at"] is None
    assert await device.send(seq=5, period_end=t0 + 4 * HOUR)
    await eventually(lambda: _resolved(db, device, "silent"))
    device.close()


async def test_webhook_notifier_signs_and_retries(stack: LocalStack, db: asyncpg.Connection) -> None:
    received: list[tuple[bytes, dict[str, str]]] = []
    attempts = 0

    async def hook(request: web.Request) -> web.Response:
        nonlocal attempts
        attempts += 1
        if attempts <= 2:
            return web.Response(status=500)  # the receiver is down for a moment
        received.append((await request.read(), dict(request.headers)))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    alerting = stack.services["alerting"]
    alerting.stop()
    alerting.start(PULSESTACK_WEBHOOK_URL=f"http://127.0.0.1:{port}/hook")
    await asyncio.to_thread(alerting.wait_ready)
    try:
        device = await device_with(stack)
        assert await device.send(seq=1, period_end=now_aligned(HOUR), flags=0x08)  # reverse flow
        await eventually(lambda: processed(db, device, 1))
        alert = (await alert_rows(db, device, "reverse_flow"))[0]
        await eventually(lambda: _has(received, alert["id"]), timeout=30)
        body, headers = next((b, h) for b, h in received if orjson.loads(b)["id"] == alert["id"])
        secret = stack.webhook_secret_file.read_text().strip().encode()
        expected = hmac.new(secret, headers["X-Pulsestack-Timestamp"].encode() + b"." + body, hashlib.sha256)
        assert headers["X-Pulsestack-Signature"] == "sha256=" + expected.hexdigest()
        assert orjson.loads(body)["event"] == "opened"
        assert metric(stack, "alerting", "pulsestack_notifications_total", outcome="failed") >= 2
        device.close()
    finally:
        alerting.stop()
        alerting.start()
        await asyncio.to_thread(alerting.wait_ready)
        await runner.cleanup()


async def _has(received: list[tuple[bytes, dict[str, str]]], alert_id: int) -> bool:
    return any(orjson.loads(b)["id"] == alert_id for b, _ in received)


async def test_read_api_serves_what_the_rollups_hold(stack: LocalStack, db: asyncpg.Connection) -> None:
    device = await device_with(stack, "pulse_weight=2")
    t0 = now_aligned(86_400, 2 * 86_400) + 12 * HOUR
    assert await device.send(seq=1, period_end=t0, counts=[1, 2, 3, 4], index=10)
    assert await device.send(seq=2, period_end=t0 + HOUR, counts=[0, 0, 5, 5], index=20)
    await eventually(lambda: processed(db, device, 2))
    start = dt.datetime.fromtimestamp(t0 - 2 * HOUR, dt.UTC).isoformat()
    end = dt.datetime.fromtimestamp(t0 + 2 * HOUR, dt.UTC).isoformat()
    base = f"http://127.0.0.1:{stack.api_port}/v1"
    auth = {"Authorization": f"Bearer {stack.api_token}"}
    async with aiohttp.ClientSession() as http:
        url = f"{base}/devices/nbiot/{device.number}/consumption"
        async with http.get(url, params={"from": start, "to": end}, headers=auth) as r:
            body = await r.json()
        assert [(p["pulses"], p["volume"]) for p in body["points"]] == [(10, 20.0), (10, 20.0)]
        async with http.get(url, params={"from": start, "to": end, "resolution": "day"}, headers=auth) as r:
            assert [p["pulses"] for p in (await r.json())["points"]] == [20]
        async with http.get(f"{base}/devices/nbiot/{device.number}/state", headers=auth) as r:
            state = await r.json()
        assert (state["last_seq"], state["last_index"], state["readings"]) == (2, 20, 2)
        async with http.get(f"{base}/alerts", headers={}) as r:
            assert r.status == 401
    device.close()


