"""WAL per reading when meters report hourly: the production regime the soak cannot reach.

    python -m bench.hourly_wal [--meters 10000] [--history 250] [--hours 2] [--batch 200]

A checkpoint every 15 minutes and meters that report once an hour: each meter's reading lands in a different
checkpoint cycle from its previous one, so every page it touches that no other reading of the cycle touched
costs a full-page image. The soak's 100,000 meters report every 26 s, so there ~35 readings share each
page's image; reaching the hourly regime at the soak's rate would take 14 M meters. This measures it at any
scale instead, since what decides it is how many readings one page takes per cycle, not the fleet's size:
`--meters` NB-IoT meters with `--history` hourly readings each already stored (so that, as after months in
production, an index ordered by device gives each meter leaf pages of its own), then `--hours` hours in which
each meter stores one reading, a quarter of the fleet per 15-minute cycle with a CHECKPOINT between cycles,
through the raw stage's own write (`store_readings`, `--batch` readings a transaction).

Starts its own embedded PostgreSQL with production's postgresql.conf; WAL from pg_current_wal_lsn() per cycle,
split by the relation it changed with pg_walinspect (records, bytes, records carrying a full-page image). Writes
bench/results/<date>-<host>-hourly-wal.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import random
import shutil
import statistics
import tempfile
from pathlib import Path

import asyncpg

from bench.measurement import publish
from pulsestack.registry.devices import store_bulk
from pulsestack.store.migrate import migrate
from pulsestack.store.readings import store_readings
from pulsestack.wire.reading import Reading
from pulsestack_cli.localstack import Postgres
from simulator.fleet import simulated_id

# A month of its own, whole, for history and measured hours alike: one partition, as in production.
START = int(dt.datetime(2026, 1, 1, tzinfo=dt.UTC).timestamp())
CYCLES_PER_HOUR = 4  # checkpoint_timeout = 15min

# The history as the raw stage would have stored it, written by the server: one row per meter and hour.
_HISTORY = """
INSERT INTO readings (device, bucket_seconds, device_time, seq, meter_index, received_at, counts, payload)
SELECT d.id, 900, to_timestamp($1::bigint + h * 3600), h, 1000 + 80 * h, to_timestamp($1::bigint + h * 3600 + 7),
       ARRAY[20, 20, 20, 20], sha256(int4send(d.id) || int4send(h)) || substr(sha256(int4send(h)), 1, 11)
FROM devices d CROSS JOIN generate_series(0, $2::int - 1) AS h
ORDER BY h, d.id
"""

# What the cycle's WAL was, by the relation it changed (a table or index named without its partition suffix).
_KINDS = """
SELECT coalesce(regexp_replace(c.relname, '_y[0-9]{4}m[0-9]{2}', ''), w.resource_manager) AS kind,
       count(*) AS records, sum(w.record_length)::bigint AS bytes, count(*) FILTER (WHERE w.fpi_length > 0) AS images
FROM pg_get_wal_records_info($1::text::pg_lsn, pg_current_wal_lsn()) w
LEFT JOIN pg_class c ON c.relfilenode = (regexp_match(w.block_ref, 'rel \\d+/\\d+/(\\d+)'))[1]::oid
GROUP BY 1
"""


def reading(meter: int, hour: int) -> Reading:
    period_end = START + hour * 3600
    return Reading(protocol="nbiot", device=simulated_id("nbiot", meter), seq=hour, device_time=period_end,
                   period_end=period_end, bucket_seconds=900, counts=[20, 20, 20, 20], index=1000 + 80 * hour,
                   battery_mv=3600, flags=0, received_at=period_end + 7.0, trace_id="0" * 16,
                   payload=os.urandom(43))


async def measure(meters: int, history: int, hours: int, batch: int) -> list[str]:
    workdir = Path(tempfile.mkdtemp(prefix="pulsestack-hourly-wal-"))
    pg = Postgres(workdir / "pg")
    pg.start()
    try:
        conn = await asyncpg.connect(pg.url())
        await migrate(conn)
        await conn.execute("SELECT pulsestack_ensure_partition('readings', 'device_time', $1)",
                           dt.datetime.fromtimestamp(START, dt.UTC).date())
        await store_bulk(conn, "nbiot", [simulated_id("nbiot", i) for i in range(meters)])
        # The last history hour goes through the store, so each meter has its state and day as in production.
        await conn.execute(_HISTORY, START, history - 1)
        for first in range(0, meters, batch):
            async with conn.transaction():
                await store_readings(conn, [reading(m, history - 1) for m in range(first, min(first + batch, meters))])
        await conn.execute("VACUUM ANALYZE")
        version = await conn.fetchval("SHOW server_version")
        keys = await conn.fetchval("SELECT pg_get_indexdef(indexrelid) FROM pg_index"
                                   " WHERE indrelid = 'readings'::regclass AND indisprimary")
        arrival = random.Random(1)
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
        cycles: list[tuple[int, int]] = []  # readings, WAL bytes
        kinds: dict[str, list[int]] = {}  # readings, WAL bytes, full-page images
        for hour in range(history, history + hours):
            for cycle in range(CYCLES_PER_HOUR):
                await conn.execute("CHECKPOINT")
                lsn = await conn.fetchval("SELECT pg_current_wal_lsn()::text")
                due = [m for m in range(meters) if m % CYCLES_PER_HOUR == cycle]
                arrival.shuffle(due)  # meters report in no order of their ids
                for first in range(0, len(due), batch):
                    async with conn.transaction():
                        await store_readings(conn, [reading(m, hour) for m in due[first:first + batch]])
                wal = await conn.fetchval("SELECT pg_current_wal_lsn() - $1::text::pg_lsn", lsn)
                for row in await conn.fetch(_KINDS, lsn):
                    seen = kinds.setdefault(row["kind"], [0, 0, 0])
                    for i, column in enumerate(("records", "bytes", "images")):
                        seen[i] += row[column]
                cycles.append((len(due), int(wal)))
        stored = await conn.fetchval("SELECT count(*) FROM readings")
        await conn.close()
    finally:
        pg.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    assert stored == meters * (history + hours), stored
    per_cycle = [wal / n for n, wal in cycles]
    total = sum(n for n, _ in cycles)
    return [
        f"PostgreSQL {version}; readings' primary key: `{keys}`",
        f"{meters:,} NB-IoT meters, {history} hourly readings each stored before; then {hours} h, one reading a meter"
        f" an hour, a quarter of the meters per cycle, CHECKPOINT between cycles; {batch} readings a transaction",
        f"**WAL per reading: {sum(w for _, w in cycles) / total:,.0f} B** over {len(cycles)} cycles"
        f" (median cycle {statistics.median(per_cycle):,.0f} B, from {min(per_cycle):,.0f} to {max(per_cycle):,.0f})",
        f"full-page images per reading: {sum(images for _, _, images in kinds.values()) / total:.2f}",
        "by relation changed, per reading: " + ", ".join(
            f"{kind} {nbytes / total:,.0f} B ({records / total:.2f} records, {images / total:.2f} page images)"
            for kind, (records, nbytes, images) in sorted(kinds.items(), key=lambda kv: -kv[1][1])),
    ]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meters", type=int, default=10_000)
    # 250: the hours measured are mid-day, as 23 of a day's 24 are (the first reading of a day inserts its row).
    parser.add_argument("--history", type=int, default=250, help="hourly readings stored per meter before")
    parser.add_argument("--hours", type=int, default=2, help="hours measured, four checkpoint cycles each")
    parser.add_argument("--batch", type=int, default=200, help="readings per transaction")
    args = parser.parse_args()
    lines = asyncio.run(measure(args.meters, args.history, args.hours, args.batch))
    publish("hourly-wal", "WAL per reading of meters reporting hourly", lines, (
        "Embedded PostgreSQL with production's postgresql.conf (fsync, full_page_writes, synchronous_commit on,"
        " wal_compression pglz); the 15-minute checkpoint cycles are forced with CHECKPOINT, so the figure does"
        " not depend on the machine's speed."
    ))
