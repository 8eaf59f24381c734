"""What the v1 -> v2 data move costs: time per million readings, WAL, disk before and after.

    python -m bench.v1_move [--runs 1000000:10000,1000000:1000]

Each run (readings:batch size) on a database of its own.

Starts its own embedded PostgreSQL with production's postgresql.conf, builds a v1 database (migrations before
008), fills `raw_messages` with COPY in the shape the v1 raw stage writes (70 % NB-IoT with 43-byte frames,
30 % Sigfox with 12-byte payloads and their radio metadata; 24 hourly readings a device, four quarter-hour
counts each; all three v1 indexes), VACUUM ANALYZE, then runs `migrate` — what `pulsestack migrate` runs: the
SQL migration 008, partitions, and the batched move — and times it. Writes
bench/results/<date>-<host>-v1-to-v2-move.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import orjson

from bench.measurement import publish
from pulsestack.registry.membership import shard_of
from pulsestack.store.migrate import _migrations, migrate
from pulsestack_cli.localstack import Postgres

HOURS = 24
NBIOT_SHARE = 0.7
CHUNK = 100_000
V1_COLUMNS = ["protocol", "device_id", "seq", "device_time", "period_end", "bucket_seconds", "counts", "meter_index",
              "battery_mv", "flags", "received_at", "trace_id", "payload", "meta"]


def devices(count: int) -> list[tuple[str, str, int]]:
    """(protocol, device id, number) of `count` meters, NB-IoT first."""
    nbiot = round(count * NBIOT_SHARE)
    return ([("nbiot", str(861_000_000_000_000 + i), 861_000_000_000_000 + i) for i in range(nbiot)]
            + [("sigfox", f"{0x3C000000 + i:X}", 0x3C000000 + i) for i in range(count - nbiot)])


def rows(fleet: list[tuple[str, str, int]], end: int) -> Iterator[tuple[object, ...]]:
    """Each device's HOURS hourly readings, hour by hour across the fleet (the order they arrive in)."""
    meta = orjson.dumps({"station": "1F2E", "rssi": -120.5, "snr": 12.3, "avgSnr": 30.1, "duplicates": 0}).decode()
    for hour in range(HOURS):
        period_end = end - (HOURS - hour) * 3600
        at = dt.datetime.fromtimestamp(period_end, dt.UTC)
        for protocol, device, number in fleet:
            nbiot = protocol == "nbiot"
            device_time = at if nbiot else at + dt.timedelta(seconds=number % 900)
            counts = [(number + hour + q) % 37 for q in range(4)]
            yield (protocol, device, hour + 1 if nbiot else (number + hour) % 4096, device_time, at, 900, counts,
                   1_000 + 80 * hour, 3_600 if nbiot else 3_300, 0, device_time + dt.timedelta(seconds=2),
                   secrets.token_hex(8), os.urandom(43 if nbiot else 12), None if nbiot else meta)


async def v1_database(conn: asyncpg.Connection, readings: int, end: int) -> int:
    """A v1 schema holding `readings` readings; returns the number of devices."""
    await conn.execute("CREATE TABLE schema_migrations (version int PRIMARY KEY, name text NOT NULL,"
                       " applied_at timestamptz NOT NULL DEFAULT now())")
    for version, name, sql in _migrations():
        if version < 8:
            await conn.execute(sql)
            await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name)
    await conn.execute("SELECT pulsestack_ensure_partition('raw_messages', 'device_time', $1)",
                       dt.datetime.fromtimestamp(end - HOURS * 3600, dt.UTC).date())
    await conn.execute("SELECT pulsestack_ensure_partition('raw_messages', 'device_time', $1)",
                       dt.datetime.fromtimestamp(end, dt.UTC).date())
    fleet = devices(readings // HOURS)
    await conn.copy_records_to_table("devices", columns=["protocol", "device_id", "shard"],
                                     records=[(p, d, shard_of(n)) for p, d, n in fleet])
    chunk: list[tuple[object, ...]] = []
    for row in rows(fleet, end):
        chunk.append(row)
        if len(chunk) == CHUNK:
            await conn.copy_records_to_table("raw_messages", columns=V1_COLUMNS, records=chunk)
            chunk = []
    if chunk:
        await conn.copy_records_to_table("raw_messages", columns=V1_COLUMNS, records=chunk)
    await conn.execute("VACUUM ANALYZE")
    return len(fleet)


async def main(readings: int, batch: int) -> list[str]:
    workdir = Path(tempfile.mkdtemp(prefix="pulsestack-v1-move-"))
    pg = Postgres(workdir / "pg")
    pg.start()
    try:
        conn = await asyncpg.connect(pg.url())
        end = int(time.time()) // 3600 * 3600
        t = time.monotonic()
        fleet = await v1_database(conn, readings, end)
        filled = time.monotonic() - t
        stored = await conn.fetchval("SELECT count(*) FROM raw_messages")
        raw_bytes = await conn.fetchval("SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c"
                                        " WHERE c.relname LIKE 'raw_messages%' AND c.relkind IN ('r', 'p')")
        database_before = await conn.fetchval("SELECT pg_database_size(current_database())")
        wal = await conn.fetchval("SELECT pg_current_wal_lsn()")
        os.environ["PULSESTACK_V1_MOVE_BATCH"] = str(batch)
        t = time.monotonic()
        await migrate(conn)
        seconds = time.monotonic() - t
        wal_bytes = await conn.fetchval("SELECT pg_current_wal_lsn() - $1::pg_lsn", wal)
        moved = await conn.fetchval("SELECT count(*) FROM readings")
        await conn.execute("VACUUM ANALYZE readings")
        readings_bytes = await conn.fetchval("SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c"
                                             " WHERE c.relname LIKE 'readings%' AND c.relkind = 'r'")
        database_after = await conn.fetchval("SELECT pg_database_size(current_database())")
        gone = await conn.fetchval("SELECT to_regclass('raw_messages') IS NULL")
        version = await conn.fetchval("SHOW server_version")
        await conn.close()
    finally:
        pg.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    assert moved == stored and gone, (moved, stored, gone)
    return [
        f"run: {readings:,} readings, batches of {batch:,}",
        f"{stored:,} v1 readings of {fleet:,} devices ({HOURS} hourly readings each, {NBIOT_SHARE:.0%} NB-IoT),"
        f" filled with COPY in {filled:.0f} s; PostgreSQL {version}",
        f"`migrate` (008, partitions, orphan check, move in batches of {batch:,} rows, drops): {seconds:.1f} s,"
        f" {stored / seconds:,.0f} readings/s",
        f"**{seconds / stored * 1e6:.0f} s per million readings** ({seconds / stored * 1e6 / 60:.1f} min)",
        f"WAL written by the move: {wal_bytes / stored:,.0f} B per reading ({wal_bytes / 2**30:.2f} GiB in all)",
        f"on disk: raw_messages {raw_bytes / stored:,.0f} B per reading before, readings"
        f" {readings_bytes / stored:,.0f} B after; database {database_before / 2**20:,.0f} MiB before,"
        f" {database_after / 2**20:,.0f} MiB after",
    ]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="1000000:10000,1000000:1000",
                        help="comma-separated readings:batch pairs, one database each")
    args = parser.parse_args()
    lines = [line for run in args.runs.split(",")
             for line in asyncio.run(main(*(int(n) for n in run.split(":"))))]
    publish("v1-to-v2-move", "Time of the v1 -> v2 data move", lines, (
        "Embedded PostgreSQL with production's postgresql.conf (fsync, full_page_writes, synchronous_commit"
        " on); the move runs alone (downtime). Shared 2-vCPU box: other work ran on it at the same time, so"
        f" the time is an upper bound of what the machine can do (1-minute load average {os.getloadavg()[0]:.1f}"
        " at the end).\n"
    ).strip())
