"""LoRaWAN uplinks from both network servers' HTTP integrations, over real sockets through the real stack:
stored once end to end (retries, both formats), odd frames and unknown devices quarantined with a 202, other
events answered and counted, and every bad-input row."""

from __future__ import annotations

import os
import time
from typing import Any

import asyncpg
import orjson
import pytest
from nats.aio.client import Client as NATS

from pulsestack.wire import lorawan, sigfox
from pulsestack_cli.local import LocalStack
from simulator.run import Simulation, SimulationConfig
from tests import helpers
from tests.helpers import READING_ROWS, eventually, metric, now_aligned, post_callback, register, unique_number

CHIRPSTACK = "/v1/lorawan/chirpstack?event=up"
TTS = "/v1/lorawan/tts"


def payload(index: int, counts: list[int]) -> bytes:
    return sigfox.encode_payload(index=index, counts=counts, battery_mv=3300)


async def post(stack: LocalStack, path: str, body: object = None, *, token: str | None = None,
               **kwargs: Any) -> tuple[int, dict[str, Any], dict[str, str]]:
    return await post_callback(stack, path, stack.route_token(lorawan.PROTOCOL) if token is None else token, body,
                               **kwargs)


async def lorawan_device(stack: LocalStack) -> int:
    number = unique_number(0x70B3D5_0000000000)
    await register(stack, lorawan.PROTOCOL, [f"{number:016X}"])
    return number


async def pulses_of(db: asyncpg.Connection, device: int) -> list[tuple[int, int]]:
    rows = await db.fetch("SELECT bucket_start, count FROM buckets WHERE protocol = 'lorawan' AND device_id = $1"
                          " ORDER BY bucket_start", f"{device:016X}")
    return [(int(r["bucket_start"].timestamp()), r["count"]) for r in rows]


async def raw_rows(db: asyncpg.Connection, device: int) -> list[asyncpg.Record]:
    return await db.fetch(f"SELECT * FROM ({READING_ROWS}) r ORDER BY seq", "lorawan", f"{device:016X}")


def rejected(stack: LocalStack, reason: str) -> float:
    return metric(stack, "ingest-http", "pulsestack_ingest_rejected_total", protocol="lorawan", reason=reason)


async def test_both_servers_uplinks_are_stored_once_with_gaps_late_readings_and_a_rejoin(
    stack: LocalStack, db: asyncpg.Connection,
) -> None:
    device = await lorawan_device(stack)
    start = now_aligned()
    # One uplink an hour (four quarter-hour counts each): fCnt 10, 11, (12 late), 13 through ChirpStack; a
    # rejoin resets fCnt to 0 and The Things Stack carries the meter on (same DevEUI, same payload); hour 6
    # never arrives, so hour 7's index leaves a gap of its four pulses.
    sends = [
        (CHIRPSTACK, lorawan.chirpstack_uplink, 10, 0, 100),
        (CHIRPSTACK, lorawan.chirpstack_uplink, 11, 1, 104),
        (CHIRPSTACK, lorawan.chirpstack_uplink, 13, 3, 112),
        (CHIRPSTACK, lorawan.chirpstack_uplink, 12, 2, 108),  # late
        (TTS, lorawan.tts_uplink, 0, 4, 116),  # after a rejoin
        (TTS, lorawan.tts_uplink, 1, 5, 120),
        (TTS, lorawan.tts_uplink, 3, 7, 128),  # fCnt 2 lost
    ]
    for path, build, seq, hour, index in sends:
        at = start + 3600 * hour + 437  # within the quarter hour: the identity is its start
        body = build(device, seq, at, payload(index, [1, 1, 1, 1]))
        status, answer, _ = await post(stack, path, body)
        assert (status, answer) == (200, {"status": "stored"}), (seq, answer)
        # The network server delivers the same webhook again later (a timeout on its side): stored once.
        status, answer, _ = await post(stack, path, body)
        assert (status, answer) == (200, {"status": "duplicate"}), (seq, answer)
    expected = [(start + 900 * q, 1) for q in range(-4, 20)] + [(start + 900 * q, 1) for q in range(24, 28)]
    await eventually(lambda: _equals(pulses_of(db, device), expected))
    rows = await raw_rows(db, device)
    assert sorted((r["seq"], int(r["device_time"].timestamp())) for r in rows) == sorted(
        (seq, start + 3600 * hour) for _, _, seq, hour, _ in sends)
    assert {orjson.loads(r["meta"])["server"] for r in rows} == {"chirpstack", "tts"}
    gaps = await db.fetch("SELECT interval_start, interval_end, volume, kind FROM gaps"
                          " WHERE protocol = 'lorawan' AND device_id = $1", f"{device:016X}")
    assert [(int(g["interval_start"].timestamp()), int(g["interval_end"].timestamp()), g["volume"], g["kind"])
            for g in gaps] == [(start + 3600 * 5, start + 3600 * 6, 4, "gap")]
    # `reprocess` reads the stored payloads again with the codec table's LoRaWAN codec and derives the same.
    code, out = await helpers.run_cli(stack, "reprocess", "--protocol", "lorawan", "--device", f"{device:016X}")
    assert code == 0 and out.startswith(
        f"reprocessed {len(sends)} reading(s) of 1 device(s); 0 decoded differently now, 0 undecodable"), out
    assert await pulses_of(db, device) == expected
    assert len(await db.fetch("SELECT 1 FROM gaps WHERE protocol = 'lorawan' AND device_id = $1",
                              f"{device:016X}")) == 1


async def test_a_later_copy_in_the_same_quarter_hour_is_stored_once(stack: LocalStack, db: asyncpg.Connection) -> None:
    """A copy received minutes later (another gateway's time, a late redelivery) within the same quarter hour
    has the same identity as the first."""
    device = await lorawan_device(stack)
    at = now_aligned() + 100
    body = lorawan.chirpstack_uplink(device, 7, at, payload(50, [2, 2, 2, 2]))
    assert (await post(stack, CHIRPSTACK, body))[1] == {"status": "stored"}
    # Another gateway's later copy, a few minutes on but in the same quarter hour, under the same fCnt.
    later = {**body, "time": lorawan.chirpstack_uplink(device, 7, at + 300, b"")["time"]}
    assert (await post(stack, CHIRPSTACK, later))[1] == {"status": "duplicate"}
    await eventually(lambda: _len(raw_rows(db, device), 1))
    assert len(await raw_rows(db, device)) == 1


async def test_odd_frames_are_quarantined_with_202(stack: LocalStack, nc: NATS) -> None:
    device = await lorawan_device(stack)
    at = now_aligned() + 10
    before = rejected(stack, "payload")
    for path, body in [
        (CHIRPSTACK, lorawan.chirpstack_uplink(device, 3, at, payload(1, [1, 1, 1, 1]), port=2)),
        (CHIRPSTACK, lorawan.chirpstack_uplink(device, 4, at, b"\x01\x02")),
        (TTS, lorawan.tts_uplink(device, 5, at, payload(1, [1, 1, 1, 1]), port=10)),
    ]:
        status, answer, _ = await post(stack, path, body)
        assert (status, answer) == (202, {"status": "quarantined", "reason": "payload"})
    assert rejected(stack, "payload") == before + 3
    # Kept as the webhook bodies were received: nothing decoded them, a replay after a fix starts there.
    bodies = await eventually(lambda: _len(_quarantined_bodies(nc, f"lorawan:{device:016X}"), 3))
    assert [reason for reason, _ in bodies] == ["payload"] * 3
    assert all(f"{device:016x}" in raw.decode().lower() for _, raw in bodies)


async def test_events_without_a_reading_are_answered_and_counted(stack: LocalStack) -> None:
    def events(event: str) -> float:
        return metric(stack, "ingest-http", "pulsestack_ingest_events_total", protocol="lorawan", event=event)

    before = {name: events(name) for name in ("join", "status", "txack", "join_accept")}
    for event in ("join", "status", "txack"):
        status, answer, _ = await post(stack, f"/v1/lorawan/chirpstack?event={event}", {"deviceInfo": {}})
        assert (status, answer) == (200, {"status": "ignored", "event": event})
    status, answer, _ = await post(stack, TTS, {"end_device_ids": {"dev_eui": "0004A30B001C0530"},
                                                "join_accept": {"session_key_id": "AXBSH1Pk6Z0G166"}})
    assert (status, answer) == (200, {"status": "ignored", "event": "join_accept"})
    assert {name: events(name) - before[name] for name in before} == {name: 1 for name in before}


@pytest.mark.parametrize("path", [CHIRPSTACK, TTS])
async def test_bad_input_table(stack: LocalStack, nc: NATS, path: str) -> None:
    device = await lorawan_device(stack)
    unknown = unique_number(0x70B3D5_8000000000)
    build = lorawan.chirpstack_uplink if path == CHIRPSTACK else lorawan.tts_uplink
    at = now_aligned() + 20

    def body(number: int = device, seq: int = 1) -> dict[str, Any]:
        return build(number, seq, at, payload(9, [1, 2, 3, 4]))

    bad_field = body()
    if path == CHIRPSTACK:
        bad_field["fCnt"] = "one"
    else:
        bad_field["uplink_message"]["f_cnt"] = "one"
    cases: list[tuple[str, int, str | None, dict[str, Any]]] = [
        ("unauthorized", 401, "unauthorized", dict(body=body(), token="wrong")),
        ("unauthorized", 401, "unauthorized", dict(body=body(), token="")),
        # The Sigfox backend's token does not open the LoRaWAN routes.
        ("unauthorized", 401, "unauthorized", dict(body=body(), token=stack.route_token(sigfox.PROTOCOL))),
        # ChirpStack's Protobuf marshaler.
        ("unsupported_media_type", 415, "unsupported_media_type",
         dict(raw=b"\x0a\x24", content_type="application/octet-stream")),
        ("too_large", 413, "too_large", dict(body={**body(), "pad": "x" * 40_000})),
        ("bad_json", 400, "bad_json", dict(raw=b"{not json")),
        ("bad_json", 400, "bad_json", dict(body=[1, 2])),
        ("bad_field", 400, "bad_field", dict(body=bad_field)),
        ("malformed", 405, "method_not_allowed", dict(body=body(), method="PUT")),
    ]
    for reason, status, error, kwargs in cases:
        before = rejected(stack, reason)
        got_status, got_body, headers = await post(stack, path, **kwargs)
        assert (got_status, got_body.get("error")) == (status, error), (reason, got_body)
        if status == 401:
            assert headers["WWW-Authenticate"] == 'Bearer realm="lorawan"'
        assert rejected(stack, reason) == before + 1, reason
    status, answer, _ = await post(stack, path, bad_field)
    assert answer["field"] in ("fCnt", "uplink_message.f_cnt")
    status, answer, _ = await post(stack, path, body(unknown))
    assert (status, answer) == (202, {"status": "quarantined", "reason": "unknown_device"})
    clock = build(device, 2, time.time() + 3 * 86_400, payload(9, [1, 2, 3, 4]))
    status, answer, _ = await post(stack, path, clock)
    assert (status, answer) == (202, {"status": "quarantined", "reason": "clock"})
    assert [reason for reason, _ in await _quarantined_bodies(nc, f"lorawan:{unknown:016X}")] == ["unknown_device"]
    status, answer, _ = await post(stack, path, body())
    assert (status, answer) == (200, {"status": "stored"})


async def test_a_simulated_fleet_with_a_lorawan_share_is_delivered_exactly(stack: LocalStack, nc: NATS) -> None:
    """The simulator's LoRaWAN meters (half on ChirpStack, half on The Things Stack) beside the others."""
    devices, first_id = 60, 90_000_000 + (os.getpid() % 100) * 100_000
    await stack.provision(devices, 0.3, first_id, lorawan_share=0.4)
    simulation = Simulation(SimulationConfig(
        devices=devices, nbiot_share=0.3, lorawan_share=0.4, rate=60, readings=240,
        udp_target=("127.0.0.1", stack.udp_port), http_url=f"http://127.0.0.1:{stack.http_port}/v1/sigfox",
        lorawan_url=f"http://127.0.0.1:{stack.http_port}/v1/lorawan", sigfox_token=stack.sigfox_token,
        lorawan_token=stack.route_token(lorawan.PROTOCOL), master_key=stack.master_key, first_id=first_id,
    ))
    report = await simulation.run(settle_timeout=60)
    assert report.sent[lorawan.PROTOCOL] >= 60 and report.acked == report.sent, report.lines()
    assert {r.protocol for r in report.acked_readings} == {"nbiot", "sigfox", "lorawan"}
    delivery = await helpers.delivery_once_drained(stack, nc, report.acked_readings)
    assert delivery.exact and delivery.delivered == len(report.acked_readings), delivery.line()


async def _quarantined_bodies(nc: NATS, source: str) -> list[tuple[str, bytes]]:
    """(reason, what was kept: the webhook body, or the reading's payload) of the records from `source`."""
    return [(r.reason, r.payload or (r.reading.payload if r.reading else b""))
            for r in await helpers.quarantine_records(nc) if r.source == source]


async def _equals(coro, expected):  # type: ignore[no-untyped-def]
    got = await coro
    return got if got == expected else None


async def _len(coro, n):  # type: ignore[no-untyped-def]
    got = await coro
    return got if len(got) == n else None
