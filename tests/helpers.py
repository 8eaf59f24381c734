"""Small tools the tests share: polling, metrics, devices, datagrams."""

from __future__ import annotations

import asyncio
import itertools
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import aiohttp
import asyncpg
import nats
import orjson

from pulsestack import keys
from pulsestack.bus.quarantine import QuarantineRecord, decode_record
from pulsestack.bus.topology import QUARANTINE, REGISTRY_BUCKET, drained
from pulsestack.registry import devices as registry
from pulsestack.wire import nbiot
from pulsestack.wire.reading import Reading
from pulsestack_cli.local import LocalStack
from pulsestack_cli.summary import scrape, total
from simulator.fleet import SentReading
from simulator.verify import Delivery, verify

T = TypeVar("T")
_ids = itertools.count(1)


def unique_number(base: int) -> int:
    """Device numbers no other test uses."""
    return base + next(_ids) * 1000 + int(time.time() * 10) % 1000


async def eventually(check: Callable[[], Awaitable[T]], timeout: float = 20.0, interval: float = 0.1) -> T:
    """The first truthy result of `check`, or AssertionError with the last one after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result or time.monotonic() > deadline:
            assert result, f"condition still false after {timeout} s: {result!r}"
            return result
        await asyncio.sleep(interval)


@asynccontextmanager
async def own_database(stack: LocalStack, name: str) -> AsyncIterator[str]:
    """The URL of an empty database of a test's own, on the stack's server (its roles with it); dropped after."""
    admin = await asyncpg.connect(stack.database_url)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {name}")
        yield stack.database_url.rsplit("/", 1)[0] + "/" + name
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await admin.close()


async def delivery_once_drained(stack: LocalStack, nc: nats.NATS, acked: list[SentReading],
                                check_totals: bool = True) -> Delivery:
    """What became of the readings the devices were told are stored, once the stages processed everything;
    `check_totals` compares each device's stored total with its index (not after retention dropped some)."""
    await eventually(lambda: drained(nc.jetstream()), timeout=120, interval=0.5)
    conn = await asyncpg.connect(stack.database_url)
    try:
        return await verify(conn, acked, check_totals)
    finally:
        await conn.close()


def metric(stack: LocalStack, service: str, name: str, **labels: str) -> float:
    return total(scrape(stack.services[service].url("/metrics")), name, **labels)


INGESTER_OF = {"nbiot": "ingest-udp", "sigfox": "ingest-http", "lorawan": "ingest-http"}


async def register(stack: LocalStack, protocol: str, devices: list[str]) -> None:
    """Registers devices and waits until their ingester knows them, as the registry's KV watch tells it:
    on a loaded machine that can take seconds, and a reading sent before is quarantined as unknown."""
    conn = await asyncpg.connect(stack.database_url)
    nc = await nats.connect(stack.nats_url)
    try:
        bucket = await nc.jetstream().key_value(REGISTRY_BUCKET)
        await registry.add(conn, bucket, stack.master_key, protocol, devices, "test")

        async def known() -> bool:
            enabled = await conn.fetchval(
                "SELECT count(*) FROM devices WHERE protocol = $1 AND NOT disabled", protocol)
            return metric(stack, INGESTER_OF[protocol], "pulsestack_registry_devices", protocol=protocol) == enabled

        await eventually(known, timeout=30)
    finally:
        await nc.close()
        await conn.close()


# A device's stored readings, and how many: readings know their device by its registry row's integer id.
READING_ROWS = ("SELECT r.* FROM readings r JOIN devices d ON d.id = r.device"
                " WHERE d.protocol = $1 AND d.device_id = $2 ORDER BY r.device_time, r.seq")
READINGS_OF = f"SELECT count(*) FROM ({READING_ROWS}) r"


async def device_rows(conn: asyncpg.Connection | asyncpg.Pool, readings: list[Reading]) -> None:
    """The registry rows of the readings' devices, for tests that store readings without ingesting them (the
    store refuses a reading whose device has none); no KV entries, since nothing here ingests."""
    await conn.execute(
        "INSERT INTO devices (protocol, device_id, shard) SELECT p, d, 0 FROM unnest($1::text[], $2::text[]) AS u(p, d)"
        " ON CONFLICT DO NOTHING", [r.protocol for r in readings], [r.device for r in readings],
    )


async def forget_devices(conn: asyncpg.Connection | asyncpg.Pool, readings: list[Reading]) -> None:
    """Removes what `device_rows` committed: `register` waits for the ingesters to know every device row."""
    await conn.execute(
        "DELETE FROM devices d USING unnest($1::text[], $2::text[]) AS u(p, i)"
        " WHERE (d.protocol, d.device_id) = (u.p, u.i)",
        [r.protocol for r in readings], [r.device for r in readings],
    )


async def post_callback(
    stack: LocalStack, path: str, token: str, body: object = None, *, raw: bytes | None = None,
    content_type: str = "application/json", method: str = "POST",
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """A network server's callback to ingest-http: (status, JSON answer, headers). An empty token sends none."""
    headers = {"Content-Type": content_type}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = raw if raw is not None else orjson.dumps(body)
    async with aiohttp.ClientSession() as http, http.request(
        method, f"http://127.0.0.1:{stack.http_port}{path}", data=data, headers=headers
    ) as response:
        text = await response.read()
        return response.status, (orjson.loads(text) if text else {}), dict(response.headers)


async def quarantine_records(nc: nats.NATS) -> list[QuarantineRecord]:
    """Every record the QUARANTINE stream holds, oldest first."""
    js = nc.jetstream()
    info = await js.stream_info(QUARANTINE)
    records = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        try:
            records.append(decode_record((await js.get_msg(QUARANTINE, seq)).data))
        except Exception:  # removed meanwhile, or not a record
            continue
    return records


def device_key(stack: LocalStack, device: int, version: int = 0) -> bytes:
    return keys.derive(stack.master_key, "nbiot", str(device), version)


def now_aligned(step: int = 900, back: int = 86_400) -> int:
    t = int(time.time()) - back
    return t - t % step


class UdpDevice:
    """One NB-IoT device with its own socket: send a frame, wait for the ack (or its absence)."""

    def __init__(self, stack: LocalStack, number: int, key: bytes | None = None) -> None:
        self.stack = stack
        self.number = number
        self.key = key if key is not None else device_key(stack, number)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)

    def frame(self, **fields: int | list[int]) -> bytes:
        values = {"seq": 1, "period_end": now_aligned(), "bucket_seconds": 900, "counts": [1, 2, 3, 4],
                  "index": 1000, "battery_mv": 3600, "flags": 0}
        values.update(fields)
        return nbiot.encode(self.key, device=self.number, **values)  # type: ignore[arg-type]

    async def exchange(self, data: bytes, wait: float = 3.0) -> bytes | None:
        """Sends `data` to the ingester; returns the reply, or None if none came within `wait`."""
        loop = asyncio.get_running_loop()
        self.sock.sendto(data, ("127.0.0.1", self.stack.udp_port))
        try:
            return await asyncio.wait_for(loop.sock_recv(self.sock, 64), wait)
        except TimeoutError:
            return None

    async def send(
        self, wait: float = 3.0, attempts: int = 1, **fields: int | list[int]
    ) -> tuple[int, int] | None:
        """Sends one reading, retransmitting like a device up to `attempts` times; returns the
        authenticated ack (seq, status) or None."""
        for attempt in range(attempts):
            if attempt:
                fields["flags"] = int(fields.get("flags", 0)) | 0x01  # type: ignore[call-overload]
            reply = await self.exchange(self.frame(**fields), wait)
            if reply is not None:
                return nbiot.decode_ack(self.key, reply)
        return None

    def close(self) -> None:
        self.sock.close()


async def run_cli(stack: LocalStack, *args: str) -> tuple[int, str]:
    """Runs `pulsestack ARGS` as an operator would, against the test stack; returns (exit code, stdout)."""
    import os
    import sys

    env = {**os.environ, "NATS_URL": stack.nats_url, "DATABASE_URL": stack.database_url,
           "PULSESTACK_DEVICE_MASTER_KEY_FILE": str(stack.master_key_file)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pulsestack_cli", *args, env=env, stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode()
