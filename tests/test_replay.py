"""`pulsestack replay` after a database restore (docs/durability.md, "Replay after a restore").

The restore is a real one: `pg_dump` of the live database at T (what `backup.yml` takes), restored with
`pg_restore` into a database of its own while the live one goes on storing. Readings reach the database only
through the live path (NB-IoT datagrams, ingest, RAW, the raw processor). After `replay --since T` as the raw
stage's role, every table the store writes holds, for the test's devices, what the live path derived; a second
replay changes nothing.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import orjson
import pytest
from nats.aio.client import Client as NATS

from pulsestack.bus.topology import RAW, RAW_REPLAY, drained
from pulsestack.store.migrate import migrate
from pulsestack_cli.local import LocalStack, with_user
from pulsestack_cli.localstack import postgres_binaries
from tests.helpers import UdpDevice, eventually, now_aligned, own_database, register, unique_number
from tests.test_cli_errors import cli, one_line, servers

TAMPER = 0x04  # the NB-IoT frame's tamper bit (pulsestack/wire/nbiot.py)
# What the store writes, per table, for the given devices; without what differs by nature between two
# databases (write times, outbox flags), a device referred to by its canonical id instead of its integer one.
TABLES = {
    "readings": "SELECT d.protocol, d.device_id, r.seq, r.device_time, r.bucket_seconds, r.counts, r.meter_index,"
                " r.received_at, r.payload, r.meta FROM readings r JOIN devices d ON d.id = r.device",
    "pulses": "SELECT protocol, device_id, bucket_start, bucket_seconds, count, device_time, seq FROM buckets",
    "gaps": "SELECT protocol, device_id, from_period_end, from_seq, to_period_end, to_seq, interval_start,"
            " interval_end, volume, kind FROM gaps",
    "meter_events": "SELECT protocol, device_id, at, seq, kind, from_index, to_index FROM meter_events",
    "device_state": "SELECT to_jsonb(t)::text AS state FROM device_state t",
    "consumption_hourly": "SELECT * FROM consumption_hourly",
    "consumption_daily": "SELECT * FROM consumption_daily",
    # Silence is the alerting sweep's, which runs against the live database only.
    "alerts": "SELECT protocol, device_id, kind, resolved_at IS NULL AS open, day, detail::text"
              " AS detail FROM alerts WHERE kind <> 'silent'",
}


async def contents(url: str, devices: list[str]) -> dict[str, list[tuple[object, ...]]]:
    conn = await asyncpg.connect(url)
    try:
        return {table: sorted(tuple(row) for row in await conn.fetch(
                    f"SELECT * FROM ({query}) q WHERE protocol = 'nbiot' AND device_id = ANY($1)"
                    if table != "device_state" else
                    f"SELECT * FROM ({query}) q WHERE (state::jsonb ->> 'device_id') = ANY($1)", devices))
                for table, query in TABLES.items()}
    finally:
        await conn.close()


@pytest.fixture
async def scratch_url(stack: LocalStack) -> AsyncIterator[str]:
    async with own_database(stack, f"replay_{os.getpid()}") as url:
        yield url


async def copied(nc: NATS) -> tuple[int, int]:
    """Last sequences of RAW and RAW_REPLAY."""
    js = nc.jetstream()
    return (await js.stream_info(RAW)).state.last_seq, (await js.stream_info(RAW_REPLAY)).state.last_seq


async def settled(nc: NATS, since: tuple[int, int]) -> None:
    """The processor has stored everything, and RAW_REPLAY has its copy of every message RAW took since
    `since` (the source copies a few seconds behind)."""
    await eventually(lambda: drained(nc.jetstream()), timeout=60, interval=0.2)

    async def caught_up() -> bool:
        raw, replay = await copied(nc)
        return replay - since[1] >= raw - since[0]

    await eventually(caught_up, timeout=60, interval=0.2)


async def run(program: Path, *args: str) -> None:
    proc = await asyncio.create_subprocess_exec(program, *args)
    assert await proc.wait() == 0, f"{program.name} failed"


async def replay(url: str, stack: LocalStack, since: str) -> tuple[dict[str, object], str]:
    code, out, err = await cli("replay", "--since", since, "--json",
                               **{**servers(stack), "DATABASE_URL": with_user(url, "pulsestack_raw")})
    assert code == 0 and "Traceback" not in err, err
    report: dict[str, object] = orjson.loads(out)
    return report, err


async def test_replay_after_restore_stores_what_the_live_path_stored(
    stack: LocalStack, nc: NATS, scratch_url: str, tmp_path: Path
) -> None:
    numbers = [unique_number(7_300_000) for _ in range(3)]
    devices = [str(n) for n in numbers]
    await register(stack, "nbiot", devices)
    meters = [UdpDevice(stack, n) for n in numbers]
    start = now_aligned(3600)
    before = await copied(nc)

    async def send(seq: int, hour: int, index: int, flags: int = 0) -> None:
        for meter in meters:
            assert await meter.send(seq=seq, period_end=start + hour * 3600, index=index, flags=flags,
                                    attempts=3) == (seq, 0)

    # Before T: two readings a device, the hour between them fully covered.
    await send(1, 1, 1000)
    await send(2, 2, 1010)
    await settled(nc, before)
    at_t = await copied(nc)
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    dump = tmp_path / "at_t.dump"
    bin_dir = postgres_binaries()
    await run(bin_dir / "pg_dump", "-Fc", "-f", str(dump), "-d", stack.database_url)

    # After T, what the restore lacks: an hour without a reading (a gap in the rollups), a meter reset (a meter
    # event) showing tamper (an alert), and a late reading of the missing hour (the gaps on both sides
    # recomputed). The live path stores them one batch each, the replay in one.
    await send(3, 3, 1020)
    await send(4, 5, 1045)
    await send(5, 6, 100, flags=TAMPER)
    await send(6, 4, 1035)
    await settled(nc, at_t)
    for meter in meters:
        meter.close()
    live = await contents(stack.database_url, devices)
    assert len(live["readings"]) == 18 and live["gaps"] and live["meter_events"] and live["alerts"]

    await run(bin_dir / "pg_restore", "-d", scratch_url, str(dump))
    restored = await contents(scratch_url, devices)
    assert len(restored["readings"]) == 6 and restored != live

    first, err = await replay(scratch_url, stack, since)
    assert first["stored"] == 12 and first["not_covered_from"] is None, (first, err)
    assert first["invalid"] == first["undecodable"] == first["rejected"] == 0
    assert await contents(scratch_url, devices) == live

    second, _ = await replay(scratch_url, stack, since)
    assert second["stored"] == 0 and second["duplicates"] == first["readings"] == second["readings"]
    assert await contents(scratch_url, devices) == live


async def test_since_older_than_the_stream_warns_of_what_cannot_be_replayed(
    stack: LocalStack, scratch_url: str
) -> None:
    conn = await asyncpg.connect(scratch_url)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    report, err = await replay(scratch_url, stack, "400d")
    assert report["not_covered_from"] and report["not_covered_to"], report
    assert f"WARNING: {RAW_REPLAY} does not reach back to {report['not_covered_from']}" in err, err
    assert f"to {report['not_covered_to']} that the restored database lacks cannot be replayed" in err, err


@pytest.mark.parametrize(("since", "starts"), [
    ("yesterday", "--since 'yesterday' is neither an ISO time"),
    ("2h ago", "--since '2h ago' is neither an ISO time"),
    ("2999-01-01T00:00:00Z", "--since '2999-01-01T00:00:00Z' is 2999-01-01T00:00:00+00:00, in the future"),
])
async def test_unusable_since_is_one_line(stack: LocalStack, since: str, starts: str) -> None:
    code, out, err = await cli("replay", "--since", since, **servers(stack))
    assert code == 2 and not out
    one_line(err, starts)
