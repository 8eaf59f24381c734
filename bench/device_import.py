"""Bulk provisioning: `pulsestack devices import` of a million devices, its time and peak memory.

    python -m bench.device_import [--devices 1000000] [--batch 10000]

Starts an embedded nats-server and PostgreSQL (migrations, streams, registry bucket), writes a CSV of
`--devices` devices (half NB-IoT, half Sigfox, every column filled), then runs `python -m pulsestack_cli
devices import FILE --keys KEYS` as an operator would: wall time and the importing process's peak RSS (its
own rusage). Then the same file again (every line unchanged) and `devices export`, measured the same way,
and what an ingester loads from the registry bucket against the table. Prints the figures and writes
bench/results/<date>-<host>-device-import.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import nats

from bench.measurement import publish
from pulsestack.bus.topology import REGISTRY_BUCKET
from pulsestack.registry.membership import Membership
from pulsestack_cli.local import LocalStack

NBIOT_BASE, SIGFOX_BASE = 358_000_000_000_000, 0x70000000


def write_fleet(path: Path, devices: int) -> None:
    with path.open("w") as out:
        out.write("protocol,device_id,label,timezone,pulse_weight,daily_limit\n")
        for i in range(devices):
            # In the order export writes them: NB-IoT first; ids of one length sort as text as they do as numbers.
            device = f"nbiot,{NBIOT_BASE + i}" if i < devices // 2 else f"sigfox,{SIGFOX_BASE + i:X}"
            out.write(f"{device},\"Rue Haute {i}, Bruxelles\",Europe/Brussels,{(1, 0.5, 10)[i % 3]},{400 + i % 100}\n")


def cli(env: dict[str, str], log: Path, *args: str) -> tuple[float, float, str]:
    """Runs `pulsestack ARGS`; returns its wall time in s, its peak RSS in MiB and its last line of output."""
    with log.open("w") as out:
        started = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "pulsestack_cli", *args], env=env, stdout=out,
                                stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)  # reaped here, with its own rusage
        elapsed = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    text = log.read_text().strip()
    if proc.returncode:
        raise RuntimeError(f"pulsestack {' '.join(args)} failed ({proc.returncode}): {text[-2000:]}")
    return elapsed, usage.ru_maxrss / 1024, text.splitlines()[-1].split(": ", 1)[-1]  # without the file's path


async def loaded(stack: LocalStack) -> list[str]:
    """What an ingester's registry reader loads from the bucket, against the table's enabled devices."""
    membership = Membership(["nbiot", "sigfox"])
    nc = await nats.connect(stack.nats_url)
    conn = await asyncpg.connect(stack.database_url)
    try:
        follower = asyncio.create_task(membership.follow(await nc.jetstream().key_value(REGISTRY_BUCKET)))
        await asyncio.wait_for(membership.ready.wait(), 120)
        follower.cancel()
        counts = dict(await conn.fetch(
            "SELECT protocol, count(*) FROM devices WHERE NOT disabled GROUP BY protocol"))
    finally:
        await conn.close()
        await nc.close()
    return [f"{p}: bucket {membership.count(p):,}, table {counts.get(p, 0):,}" for p in ("nbiot", "sigfox")]


def main(devices: int, batch: int) -> list[str]:
    workdir = Path(tempfile.mkdtemp(prefix="pulsestack-device-import-"))
    stack = LocalStack(workdir)
    try:
        stack.start_servers()
        asyncio.run(stack.prepare())
        fleet, keys = workdir / "fleet.csv", workdir / "keys.csv"
        write_fleet(fleet, devices)
        env = {**os.environ, "NATS_URL": stack.nats_url, "DATABASE_URL": stack.database_url,
               "PULSESTACK_DEVICE_MASTER_KEY_FILE": str(stack.master_key_file)}
        log = workdir / "cli.log"
        first = cli(env, log, "devices", "import", str(fleet), "--keys", str(keys), "--batch", str(batch))
        again = cli(env, log, "devices", "import", str(fleet), "--batch", str(batch))
        export = cli(env, log, "devices", "export", str(workdir / "export.csv"))
        registry = asyncio.run(loaded(stack))
        same = (workdir / "export.csv").read_bytes() == fleet.read_bytes()
        size = fleet.stat().st_size
    finally:
        stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return [
        f"file: {devices:,} devices (half NB-IoT, half Sigfox, label and 3 settings each), {size / 2**20:.0f} MiB;"
        f" batches of {batch:,} lines",
        f"import into an empty registry: {first[0]:.1f} s ({devices / first[0]:,.0f} devices/s), peak RSS"
        f" {first[1]:.0f} MiB — {first[2]}",
        f"the same file again: {again[0]:.1f} s, peak RSS {again[1]:.0f} MiB — {again[2]}",
        f"export: {export[0]:.1f} s, peak RSS {export[1]:.0f} MiB; byte-identical to the imported file: {same}",
        f"registry bucket as an ingester loads it, after the import: {'; '.join(registry)}",
    ]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=10_000, help="lines per transaction (the CLI's default)")
    args = parser.parse_args()
    lines = main(args.devices, args.batch)
    publish("device-import", "Bulk provisioning: devices import", lines, (
        f"\nThrough the real CLI path (`python -m pulsestack_cli devices import`, one process), against an "
        f"embedded nats-server (fsync before every acknowledgement) and PostgreSQL on the same machine; "
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs shared with other work (load average "
        f"{os.getloadavg()[1]:.1f} over the last 5 minutes of the run). Peak RSS: the importing process's "
        f"ru_maxrss.\n").strip())
