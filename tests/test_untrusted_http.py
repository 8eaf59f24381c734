"""What an HTTP client we do not trust can send, over real sockets to the real services.

- A Sigfox callback whose optional fields and headers carry anything (unicode, controls, lone surrogates,
  long strings, odd JSON types, bytes that are not UTF-8) gets 4xx, or 200 with its reading then stored
  exactly once, or 202 with it quarantined: never 200 without a row (issue #17, defects 1 and 2).
- Thousands of slow or stalled clients do not keep good callbacks from being answered within the Sigfox
  backend's 10 s and stored; the server closes the slow sockets after its read timeout (defect 4).
- Past the connection bound a client gets 503 with Retry-After, not a reset.
- Malformed or aborted requests are one JSON log line each, no traceback.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import resource
import time
from collections.abc import Sequence
from pathlib import Path

import aiohttp
import asyncpg
import orjson
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pulsestack.wire import sigfox
from pulsestack_cli.local import LocalStack
from pulsestack_cli.localstack import free_port
from pulsestack_cli.processes import ServiceProcess
from tests.helpers import eventually, metric, now_aligned, register, unique_number

_readings = itertools.count(1)
SIGFOX_DEADLINE = 10.0  # the Sigfox backend gives up on a callback after 10 s


async def exchange(port: int, request: bytes, timeout: float = 15.0) -> tuple[int, bytes]:
    """Sends raw bytes as one HTTP request on a new connection; returns (status, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        response = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def callback_request(stack: LocalStack, body: bytes, headers: Sequence[tuple[bytes, bytes]] = ()) -> bytes:
    lines = [b"POST /v1/sigfox HTTP/1.1", b"Host: ingest", b"Connection: close",
             b"Content-Type: application/json", f"Authorization: Bearer {stack.sigfox_token}".encode(),
             f"Content-Length: {len(body)}".encode(), *(name + b": " + value for name, value in headers)]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


# Anything JSON can carry, and text with every kind of character; json.dumps escapes lone surrogates as
# \\udXXX, which is how a client would send them.
any_text = st.text(st.characters(exclude_categories=()), max_size=80) | st.sampled_from(
    ["\x00", "a\x00b", "\ud800", "\u202e", "x" * 65, "Good", ""])
odd_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False)
    | any_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(any_text, inner, max_size=3),
    max_leaves=6,
)
optional_fields = st.fixed_dictionaries({}, optional={
    "station": any_text | odd_json, "deviceTypeId": any_text | odd_json, "lqi": any_text | odd_json,
    "rssi": st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**70), 2**70) | odd_json,
    "snr": st.floats(allow_nan=False, allow_infinity=False) | odd_json,
    "duplicate": st.booleans() | odd_json,
})
REQUIRED = ("device", "time", "seqNumber", "data")
unknown_fields = st.dictionaries(any_text.filter(lambda k: k not in REQUIRED), odd_json, max_size=2)
header_values = st.binary(max_size=100).filter(lambda b: b"\r" not in b and b"\n" not in b) | st.sampled_from(
    [b"\xff\xfe", b"\x00", b"ok-trace-id", b"x" * 200, "caf\u00e9".encode()])


async def stored_rows(db: asyncpg.Connection, device: str, seq: int, at: int) -> int:
    return int(await db.fetchval(
        "SELECT count(*) FROM readings r JOIN devices d ON d.id = r.device WHERE d.protocol = 'sigfox'"
        " AND d.device_id = $1 AND r.seq = $2 AND r.device_time = to_timestamp($3)", device, seq, at))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(extra=optional_fields, unknown=unknown_fields, ascii=st.booleans(), trace_id=st.none() | header_values,
       other=st.none() | header_values)
@example(extra={"station": "\x00"}, unknown={}, ascii=True, trace_id=None, other=None)  # defect 1: NUL in jsonb
@example(extra={"deviceTypeId": "a\x00b"}, unknown={}, ascii=True, trace_id=None, other=None)
@example(extra={}, unknown={}, ascii=True, trace_id=b"\xff\xfe", other=None)  # defect 2: a non-UTF-8 trace id
async def test_a_callback_is_refused_or_stored_once_whatever_its_fields_and_headers(
    stack: LocalStack, db: asyncpg.Connection, extra: dict[str, object], unknown: dict[str, object], ascii: bool,
    trace_id: bytes | None, other: bytes | None,
) -> None:
    device = await sigfox_device(stack)
    n = next(_readings)
    at = now_aligned(900, 86_400) + n  # every example its own reading
    seq = n % 4096
    body = {"device": device, "time": at, "seqNumber": seq,
            "data": sigfox.encode_payload(index=n, counts=[1, 2, 3, 4], battery_mv=3300).hex(), **unknown, **extra}
    # Escaped (\\udXXX for a lone surrogate) or raw UTF-8 (where a lone surrogate is bytes no UTF-8 allows).
    raw = json.dumps(body, ensure_ascii=ascii).encode("utf-8", "surrogatepass")
    headers = [(b"X-Trace-Id", trace_id)] if trace_id is not None else []
    if other is not None:
        headers.append((b"X-Forwarded-For", other))
    status, answer = await exchange(stack.http_port, callback_request(stack, raw, headers))
    assert status in (200, 202, 400, 413, 422, 503), (status, answer)
    if status == 200:
        assert orjson.loads(answer) == {"status": "stored"}
        assert await eventually(lambda: stored_rows(db, device, seq, at), timeout=20) == 1
    elif status == 400 and answer.startswith(b"{"):
        assert orjson.loads(answer)["error"] in ("bad_json", "bad_field"), answer
    elif status == 400:
        assert answer, "the HTTP parser refused the request (a header it cannot read) without saying why"
    # A 202 here could only be the clock or an unknown device, neither of which the example varies.
    assert status != 202, answer


_sigfox_device: list[str] = []


async def sigfox_device(stack: LocalStack) -> str:
    """One registered Sigfox device for the whole property (registering per example would be most of it)."""
    if not _sigfox_device:
        _sigfox_device.append(f"{unique_number(0x6A000000):X}")
        await register(stack, "sigfox", _sigfox_device)
    return _sigfox_device[0]


# ------------------------------------------------------------------ slow clients


def raise_own_open_files(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))


class SlowClient:
    """A connection that sends nothing, trickles its headers, or announces a body it never finishes."""

    def __init__(self, port: int, kind: str, token: str = "") -> None:
        self.port = port
        self.kind = kind
        self.token = token
        self.closed_after: float | None = None
        self.answer = b""
        self.reset = False

    async def run(self, started: float, stop: asyncio.Event) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            if self.kind == "body":
                writer.write(b"POST /v1/sigfox HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             b"Authorization: Bearer " + self.token.encode() + b"\r\n"
                             b"Content-Length: 500\r\n\r\n{\"device\":")
            reading = asyncio.ensure_future(reader.read())
            trickle = b"POST /v1/sigfox HTTP/1.1\r\nHost: slow\r\nX-Pad: " + b"a" * 200
            for i in itertools.count():
                if reading.done() or stop.is_set():
                    break
                if self.kind == "headers" and i < len(trickle):
                    writer.write(trickle[i : i + 1])  # one byte every half second: never a whole header block
                await asyncio.wait([reading], timeout=0.5 if self.kind == "headers" else 30)
            if reading.done():
                self.answer = reading.result()
                self.closed_after = time.monotonic() - started
            else:
                reading.cancel()
        except ConnectionError:
            self.closed_after = time.monotonic() - started
            self.reset = True
        finally:
            writer.close()


async def good_callbacks(stack: LocalStack, device: str, count: int) -> list[tuple[int, float, int, int]]:
    """(status, seconds to the answer, seq, time) of `count` good callbacks sent one every 0.3 s."""
    results = []
    async with aiohttp.ClientSession() as http:
        for _ in range(count):
            n = next(_readings)
            body = {"device": device, "time": now_aligned(900, 86_400) + n, "seqNumber": n % 4096,
                    "data": sigfox.encode_payload(index=n, counts=[1, 1, 1, 1], battery_mv=3300).hex()}
            started = time.monotonic()
            async with http.post(f"http://127.0.0.1:{stack.http_port}/v1/sigfox", json=body,
                                 headers={"Authorization": f"Bearer {stack.sigfox_token}"}) as response:
                results.append((response.status, time.monotonic() - started, n % 4096, body["time"]))
            await asyncio.sleep(0.3)
    return results


async def test_slow_clients_are_cut_off_and_good_callbacks_still_answered(
    stack: LocalStack, db: asyncpg.Connection
) -> None:
    raise_own_open_files(8192)
    device = await sigfox_device(stack)
    kinds = ["idle", "headers", "body"]
    clients = [SlowClient(stack.http_port, kinds[i % 3], stack.sigfox_token) for i in range(3000)]
    clients += [SlowClient(stack.api_port, kind) for kind in kinds[:2] for _ in range(10)]  # the read API too
    before = {reason: metric(stack, "ingest-http", "pulsestack_http_connections_refused_total", reason=reason)
              for reason in ("header_timeout", "body_timeout")}
    started = time.monotonic()
    stop = asyncio.Event()
    held = [asyncio.ensure_future(c.run(started, stop)) for c in clients]
    answers = await good_callbacks(stack, device, 20)
    # Every slow socket is closed by the server after its 5 s read timeout (with room for a loaded machine).
    await asyncio.wait(held, timeout=30)
    stop.set()
    await asyncio.gather(*held, return_exceptions=True)
    assert all(status == 200 and seconds < SIGFOX_DEADLINE for status, seconds, _, _ in answers), answers
    for _, _, seq, at in answers:
        assert await eventually(lambda seq=seq, at=at: stored_rows(db, device, seq, at)) == 1
    still_open = [c.kind for c in clients if c.closed_after is None]
    assert not still_open, f"{len(still_open)} slow connections left open: {set(still_open)}"
    assert all(c.closed_after >= 4.5 for c in clients), "closed before the read timeout"  # type: ignore[operator]
    # A client still trickling bytes when the server answers 408 and closes gets a reset for its next byte,
    # which can discard the 408 before the client has read it (seen on a loaded machine).
    assert all(c.answer.startswith(b"HTTP/1.1 408") or (c.reset and c.kind == "headers") for c in clients), {
        (c.kind, c.reset, c.answer[:40]) for c in clients}
    after = {reason: metric(stack, "ingest-http", "pulsestack_http_connections_refused_total", reason=reason)
             for reason in before}
    assert after["header_timeout"] - before["header_timeout"] == 2000
    assert after["body_timeout"] - before["body_timeout"] == 1000


async def test_past_the_connection_bound_a_client_is_told_to_retry(stack: LocalStack, tmp_path: Path) -> None:
    """A second ingest-http with a bound of 20 connections: the 21st is answered 503 with Retry-After."""
    port = free_port()
    env = {**stack.services["ingest-http"].env, "PULSESTACK_HTTP_PORT": str(port), "PULSESTACK_OPS_PORT": str(port),
           "PULSESTACK_HTTP_MAX_CONNECTIONS": "20"}
    service = ServiceProcess("ingest-http", env, port, tmp_path / "ingest-http.log")
    service.start()
    try:
        service.wait_ready()
        await asyncio.sleep(0.2)  # the readiness probe's connection is gone
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(20)]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"), answer
        assert b"\r\nRetry-After: 5\r\n" in answer
        assert answer.endswith(b'{"error":"overloaded","detail":"too many connections"}')
        for _, w in held:
            w.close()
        await asyncio.sleep(0.2)  # the server sees them go, and has room again
        assert (await exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))[0] == 200
    finally:
        service.stop()


async def test_malformed_and_aborted_requests_are_one_log_line_each(stack: LocalStack) -> None:
    service = stack.services["ingest-http"]
    mark = service.log_path.stat().st_size
    for malformed in (b"POST /v1/sigfox HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
                      b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"):
        assert (await exchange(stack.http_port, malformed))[0] == 400
    _, writer = await asyncio.open_connection("127.0.0.1", stack.http_port)
    writer.write(callback_request(stack, b'{"device": "1A"}')[:-5])  # the body cut short, then the client leaves
    await writer.drain()
    writer.close()
    await asyncio.sleep(0.5)
    lines = service.log_path.read_bytes()[mark:].decode().splitlines()
    assert lines, "the malformed requests were not logged at all"
    for line in lines:
        record = json.loads(line)  # every line JSON, none a bare traceback line
        assert "exception" not in record and "Traceback" not in line, line
