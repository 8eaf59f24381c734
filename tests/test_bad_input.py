"""Every row of the bad-input table, over real sockets: the answer, the reason label, the quarantine."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from pulsestack.bus.topology import RAW, RAW_CONSUMER
from pulsestack.wire import sigfox
from pulsestack_cli.local import LocalStack
from tests.helpers import (
    UdpDevice,
    device_key,
    eventually,
    metric,
    now_aligned,
    post_callback,
    quarantine_records,
    register,
    run_cli,
    unique_number,
)


def rejected(stack: LocalStack, service: str, reason: str) -> float:
    return metric(stack, service, "pulsestack_ingest_rejected_total", reason=reason)


async def quarantined_readings(nc: NATS, device: str) -> list[str]:
    """Reasons of the quarantine records about `device`."""
    return [r.reason for r in await quarantine_records(nc) if r.reading is not None and r.reading.device == device]


async def registered_device(stack: LocalStack) -> UdpDevice:
    number = unique_number(356_938_200_000_000)
    await register(stack, "nbiot", [str(number)])
    return UdpDevice(stack, number)


def _with(frame: bytes, offset: int, value: bytes) -> bytes:
    return frame[:offset] + value + frame[offset + len(value):]


@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        (lambda f: f[:20], "malformed"),  # too short
        (lambda f: f + bytes(600), "malformed"),  # too long
        (lambda f: f[:-1], "malformed"),  # length does not match n
        (lambda f: _with(f, 0, b"\x02"), "malformed"),  # wrong version
        (lambda f: _with(f, 20, b"\xf1"), "malformed"),  # n = 241
        (lambda f: _with(f, 18, (700).to_bytes(2, "big")), "misaligned"),  # bucket_seconds not allowed
        (lambda f: _with(f, 14, (now_aligned() + 60).to_bytes(4, "big")), "misaligned"),
        (lambda f: _with(f, 30, bytes([f[30] ^ 1])), "bad_tag"),  # a flipped bit in the counts
    ],
    ids=["short", "long", "length", "version", "n", "bucket_seconds", "period_end", "tag"],
)
async def test_udp_structural_and_tag_errors_get_no_reply(stack: LocalStack, mangle, reason: str) -> None:  # type: ignore[no-untyped-def]
    device = await registered_device(stack)
    before = rejected(stack, "ingest-udp", reason)
    assert await device.exchange(mangle(device.frame()), wait=1.0) is None
    assert rejected(stack, "ingest-udp", reason) == before + 1
    device.close()


async def test_udp_unknown_and_disabled_devices_are_quarantined_without_reply(stack: LocalStack, nc: NATS) -> None:
    unknown = UdpDevice(stack, unique_number(356_938_300_000_000))
    before = rejected(stack, "ingest-udp", "unknown_device")
    assert await unknown.send(wait=1.0) is None
    disabled = await registered_device(stack)
    assert await run_cli(stack, "devices", "disable", "nbiot", str(disabled.number)) == (
        0, f"nbiot {disabled.number} disabled\n"
    )
    await asyncio.sleep(0.5)  # the registry change travels through the KV bucket
    assert await disabled.send(wait=1.0) is None
    assert rejected(stack, "ingest-udp", "unknown_device") == before + 2
    assert await quarantined_readings(nc, str(unknown.number)) == ["unknown_device"]
    assert await quarantined_readings(nc, str(disabled.number)) == ["unknown_device"]


@pytest.mark.parametrize("offset", [2 * 86_400, -40 * 86_400], ids=["ahead", "too-old"])
async def test_udp_clock_errors_are_quarantined_without_reply(stack: LocalStack, nc: NATS, offset: int) -> None:
    device = await registered_device(stack)
    before = rejected(stack, "ingest-udp", "clock")
    end = int(time.time()) + offset
    assert await device.send(wait=1.0, period_end=end - end % 900) is None
    assert rejected(stack, "ingest-udp", "clock") == before + 1
    assert await quarantined_readings(nc, str(device.number)) == ["clock"]
    device.close()


async def test_garbage_flood_from_one_source_does_not_hurt_others(stack: LocalStack) -> None:
    device = await registered_device(stack)
    flood = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    unknown = UdpDevice(stack, unique_number(356_938_400_000_000))
    before_q = metric(stack, "ingest-udp", "pulsestack_quarantined_total", reason="unknown_device")
    for i in range(20_000):
        # Half structural garbage, half authentic frames of an unregistered device (quarantine candidates).
        data = bytes(43) if i % 2 else unknown.frame(seq=i)
        flood.sendto(data, ("127.0.0.1", stack.udp_port))
        if i % 2000 == 0:
            await asyncio.sleep(0)
    # Like a real device, it retransmits if the ack does not come (the flood may fill the socket buffer).
    ack = await device.send(seq=5, wait=2.0, attempts=5)
    assert ack == (5, 0)
    # Every candidate is counted, but the writes were rate-limited: nowhere near 10,000 records.
    assert metric(stack, "ingest-udp", "pulsestack_quarantined_total", reason="unknown_device") > before_q
    flood.close()
    device.close()
    unknown.close()


async def test_stream_full_means_no_ack_and_503(stack: LocalStack, nc: NATS) -> None:
    """discard: new — a full RAW stream refuses; nothing is acknowledged that it did not take."""
    device = await registered_device(stack)
    sig = f"{unique_number(0x3C000000):X}"
    await register(stack, "sigfox", [sig])
    js = nc.jetstream()
    # RAW is a work queue: with its processor stopped, what it holds stays, and a limit of exactly that is full.
    stack.services["raw-processor"].stop()
    assert await device.send(seq=7) == (7, 0)

    async def only_unprocessed_left() -> bool:
        # RAW lets go of a processed message once the replay copy's source has it too, a few seconds later.
        pending = await js.consumer_info(RAW, RAW_CONSUMER)
        return (await js.stream_info(RAW)).state.messages == pending.num_pending + pending.num_ack_pending

    await eventually(only_unprocessed_left, timeout=30)
    info = await js.stream_info(RAW)
    config = info.config
    original = config.max_msgs
    config.max_msgs = info.state.messages  # full from now on
    await js.update_stream(config)
    try:
        before = rejected(stack, "ingest-udp", "overloaded")
        assert await device.send(wait=1.5) is None
        assert rejected(stack, "ingest-udp", "overloaded") == before + 1
        status, body, headers = await _post(stack, _callback(sig))
        assert (status, body["error"], headers.get("Retry-After")) == (503, "overloaded", "5")
    finally:
        config.max_msgs = original
        await js.update_stream(config)
        stack.services["raw-processor"].start()
    assert await device.send(wait=3.0) == (1, 0)
    device.close()


def _callback(device: str, **overrides: object) -> dict[str, object]:
    body: dict[str, object] = {
        "device": device, "time": now_aligned() + 10, "seqNumber": 1,
        "data": sigfox.encode_payload(index=5, counts=[1, 1, 1, 1], battery_mv=3000).hex(),
    }
    body.update(overrides)
    return body


async def _post(
    stack: LocalStack, body: object = None, *, token: str | None = None, **kwargs: Any,
) -> tuple[int, dict[str, Any], dict[str, str]]:
    return await post_callback(stack, "/v1/sigfox", stack.sigfox_token if token is None else token, body, **kwargs)


async def test_http_answers(stack: LocalStack, nc: NATS) -> None:
    device = f"{unique_number(0x4D000000):X}"
    await register(stack, "sigfox", [device])
    unknown = f"{unique_number(0x5E000000):X}"
    cases = [
        ("unauthorized", 401, None, dict(body=_callback(device), token="wrong")),
        ("unauthorized", 401, None, dict(body=_callback(device), token="")),
        ("unsupported_media_type", 415, "unsupported_media_type",
         dict(body=_callback(device), content_type="text/plain")),
        ("too_large", 413, "too_large", dict(body=_callback(device, station="x" * 5000))),
        ("bad_json", 400, "bad_json", dict(raw=b"{not json")),
        ("bad_field", 400, "bad_field", dict(body={k: v for k, v in _callback(device).items() if k != "seqNumber"})),
        ("bad_field", 400, "bad_field", dict(body=_callback(device, time="yesterday"))),
        ("payload", 422, "payload", dict(body=_callback(device, data="00" * 12))),
        ("malformed", 405, "method_not_allowed", dict(body=_callback(device), method="PUT")),
    ]
    for reason, status, error, kwargs in cases:
        before = rejected(stack, "ingest-http", reason)
        got_status, got_body, _ = await _post(stack, **kwargs)  # type: ignore[arg-type]
        assert got_status == status, (reason, got_body)
        if error:
            assert got_body["error"] == error
        assert rejected(stack, "ingest-http", reason) == before + 1, reason
    status, body, _ = await _post(stack, _callback(device, seqNumber="one"))
    assert body == {"error": "bad_field", "field": "seqNumber", "detail": "expected int"}
    # Quarantined with a 202: a retry would not help.
    status, body, _ = await _post(stack, _callback(unknown))
    assert (status, body) == (202, {"status": "quarantined", "reason": "unknown_device"})
    status, body, _ = await _post(stack, _callback(device, time=int(time.time()) + 3 * 86_400))
    assert (status, body) == (202, {"status": "quarantined", "reason": "clock"})
    assert await quarantined_readings(nc, unknown) == ["unknown_device"]
    assert await quarantined_readings(nc, device) == ["clock"]
    status, body, _ = await _post(stack, _callback(device))
    assert (status, body) == (200, {"status": "stored"})


async def test_key_rotation_reaches_the_ingester_without_restart(stack: LocalStack) -> None:
    device = await registered_device(stack)
    code, out = await run_cli(stack, "devices", "rotate-key", "nbiot", str(device.number))
    assert code == 0
    new_key = bytes.fromhex(out.split()[-1])
    assert new_key == device_key(stack, device.number, 1)
    await asyncio.sleep(0.5)
    assert await device.send(seq=1, wait=1.0) is None  # the old key no longer authenticates
    rotated = UdpDevice(stack, device.number, new_key)
    assert await rotated.send(seq=1) == (1, 0)
    device.close()
    rotated.close()


async def test_a_rotated_key_replaces_the_one_the_ingester_already_derived(stack: LocalStack) -> None:
    # The ingester keeps the keys of devices it heard from: the rotation must still retire the old key.
    device = await registered_device(stack)
    assert await device.send(seq=1) == (1, 0)
    code, out = await run_cli(stack, "devices", "rotate-key", "nbiot", str(device.number))
    assert code == 0
    await asyncio.sleep(0.5)
    assert await device.send(seq=2, wait=1.0) is None
    rotated = UdpDevice(stack, device.number, bytes.fromhex(out.split()[-1]))
    assert await rotated.send(seq=2) == (2, 0)
    device.close()
    rotated.close()


async def test_quarantine_replay_after_late_provisioning(stack: LocalStack, nc: NATS) -> None:
    import asyncpg

    device = UdpDevice(stack, unique_number(356_938_500_000_000))
    assert await device.send(seq=3, wait=1.0) is None
    await register(stack, "nbiot", [str(device.number)])
    code, out = await run_cli(stack, "quarantine", "replay")
    assert code == 0 and out.startswith("replayed "), out
    conn = await asyncpg.connect(stack.database_url)
    try:
        async def stored() -> int:
            return int(await conn.fetchval("SELECT count(*) FROM buckets WHERE device_id = $1", str(device.number)))
        assert await eventually(stored) == 4
    finally:
        await conn.close()
    assert await quarantined_readings(nc, str(device.number)) == []
    assert (await run_cli(stack, "quarantine", "replay"))[1].startswith("replayed 0 reading(s)")
    device.close()


