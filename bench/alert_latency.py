"""Alert latency: from the datagram that crosses a device's daily limit to the alert's event on NATS.

    python -m bench.alert_latency [--devices 200] [--rate 100]

Starts the local stack, registers `--devices` NB-IoT devices with a daily limit, sends each one reading
that crosses it (at `--rate` readings/s), and times, per device, the sending of that datagram against
(a) the alert row's `opened_at` (committed with the reading, in the processor's transaction) and
(b) the `alerts.threshold` event received on NATS. Prints the figures and writes
bench/results/<date>-<host>-alert-latency.md.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import statistics
import tempfile
import time
from pathlib import Path

import asyncpg
import nats
import orjson
from nats.aio.msg import Msg

from bench.measurement import publish
from pulsestack import keys
from pulsestack.bus.topology import REGISTRY_BUCKET
from pulsestack.registry import devices as registry
from pulsestack.wire import nbiot
from pulsestack_cli.local import LocalStack

BASE = 356_938_990_000_000


def quantiles(values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    return f"p50 {statistics.median(ordered) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, max {ordered[-1] * 1000:.0f} ms"


async def main(devices: int, rate: float) -> list[str]:
    stack = LocalStack(Path(tempfile.mkdtemp(prefix="pulsestack-alert-latency-")))
    try:
        stack.start_servers()
        await stack.prepare()
        ids = [str(BASE + i) for i in range(devices)]
        conn = await asyncpg.connect(stack.database_url)
        nc = await nats.connect(stack.nats_url)
        await registry.add_bulk(conn, await nc.jetstream().key_value(REGISTRY_BUCKET), "nbiot", ids)
        await conn.execute("UPDATE devices SET settings = '{\"daily_limit\": 10}' WHERE device_id = ANY($1)", ids)
        await asyncio.to_thread(stack.configure_services)
        await asyncio.to_thread(stack.start_services)
        events: dict[str, float] = {}

        async def on_event(msg: Msg) -> None:
            body = orjson.loads(msg.data)
            if body["event"] == "opened":
                events.setdefault(body["device"], time.time())

        await nc.subscribe("alerts.threshold", cb=on_event)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sent: dict[str, float] = {}
        started = time.time()
        end = int(started) - 3600
        end -= end % 900
        for i, device in enumerate(ids):
            key = keys.derive(stack.master_key, "nbiot", device)
            frame = nbiot.encode(key, device=int(device), seq=1, period_end=end, bucket_seconds=900,
                                 counts=[3, 3, 3, 3], index=12, battery_mv=3600)
            sent[device] = time.time()
            sock.sendto(frame, ("127.0.0.1", stack.udp_port))
            await asyncio.sleep(max(0.0, started + (i + 1) / rate - time.time()))
        deadline = time.time() + 60
        while len(events) < devices and time.time() < deadline:
            await asyncio.sleep(0.2)
        rows = await conn.fetch(
            "SELECT device_id, opened_at FROM alerts WHERE kind = 'threshold' AND device_id = ANY($1)", ids
        )
        await nc.close()
        await conn.close()
    finally:
        stack.stop()
        shutil.rmtree(stack.workdir, ignore_errors=True)
    committed = [r["opened_at"].timestamp() - sent[r["device_id"]] for r in rows]
    published = [events[d] - sent[d] for d in events]
    return [
        f"{devices} devices, one limit-crossing reading each at {rate:g} readings/s",
        f"alerts opened {len(rows)} / {devices}; events received on NATS {len(published)} / {devices}",
        f"datagram sent -> alert row opened (opened_at, in the reading's transaction): {quantiles(committed)}",
        f"datagram sent -> alerts.threshold event received: {quantiles(published)}",
    ]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--rate", type=float, default=100.0)
    args = parser.parse_args()
    lines = asyncio.run(main(args.devices, args.rate))
    publish("alert-latency", "Alert latency", lines, (
        "\nThe local stack (single-node profile: NATS fsync before every PubAck, PostgreSQL synchronous commit)"
        " on this 2-core machine, shared with other work: indicative figures.\n"
    ).strip())
