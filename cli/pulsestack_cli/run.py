"""`pulsestack run local`: the whole stack and a simulated fleet on this machine, with a live summary.
`pulsestack run all`: the ingesters and the processor in one process (configured from the environment, as containers).
`pulsestack simulate`: a fleet against ingesters running elsewhere."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg
import uvloop

from ingest_http.routes import TTS
from pulsestack.keys import load_master_key
from pulsestack.logs import configure, get_logger
from pulsestack.services import LOCAL
from pulsestack_cli.local import LocalStack
from pulsestack_cli.summary import Figures, Summary
from simulator.resume import resume_fleet
from simulator.run import Simulation, SimulationConfig


def main(args: argparse.Namespace) -> int:
    if args.mode == "all":
        return _run_all()
    return _run_local(args)


def _run_local(args: argparse.Namespace) -> int:
    workdir = args.workdir.resolve()
    if args.fresh:
        wipe(workdir)
    stack = LocalStack(workdir)
    print(f"starting the local stack in {stack.workdir} ...", flush=True)
    try:
        stack.start_servers()
        uvloop.run(stack.prepare())
        uvloop.run(stack.provision(args.devices, args.nbiot_share, lorawan_share=args.lorawan_share))
        retired = uvloop.run(stack.retire_others(args.devices, args.nbiot_share, args.lorawan_share))
        stack.configure_services(udp_port=args.udp_port, http_port=args.http_port, api_port=args.api_port)
        stack.start_services()
        stack.write_env()
        print(f"NATS {stack.nats_url}  PostgreSQL {stack.database_url}")
        print(f"read API http://127.0.0.1:{stack.api_port} (token: first line of {stack.api_tokens_file}); "
              f"the pulsestack CLI finds this stack by {stack.env_file} (`pulsestack env` prints it)")
        http = f"http://127.0.0.1:{stack.http_port}"
        print(f"NB-IoT udp://127.0.0.1:{stack.udp_port}  Sigfox {http}/v1/sigfox  "
              f"LoRaWAN {http}/v1/lorawan/chirpstack, {http}/v1/lorawan/tts")
        print(f"metrics: {', '.join(stack.metrics_urls().values())}   logs: {stack.workdir / 'logs'}")
        if retired:
            print(f"disabled {retired} simulated devices of an earlier, larger run (their data stays; a run with "
                  "more devices enables them again)")
        print(f"fleet of {args.devices} devices at {args.rate:g} readings/s; Ctrl-C stops everything", flush=True)
        return uvloop.run(_drive(stack, args))
    finally:
        stack.env_file.unlink(missing_ok=True)
        stack.stop()
        print("stopped", flush=True)


# What `pulsestack run local` keeps in its workdir: --fresh removes these and nothing else.
WORKDIR_ENTRIES = {"secrets", "nats", "postgres", "logs", "env"}


def wipe(workdir: Path) -> None:
    """Removes an earlier local stack's data, secrets and logs; refuses a folder holding anything else."""
    if not workdir.exists():
        return
    others = sorted(p.name for p in workdir.iterdir() if p.name not in WORKDIR_ENTRIES)
    if others:
        raise SystemExit(f"pulsestack: {workdir} holds more than a local stack ({', '.join(others)}): not wiping it")
    shutil.rmtree(workdir)
    print(f"removed the earlier local stack in {workdir}", flush=True)


async def _settle(stack: LocalStack, until: asyncio.Event | None = None) -> None:
    """Waits until the stages have processed what the bus holds (or `until` is set)."""
    said = 0.0
    while (left := await stack.backlog()) and not (until and until.is_set()) and not stack.exited():
        if time.monotonic() - said > 5:
            print(f"the stages are processing what is left on the bus (backlog {left:,}) ...", flush=True)
            said = time.monotonic()
        await asyncio.sleep(0.5)


async def _drive(stack: LocalStack, args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    simulation = Simulation(SimulationConfig(
        devices=args.devices, nbiot_share=args.nbiot_share, lorawan_share=args.lorawan_share, rate=args.rate,
        duration=args.duration, udp_target=("127.0.0.1", stack.udp_port),
        http_url=f"http://127.0.0.1:{stack.http_port}/v1/sigfox",
        lorawan_url=f"http://127.0.0.1:{stack.http_port}/v1/lorawan", sigfox_token=stack.sigfox_token,
        lorawan_token=stack.route_token(TTS.realm), master_key=stack.master_key,
    ))
    # Readings an earlier run left on the bus reach device_state first, so each device resumes after them.
    await _settle(stack, until=stop)
    if stop.is_set():
        return 0
    conn = await asyncpg.connect(stack.database_url)
    try:
        resumed = await resume_fleet(conn, simulation.meters)
    finally:
        await conn.close()
    if resumed:
        print(f"{resumed} of {len(simulation.meters)} devices continue after their last stored reading "
              "(`make run FRESH=1` starts clean)", flush=True)
    summary = Summary(stack.metrics_urls())
    fleet = asyncio.create_task(simulation.run(stop, settle_timeout=10))
    with _live_view() as show:
        while not fleet.done():
            show(summary.take(simulation.caught_up))
            await asyncio.wait({fleet}, timeout=2.0)
            if stack.exited():
                stop.set()  # a fleet sending into a broken stack only piles up what it cannot store
        report = fleet.result()
        try:
            async with asyncio.timeout(30):
                await _settle(stack)
        except TimeoutError:
            print(f"backlog {await stack.backlog():,} still on the bus: the next run processes it first")
        show(summary.take(simulation.caught_up))
    for line in report.lines():
        print(line)
    if exited := stack.exited():
        for name, code in exited.items():
            print(f"pulsestack: {name} exited with code {code} during the run: see "
                  f"{stack.services[name].log_path}", flush=True)
        return 1
    return 0


@contextmanager
def _live_view() -> Iterator[Callable[[Figures], None]]:
    """In a terminal, one table updated in place; otherwise (tests, logs) a plain line per look."""
    if not sys.stdout.isatty():
        yield lambda figures: print(figures.line(), flush=True)
        return
    from rich.live import Live

    with Live(auto_refresh=False) as live:
        yield lambda figures: live.update(figures.view(), refresh=True)


# What `run all` hosts, and what it leaves to separate processes: said at its start, so nobody takes it for
# the whole stack.
IN_ALL = tuple(s.name for s in LOCAL if s.in_all)
NOT_IN_ALL = tuple(s.name for s in LOCAL if not s.in_all)


def _run_all() -> int:
    """The services the catalogue marks `in_all` (the ingesters and the processor) in one process: plain async
    functions sharing one stop event."""
    from ingest_http.app import serve as serve_http
    from ingest_http.config import HttpIngestConfig
    from ingest_udp.app import serve as serve_udp
    from ingest_udp.config import UdpIngestConfig
    from processors.app import serve as serve_processor
    from processors.config import ProcessorConfig
    from pulsestack.service import stop_on_signals

    configs = (UdpIngestConfig.from_env(), HttpIngestConfig.from_env())
    # One process, one port per service's ops endpoints: the processor reads PULSESTACK_OPS_PORT too, so with
    # PULSESTACK_OPS_PORT=P it takes P + 1.
    processor = ProcessorConfig.from_env()
    if processor.ops_port == configs[0].ops_port:
        processor = dataclasses.replace(processor, ops_port=processor.ops_port + 1)
    configure("all", configs[0].common.log_level)
    get_logger("pulsestack.all").info(
        "one process hosts the ingesters and the processor", hosted=list(IN_ALL), not_hosted=list(NOT_IN_ALL),
        why="silent-meter sweeps, the alert outbox, webhooks and the read API run as their own services")

    async def everything() -> None:
        stop = stop_on_signals()
        await asyncio.gather(
            serve_udp(configs[0], stop), serve_http(configs[1], stop),
            serve_processor(processor, stop),
        )

    uvloop.run(everything())
    return 0


async def simulate(args: argparse.Namespace) -> int:
    configure("simulator", "warning")
    host, port = args.udp.rsplit(":", 1)
    simulation = Simulation(SimulationConfig(
        devices=args.devices, nbiot_share=args.nbiot_share, lorawan_share=args.lorawan_share, rate=args.rate,
        duration=args.duration, udp_target=(host, int(port)), http_url=args.http, lorawan_url=args.lorawan,
        sigfox_token=args.sigfox_token_file.read_text().split()[0],
        lorawan_token=args.lorawan_token_file.read_text().split()[0] if args.lorawan_token_file else "",
        master_key=load_master_key(),
    ))
    started = time.monotonic()
    report = await simulation.run()
    for line in report.lines():
        print(line)
    print(f"done in {time.monotonic() - started:.1f} s", file=sys.stderr)
    return 0
