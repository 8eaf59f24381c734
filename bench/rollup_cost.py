"""What the live rollups cost the raw stage: the same batches written with and without them.

    python -m bench.rollup_cost [--devices 2000] [--batches 40] [--batch 500]

Starts its own embedded PostgreSQL, then writes hourly readings (4 quarter-hour buckets each) through
`write_pulses`, the raw stage's derivation code, alternating batch by batch between two fleets of the same size:
one with the rollups kept (as in production), one with the rollup statement left out. Prints the median
transaction time of each and their ratio; writes bench/results/<date>-<host>-rollup-cost.md.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import asyncpg

from bench.measurement import publish
from pulsestack.store import pulses
from pulsestack.store.db import prepare
from pulsestack.store.migrate import migrate
from pulsestack.store.rollups import DayTotal, Deltas
from pulsestack.wire.reading import Reading
from pulsestack_cli.localstack import Postgres


def batches(first: int, devices: int, count: int, size: int, start: int) -> list[list[Reading]]:
    """`count` batches of `size` readings: device after device, each device's readings an hour apart."""
    readings = []
    for n in range(count * size):
        device, hour = n % devices, n // devices
        end = start + (hour + 1) * 3600
        readings.append(Reading(
            "nbiot", str(first + device), hour + 1, end, end, 900, [1, 2, 3, 4], 10 * (hour + 1), 3600, 0,
            time.time(), "t"))
    return [readings[i : i + size] for i in range(0, len(readings), size)]


async def main(devices: int, count: int, size: int) -> list[str]:
    workdir = Path(tempfile.mkdtemp(prefix="pulsestack-rollup-cost-"))
    pg = Postgres(workdir / "pg")
    pg.start()
    try:
        conn = await asyncpg.connect(pg.url())
        await migrate(conn)
        await prepare(conn)
        start = int(time.time()) - 20 * 86_400
        start -= start % 3600
        with_rollups = batches(1_000_000, devices, count, size, start)
        without = batches(2_000_000, devices, count, size, start)
        kept: list[float] = []
        skipped: list[float] = []
        real_apply = Deltas.apply

        async def nothing(self: Deltas, conn: asyncpg.Connection) -> list[DayTotal]:
            return []

        for a, b in zip(with_rollups, without, strict=True):
            for items, timings, rollups in ((a, kept, True), (b, skipped, False)):
                Deltas.apply = real_apply if rollups else nothing  # type: ignore[method-assign]
                t = time.monotonic()
                async with conn.transaction():
                    await pulses.write_pulses(conn, items)
                timings.append(time.monotonic() - t)
        Deltas.apply = real_apply  # type: ignore[method-assign]
        hours = {
            fleet: await conn.fetchval(
                "SELECT count(*) FROM consumption_hourly WHERE device_id LIKE $1", f"{fleet}%"
            ) for fleet in (1, 2)
        }
        await conn.close()
    finally:
        pg.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    on, off = statistics.median(kept), statistics.median(skipped)
    return [
        f"{count} batches of {size} readings (4 buckets each) per variant, {devices} devices per fleet, alternated",
        f"pulse transaction with rollups: median {on * 1000:.1f} ms ({on / size * 1e6:.0f} µs per reading)",
        f"pulse transaction without the rollup statement: median {off * 1000:.1f} ms"
        f" ({off / size * 1e6:.0f} µs per reading)",
        f"rollups cost: {(on / off - 1) * 100:+.0f} % on the pulse transaction (ratio {on / off:.2f})",
        f"hourly rollup rows written: {hours[1]:,} with rollups, {hours[2]:,} without"
        " (the check that they were left out)",
    ]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()
    lines = asyncio.run(main(args.devices, args.batches, args.batch))
    publish("rollup-cost", "Cost of the live rollups in the raw stage", lines, (
        "\nEmbedded PostgreSQL, synchronous commit; the two variants alternate batch by batch in one run, so"
        " machine noise falls on both. Same shared 2-core box as the capacity benchmark.\n"
    ).strip())
