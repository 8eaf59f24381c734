"""Data out through the running read API: the device list's pages and filters, and the streamed CSV export
(the devices: tests/api_fleet.py)."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import socket
from pathlib import Path
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import aiohttp
import asyncpg
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.handlers import EXPORT_BATCH
from pulsestack_cli.local import LocalStack
from tests.api_fleet import HOURS, START, Fleet
from tests.helpers import eventually


def _auth(stack: LocalStack) -> dict[str, str]:
    return {"Authorization": f"Bearer {stack.api_token}"}


# ------------------------------------------------------------------ the device list


@given(
    limit=st.integers(1, 70),
    protocol=st.sampled_from([None, "nbiot", "sigfox"]),
    label_tail=st.sampled_from(["", "a", "%", "_", "A"]),
    silent=st.sampled_from([None, True, False]),
    open_alerts=st.sampled_from([None, True, False]),
)
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_pages_list_every_matching_device_exactly_once(
    stack: LocalStack, api_fleet: Fleet, limit: int, protocol: str | None, label_tail: str,
    silent: bool | None, open_alerts: bool | None,
) -> None:
    query: dict[str, str | int] = {"limit": limit, "label_prefix": api_fleet.prefix + label_tail}
    for name, value in (("protocol", protocol), ("silent", silent), ("open_alerts", open_alerts)):
        if value is not None:
            query[name] = value if isinstance(value, str) else str(value).lower()
    expected = [
        (d.protocol, d.device) for d in api_fleet.devices
        if d.label.startswith(api_fleet.prefix + label_tail) and protocol in (None, d.protocol)
        and silent in (None, "silent" in d.alerts) and open_alerts in (None, bool(d.alerts))
    ]
    listed: list[tuple[str, str]] = []
    url = f"http://127.0.0.1:{stack.api_port}/v1/devices"
    while True:
        response = requests.get(url, params=query, headers=_auth(stack), timeout=30)
        assert response.status_code == 200, response.text
        page = response.json()
        assert 1 <= len(page["devices"]) <= limit or (not page["devices"] and not listed and not expected)
        for item in page["devices"]:
            assert item["silent"] == ("silent" in item["open_alerts"])
        listed += [(item["protocol"], item["device"]) for item in page["devices"]]
        if page["next"] is None:
            assert "Link" not in response.headers
            break
        assert f"cursor={page['next']}" in response.headers["Link"] and response.headers["Link"].endswith('rel="next"')
        query["cursor"] = page["next"]
    assert listed == expected


def test_a_device_is_listed_with_its_settings_and_open_alerts(stack: LocalStack, api_fleet: Fleet) -> None:
    device = next(d for d in api_fleet.devices if d.alerts == {"silent", "battery_low"} and d.weight and d.zone)
    response = requests.get(f"http://127.0.0.1:{stack.api_port}/v1/devices", headers=_auth(stack), timeout=30,
                            params={"label_prefix": device.label, "protocol": device.protocol, "limit": "1000"})
    [item] = [i for i in response.json()["devices"] if i["device"] == device.device]
    assert item == {
        "protocol": device.protocol, "device": device.device, "label": device.label, "disabled": True,
        "settings": {"pulse_weight": device.weight, "timezone": device.zone}, "last_seen": None,
        "interval_seconds": None, "open_alerts": ["battery_low", "silent"], "silent": True,
    }


# ------------------------------------------------------------------ the export


async def _export(stack: LocalStack, params: list[tuple[str, str]]) -> tuple[int, list[list[str]], int]:
    """Status, CSV rows (header first) and the number of HTTP chunks the body came in."""
    chunks, body = 0, b""
    async with aiohttp.ClientSession() as http, http.get(
        f"http://127.0.0.1:{stack.api_port}/v1/consumption.csv", params=params, headers=_auth(stack),
    ) as response:
        async for data, end_of_chunk in response.content.iter_chunks():
            body += data
            chunks += end_of_chunk
        if response.status == 200:
            assert response.headers["Content-Type"] == "text/csv; charset=utf-8"
            assert response.headers["Transfer-Encoding"] == "chunked"
    return response.status, list(csv.reader(io.StringIO(body.decode()))), chunks


async def test_an_export_of_every_device_streams_the_rollup_rows_in_chunks(
    stack: LocalStack, api_fleet: Fleet, db: asyncpg.Connection,
) -> None:
    end = START + dt.timedelta(hours=HOURS)
    status, rows, chunks = await _export(stack, [("from", START.isoformat()), ("to", end.isoformat())])
    assert status == 200 and rows[0] == ["protocol", "device", "hour", "pulses", "volume"]
    mine = {(d.protocol, d.device): d for d in api_fleet.large}
    exported = [r for r in rows[1:] if (r[0], r[1]) in mine]
    stored = await db.fetch(
        "SELECT protocol, device_id, hour, pulses FROM consumption_hourly WHERE device_id = ANY($1)"
        " AND hour >= $2 AND hour < $3 AND pulses <> 0 ORDER BY protocol, device_id, hour",
        [d.device for d in api_fleet.large], START, end,
    )
    assert len(stored) > 30_000
    weight = {key: device.weight or 1 for key, device in mine.items()}
    assert [(p, d, dt.datetime.fromisoformat(h), int(n), float(v)) for p, d, h, n, v in exported] == [
        (r["protocol"], r["device_id"], r["hour"], r["pulses"], r["pulses"] * weight[r["protocol"], r["device_id"]])
        for r in stored
    ]
    # Sent as it was read, a batch at a time, not gathered first.
    assert chunks >= len(rows) // EXPORT_BATCH


async def test_an_export_of_listed_devices_per_day_matches_their_consumption(
    stack: LocalStack, api_fleet: Fleet,
) -> None:
    zoned = [d for d in api_fleet.devices if d.zone]
    listed = [*zoned[:6], next(d for d in api_fleet.devices if not d.zone)]
    # Eight UTC days from noon: each zone touches other local days (UTC+14 and UTC-10).
    start = dt.datetime.combine(START.date(), dt.time(12), dt.UTC)
    end = start + dt.timedelta(days=8)
    params = [("from", start.isoformat()), ("to", end.isoformat()), ("resolution", "day")]
    status, rows, _ = await _export(stack, params + [("device", f"{d.protocol}:{d.device}") for d in listed])
    assert status == 200 and rows[0] == ["protocol", "device", "day", "pulses", "volume"]
    expected = []
    for d in sorted(listed, key=lambda d: (d.protocol, d.device)):
        zone = ZoneInfo(d.zone or "UTC")
        first = start.astimezone(zone).date()
        last = (end - dt.timedelta(microseconds=1)).astimezone(zone).date()
        for n in range(10):
            day = START.date() + dt.timedelta(days=n)
            if first <= day <= last and n % 5:
                expected.append([d.protocol, d.device, day.isoformat(), str(n % 5), str(n % 5 * (d.weight or 1.0))])
    assert rows[1:] == expected
    # The same periods and volumes as each device's own consumption endpoint.
    async with aiohttp.ClientSession(headers=_auth(stack)) as http:
        for d in listed:
            async with http.get(f"http://127.0.0.1:{stack.api_port}/v1/devices/{d.protocol}/{d.device}/consumption",
                                params=dict(params)) as response:
                points = (await response.json())["points"]
            assert [[p["start"], p["pulses"], p["volume"]] for p in points] == [
                [day, int(n), float(v)] for protocol, device, day, n, v in rows[1:] if device == d.device]


@pytest.mark.parametrize(("params", "status", "detail"), [
    ([("from", "2024-01-02T00:00:00Z"), ("to", "2024-01-01T00:00:00Z")], 400, "to must be after from"),
    ([("from", "yesterday"), ("to", "2024-01-01T00:00:00Z")], 400, "from: RFC 3339 date-time expected"),
    ([("from", "0001-01-01T00:00:00+01:00"), ("to", "2024-01-01T00:00:00Z")], 400, "from: out of range"),
    ([("from", "2024-01-01T00:00:00Z"), ("to", "9999-12-31T23:59:59-01:00")], 400, "to: out of range"),
    ([("to", "2024-01-01T00:00:00Z")], 400, "from is required"),
    ([("from", "2024-01-01T00:00:00Z"), ("to", "2024-01-02T00:00:00Z"), ("resolution", "daily")], 400,
     "resolution must be hour or day"),
    ([("from", "2024-01-01T00:00:00Z"), ("to", "2024-01-02T00:00:00Z"), ("device", "12345")], 400,
     "device '12345': protocol:id expected, protocol one of nbiot, sigfox, lorawan"),
    ([("from", "2024-01-01T00:00:00Z"), ("to", "2024-01-02T00:00:00Z"), ("device", "nbiot:12A")], 400,
     "device: '12A' is not an NB-IoT device id: a decimal number below 2^64 (an IMEI)"),
    ([("from", "2024-01-01T00:00:00Z"), ("to", "2024-01-02T00:00:00Z"), ("device", "nbiot:1"),
      ("protocol", "nbiot")], 400, "give device or protocol, not both"),
    ([("from", "2024-01-01T00:00:00Z"), ("to", "2024-01-02T00:00:00Z"), ("granularity", "hourly")], 400,
     "unknown parameter 'granularity'; allowed: from, to, resolution, protocol, device"),
    ([("from", "2024-01-01T00:00:00Z"), ("to", "2024-01-02T00:00:00Z"), ("device", "sigfox:FFFFFFF0")], 404,
     "not registered: sigfox:FFFFFFF0"),
])
async def test_a_bad_export_request_gets_a_specific_answer(
    stack: LocalStack, params: list[tuple[str, str]], status: int, detail: str,
) -> None:
    async with aiohttp.ClientSession() as http, http.get(
        f"http://127.0.0.1:{stack.api_port}/v1/consumption.csv", params=params, headers=_auth(stack),
    ) as response:
        assert (response.status, await response.json()) == (
            status, {"error": "bad_parameter" if status == 400 else "unknown_device", "detail": detail})


@pytest.mark.parametrize(("query", "detail"), [
    ("cursor=bm90IGEgY3Vyc29y", "cursor: not a cursor this API issued (take `next` from a previous page)"),
    ("cursor=%%%", "cursor: not a cursor this API issued (take `next` from a previous page)"),
    ("cursor=WyJ4IiwiMSJd", "cursor: not a cursor this API issued (take `next` from a previous page)"),
    # ["nbiot", "\u0000"], ["sigfox", "0a"], ["nbiot", 1]: well-formed, but no device is there
    ("cursor=WyJuYmlvdCIsIlx1MDAwMCJd", "cursor: not a cursor this API issued (take `next` from a previous page)"),
    ("cursor=WyJzaWdmb3giLCIwYSJd", "cursor: not a cursor this API issued (take `next` from a previous page)"),
    ("cursor=WyJuYmlvdCIsMV0", "cursor: not a cursor this API issued (take `next` from a previous page)"),
    ("label_prefix=%00", "label_prefix: no label contains NUL"),
    ("limit=0", "limit must be between 1 and 1000"),
    ("limit=1001", "limit must be between 1 and 1000"),
    ("silent=yes", "silent must be true or false"),
    ("open_alerts=1", "open_alerts must be true or false"),
    ("protocol=lora", "protocol must be one of nbiot, sigfox, lorawan"),
    ("limit=5&limit=6", "limit given more than once"),
])
def test_a_bad_device_list_request_gets_a_specific_answer(stack: LocalStack, query: str, detail: str) -> None:
    response = requests.get(f"http://127.0.0.1:{stack.api_port}/v1/devices?{query}", headers=_auth(stack), timeout=30)
    assert (response.status_code, response.json()) == (400, {"error": "bad_parameter", "detail": detail})


@pytest.mark.parametrize("path", [
    "/v1/devices", "/v1/consumption.csv?from=2024-01-01T00:00:00Z&to=2024-01-02T00:00:00Z",
])
@pytest.mark.parametrize("authorization", [None, "Bearer not-a-token"])
def test_the_data_needs_a_token(stack: LocalStack, path: str, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    response = requests.get(f"http://127.0.0.1:{stack.api_port}{path}", headers=headers, timeout=30)
    assert response.status_code == 401 and response.json()["error"] == "unauthorized"
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="pulsestack"'


async def test_an_export_the_client_abandons_ends_quietly_and_frees_its_connection(
    stack: LocalStack, api_fleet: Fleet,
) -> None:
    log = stack.workdir / "logs" / "api.log"
    end = (START + dt.timedelta(hours=HOURS)).isoformat()
    query = urlencode({"from": START.isoformat(), "to": end})
    request = (f"GET /v1/consumption.csv?{query} HTTP/1.1\r\nHost: api\r\n"
               f"Authorization: Bearer {stack.api_token}\r\n\r\n").encode()
    loop = asyncio.get_running_loop()
    for _ in range(3):  # more than the exports' two connections: each abandoned one must give its back
        before = log.stat().st_size
        with socket.socket() as sock:
            # A small receive window keeps the server from handing the whole export (~1.5 MB) to the kernel
            # before the client goes: it is still writing when the connection is reset.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", stack.api_port))
            await loop.sock_sendall(sock, request)
            assert (await loop.sock_recv(sock, 1024)).startswith(b"HTTP/1.1 200")
        await eventually(lambda offset=before: _logged(log, offset, b"export abandoned by the client"), timeout=10)
        text = log.read_bytes()[before:]
        assert b"Traceback" not in text and b"Error handling request" not in text, text.decode()
    device = api_fleet.large[0]
    status, rows, _ = await _export(
        stack, [("from", START.isoformat()), ("to", end), ("device", f"{device.protocol}:{device.device}")])
    assert status == 200 and len(rows) > HOURS // 2  # the exports' pool has its connections back


async def _logged(log: Path, offset: int, line: bytes) -> bool:
    return line in log.read_bytes()[offset:]
