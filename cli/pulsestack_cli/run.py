"""`pulsestack run local`: the whole stack and a simulated fleet on this machine, with a live summary.
`pulsestack run all`: every stage in one process (from the environment, as the containers are configured).
`pulsestack simulate`: a fleet against ingesters running elsewhere."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time

import uvloop

from pulsestack.keys import load_master_key
from pulsestack.logs import configure
from pulsestack_cli.local import LocalStack
from pulsestack_cli.summary import Summary
from simulator.run import Simulation, SimulationConfig


def main(args: argparse.Namespace) -> int:
    if args.mode == "all":
        return _run_all()
    return _run_local(args)


def _run_local(args: argparse.Namespace) -> int:
    stack = LocalStack(args.workdir.resolve())
    print(f"starting the local stack in {stack.workdir} ...", flush=True)
    try:
        stack.start_servers()
        uvloop.run(stack.prepare())
        uvloop.run(stack.provision(args.devices, args.nbiot_share))
        stack.configure_services(udp_port=2204, http_port=7070, api_port=8080)
        stack.start_services()
        stack.write_env()
        print(f"NATS {stack.nats_url}  PostgreSQL {stack.database_url}")
        print(f"read API http://127.0.0.1:{stack.api_port} (token: first line of {stack.api_tokens_file}); "
              f"the pulsestack CLI finds this stack by {stack.env_file} (`pulsestack env` prints it)")
        print(f"NB-IoT udp://127.0.0.1:{stack.udp_port}  Sigfox http://127.0.0.1:{stack.http_port}/v1/sigfox")
        print(f"metrics: {', '.join(stack.metrics_urls().values())}   logs: {stack.workdir / 'logs'}")
        print(f"fleet of {args.devices} devices at {args.rate:g} readings/s; Ctrl-C stops everything", flush=True)
        return uvloop.run(_drive(stack, args))
    finally:
        stack.env_file.unlink(missing_ok=True)
        stack.stop()
        print("stopped", flush=True)


async def _drive(stack: LocalStack, args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    simulation = Simulation(SimulationConfig(
        devices=args.devices, nbiot_share=args.nbiot_share, rate=args.rate, duration=args.duration,
        udp_target=("127.0.0.1", stack.udp_port), http_url=f"http://127.0.0.1:{stack.http_port}/v1/sigfox",
        sigfox_token=stack.sigfox_token, master_key=stack.master_key,
    ))
    summary = Summary(stack.metrics_urls())
    fleet = asyncio.create_task(simulation.run(stop, settle_timeout=10))
    while not fleet.done():
        print(summary.line(), flush=True)
        await asyncio.wait({fleet}, timeout=2.0)
    report = fleet.result()
    await asyncio.sleep(2)
    print(summary.line())
    for line in report.lines():
        print(line)
    return 0


def _run_all() -> int:
    """Every stage in one process: the services are plain async functions sharing one stop event."""
    from ingest_http.app import serve as serve_http
    from ingest_http.config import HttpIngestConfig
    from ingest_udp.app import serve as serve_udp
    from ingest_udp.config import UdpIngestConfig
    from processors.app import serve as serve_processor
    from processors.config import ProcessorConfig
    from pulsestack.service import stop_on_signals

    configs = (UdpIngestConfig.from_env(), HttpIngestConfig.from_env())
    raw, pulse = ProcessorConfig.from_env("raw"), ProcessorConfig.from_env("pulse")
    # One process, one port per stage's ops endpoints: the pulse stage moves if both default.
    if raw.ops_port == pulse.ops_port:
        pulse = ProcessorConfig(**{**{f: getattr(pulse, f) for f in pulse.__slots__}, "ops_port": raw.ops_port + 1})
    configure("all", configs[0].common.log_level)

    async def everything() -> None:
        stop = stop_on_signals()
        await asyncio.gather(
            serve_udp(configs[0], stop), serve_http(configs[1], stop),
            serve_processor(raw, stop), serve_processor(pulse, stop),
        )

    uvloop.run(everything())
    return 0


async def simulate(args: argparse.Namespace) -> int:
    configure("simulator", "warning")
    host, port = args.udp.rsplit(":", 1)
    simulation = Simulation(SimulationConfig(
        devices=args.devices, nbiot_share=args.nbiot_share, rate=args.rate, duration=args.duration,
        udp_target=(host, int(port)), http_url=args.http,
        sigfox_token=args.sigfox_token_file.read_text().split()[0], master_key=load_master_key(),
    ))
    started = time.monotonic()
    report = await simulation.run()
    for line in report.lines():
        print(line)
    print(f"done in {time.monotonic() - started:.1f} s", file=sys.stderr)
    return 0
