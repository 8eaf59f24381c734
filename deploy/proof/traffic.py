"""A proof's traffic: fleets registered for each window, driven through the stack while a fault happens,
and every reading acknowledged to a device checked to be stored exactly once.

Environment: PULSESTACK_PROOF_RATE, _DEVICES (per window), _FIGURES (where each window's figures are kept),
_RUN_BASE (first device number of the run).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from deploy.proof.harness import (
    DOMAIN,
    HTTP_PORT,
    SECRETS,
    UDP_PORT,
    WORK,
    address_of,
    admin_nats,
    db,
    eventually,
    in_task,
    metric_value,
    running,
    say,
    secret,
    service_log_tail,
)
from pulsestack.bus import quarantine
from pulsestack.bus.topology import REGISTRY_BUCKET, drained
from pulsestack.registry import devices as registry
from pulsestack.services import INGEST_HTTP, INGEST_UDP
from pulsestack.wire import lorawan, nbiot, sigfox
from simulator.fleet import fleet_ids
from simulator.run import Simulation, SimulationConfig, SimulationReport
from simulator.verify import verify

RATE = float(os.environ.get("PULSESTACK_PROOF_RATE", "150"))  # readings/s, both protocols
DEVICES = int(os.environ.get("PULSESTACK_PROOF_DEVICES", "400"))  # per traffic window
NBIOT_SHARE, LORAWAN_SHARE = 0.5, 0.2  # of each window's fleet; Sigfox the rest
FIGURES = Path(os.environ.get("PULSESTACK_PROOF_FIGURES", str(WORK / "figures.json")))
# Fleets of different runs and windows never share a device (a failed run may leave data behind).
# deploy/swarm-proof.sh sets it once for all the steps of a run.
RUN_BASE = int(os.environ.get("PULSESTACK_PROOF_RUN_BASE", str((int(time.time()) % 997) * 20_000)))


@dataclass(frozen=True)
class Windows:
    """A proof's traffic windows, in order: each drives a fleet of its own, and every fleet is registered
    before the first window (a failed run's data never meets the next run's: RUN_BASE)."""

    names: tuple[str, ...]

    def first_id(self, window: int) -> int:
        return RUN_BASE + window * 2_000

    def fleet(self, window: int) -> dict[str, list[str]]:
        """Device ids per protocol of a window's fleet."""
        return fleet_ids(DEVICES, NBIOT_SHARE, self.first_id(window), LORAWAN_SHARE)

    def registered(self) -> Counter[str]:
        """Devices per protocol of every window's fleet."""
        counts: Counter[str] = Counter()
        for window in range(len(self.names)):
            counts.update({protocol: len(ids) for protocol, ids in self.fleet(window).items()})
        return counts


async def provision_all(windows: Windows) -> None:
    """Registers the fleets of every window at once (as the operator's registry role)."""
    conn = await db("pulsestack_registry", "postgres_registry_password")
    nc = await admin_nats()
    try:
        kv = await nc.jetstream().key_value(REGISTRY_BUCKET)
        for window in range(len(windows.names)):
            for protocol, ids in windows.fleet(window).items():
                await registry.add_bulk(conn, kv, protocol, ids)
    finally:
        await nc.close()
        await conn.close()


# Which ingester serves which protocols' devices: UDP takes NB-IoT, HTTP the network servers' callbacks.
INGESTED_BY = ((INGEST_UDP, (nbiot.PROTOCOL,)), (INGEST_HTTP, (sigfox.PROTOCOL, lorawan.PROTOCOL)))


def ingester_devices() -> dict[str, list[float]]:
    """Devices of each protocol each of its ingester's tasks knows (pulsestack_registry_devices), read inside
    the tasks; keyed `service/protocol`, a task whose metrics could not be read counting 0."""
    out = {}
    for service, protocols in INGESTED_BY:
        port = service.ops.default
        texts = [in_task(task, "python", "-c",
                         f"import urllib.request as u; print(u.urlopen('http://127.0.0.1:{port}/metrics').read()"
                         ".decode())", check=False) for task in running(service.name)]
        for protocol in protocols:
            out[f"{service.name}/{protocol}"] = [metric_value(text, "pulsestack_registry_devices", protocol=protocol)
                                                 for text in texts]
    return out


# ------------------------------------------------------------------------------------------ traffic


@dataclass
class Figures:
    window: str
    seconds: float
    sent: int
    acked: int
    gave_up: int
    retransmitted: int
    http_statuses: dict[str, int]
    expected: int
    delivered: int
    lost: int
    duplicated: int
    bucket_mismatches: int
    total_mismatches: int
    sent_by_protocol: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        by_protocol = ", ".join(f"{p} {n:,}" for p, n in sorted(self.sent_by_protocol.items()))
        return (f"{self.window}: sent {self.sent:,} ({by_protocol}), acked {self.acked:,}, delivered "
                f"{self.delivered:,} / {self.expected:,}, lost {self.lost}, duplicated {self.duplicated}, bucket"
                f" mismatches {self.bucket_mismatches}, total mismatches {self.total_mismatches} "
                f"(gave up {self.gave_up}, retransmitted {self.retransmitted}, HTTP {self.http_statuses})")


def save(figures: Figures) -> None:
    known = json.loads(FIGURES.read_text()) if FIGURES.exists() else []
    known = [f for f in known if f["window"] != figures.window] + [asdict(figures)]
    FIGURES.write_text(json.dumps(known, indent=1))


async def under_traffic(windows: Windows, window: int, fault: Callable[[], Awaitable[None]] | None = None,
                        seconds: float = 25.0, udp_host: str | None = None,
                        follow: Callable[[Simulation], Coroutine[Any, Any, None]] | None = None,
                        through_traefik: bool = False) -> Figures:
    """Drives the fleet of `windows`' window number `window` for `seconds` (or, with a fault, until 4 s after
    the fault is over), then checks that every reading acknowledged to a device is stored exactly once.
    Devices send to `udp_host` (default: the node of the first ingest-udp task) and to the node running
    ingest-http, or with `through_traefik` as the Sigfox backend does in production: HTTPS to Traefik, routed
    by its swarm provider; `follow`, running beside the traffic, may move them as DNS and a load balancer
    would when the ingesters move."""
    name = windows.names[window]
    udp_host = udp_host or address_of("ingest-udp")
    base, sigfox_host, ca_file = f"http://{address_of('ingest-http')}:{HTTP_PORT}", None, None
    if through_traefik:
        base, sigfox_host = f"https://{address_of('traefik')}", DOMAIN
        ca_file = str(SECRETS / "ca_cert")
    simulation = Simulation(SimulationConfig(
        devices=DEVICES, nbiot_share=NBIOT_SHARE, lorawan_share=LORAWAN_SHARE, rate=RATE,
        udp_target=(udp_host, UDP_PORT), http_url=base + sigfox.CALLBACK_PATH,
        lorawan_url=base + lorawan.CALLBACK_BASE,
        http_host=sigfox_host, http_ca_file=ca_file,
        sigfox_token=secret("sigfox_tokens").split()[0], lorawan_token=secret("lorawan_tokens").split()[0],
        master_key=bytes.fromhex(secret("device_master_key")), first_id=windows.first_id(window), seed=window + 1,
        ack_timeout=1.0, retransmissions=8, sigfox_retry_delays=(1, 2, 4, 8, 16),
    ))
    stop = asyncio.Event()
    started = time.monotonic()
    traffic = asyncio.create_task(simulation.run(stop, settle_timeout=120))
    following = asyncio.create_task(follow(simulation)) if follow else None
    await asyncio.sleep(3.0)
    if fault is not None:
        await fault()
        await asyncio.sleep(4.0)
    else:
        await asyncio.sleep(max(0.0, seconds - 3.0))
    stop.set()
    report: SimulationReport = await traffic
    if following:
        if following.done():
            following.result()  # it stopped following: its error, not a delivery failure it would cause
        following.cancel()
    elapsed = time.monotonic() - started
    nc = await admin_nats()
    try:
        await eventually(lambda: drained(nc.jetstream()), 180, f"{name}: backlog drained")
    finally:
        await nc.close()
    conn = await db("pulsestack_reader", "postgres_reader_password")
    try:
        delivery = await verify(conn, report.acked_readings)
    finally:
        await conn.close()
    figures = Figures(
        window=name, seconds=round(elapsed, 1), sent=sum(report.sent.values()), sent_by_protocol=dict(report.sent),
        acked=sum(report.acked.values()),
        gave_up=sum(report.gave_up.values()), retransmitted=report.retransmitted,
        http_statuses={str(k): v for k, v in sorted(report.http_statuses.items())},
        expected=delivery.expected, delivered=delivery.delivered, lost=delivery.lost,
        duplicated=delivery.duplicated, bucket_mismatches=delivery.bucket_mismatches,
        total_mismatches=len(delivery.total_mismatches),
    )
    save(figures)
    say(figures.line())
    if not delivery.exact:
        raise SystemExit(f"{name}: delivery not exact: {delivery.line()} {delivery.total_mismatches[:5]}"
                         f" lost: {delivery.lost_readings}; {await quarantined_lately()}")
    if figures.acked < RATE * min(elapsed, 20) * 0.5:
        raise SystemExit(f"{name}: too few readings acknowledged: {report.lines()}")
    return figures


async def quarantined_lately(newest: int = 20) -> str:
    """The newest quarantined records, oldest first: an acknowledged reading the pipeline set aside is
    counted lost, and this says which stage set it aside and why."""
    nc = await admin_nats()
    try:
        found, held = await quarantine.records(nc.jetstream(), newest)
    finally:
        await nc.close()
    shown = [f"{r.stage}/{r.reason} {r.source} seq {r.reading.seq if r.reading else '-'}: {r.detail}"
             for _, r in found]
    return f"QUARANTINE holds {held}: {shown}"


async def wait_ingesters_know(windows: Windows, within: float) -> None:
    """Until every ingester knows every registered device of its protocols from the registry."""
    registered = windows.registered()
    deadline = time.monotonic() + within
    while True:
        known = ingester_devices()
        lagging = {key for key, values in known.items() if not values or min(values) < registered[key.split("/")[1]]}
        if not lagging:
            break
        if time.monotonic() > deadline:
            logs = "\n".join(service_log_tail(service) for service in sorted({key.split("/")[0] for key in lagging}))
            raise SystemExit(f"ingesters did not learn the registered devices {dict(registered)}: each task knows"
                             f" {known}\n{logs}")
        await asyncio.sleep(1)
    say(f"ingesters know the devices: {known}")
