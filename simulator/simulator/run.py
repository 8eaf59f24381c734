"""Driving a fleet at a target rate (compressed time) and reporting what happened."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

from pulsestack.clock import WALL, Clock
from pulsestack.wire import lorawan, nbiot, sigfox
from simulator.callbacks import CallbackClient, lorawan_uplink, sigfox_callback
from simulator.fleet import Meter, SentReading, build_fleet
from simulator.nbiot import NbiotClient
from simulator.profiles import Profiles

DAY = 86_400


@dataclass(frozen=True, slots=True)
class SimulationConfig:
    devices: int = 1000
    nbiot_share: float = 0.5
    lorawan_share: float = 0.0  # Sigfox: the rest
    rate: float = 100.0  # readings per second, all protocols together
    duration: float | None = None  # seconds; None: until `readings` are sent or stopped
    readings: int | None = None
    udp_target: tuple[str, int] = ("127.0.0.1", 2204)
    http_url: str = f"http://127.0.0.1:7070{sigfox.CALLBACK_PATH}"
    # Through a reverse proxy reached by address (the swarm proof's Traefik): the host name its routers
    # match, sent as Host and as the TLS server name, and the CA its certificate chains to.
    http_host: str | None = None
    http_ca_file: str | None = None
    sigfox_token: str = ""
    lorawan_url: str = f"http://127.0.0.1:7070{lorawan.CALLBACK_BASE}"  # + each network server's path
    lorawan_token: str = ""
    master_key: bytes = b""
    # Device clocks start this far back; each reading advances a device by an hour, never past now.
    start_age: float = 20 * DAY
    clock: Clock = WALL  # what "now" is for the devices: the services' PULSESTACK_TEST_CLOCK in a test
    sockets: int = 16
    ack_timeout: float = 2.0
    retransmissions: int = 5
    http_concurrency: int = 64
    sigfox_retry_delays: tuple[float, ...] = (1.0, 2.0, 4.0)
    seed: int = 1
    first_id: int = 0  # fleets with different first ids never share a device
    profiles: Profiles | None = None  # realistic consumption and meter kinds; None: random counts


@dataclass(slots=True)
class SimulationReport:
    elapsed: float = 0.0
    sent: Counter[str] = field(default_factory=Counter)
    acked: Counter[str] = field(default_factory=Counter)
    acked_duplicate: Counter[str] = field(default_factory=Counter)
    gave_up: Counter[str] = field(default_factory=Counter)
    retransmitted: int = 0
    datagrams: int = 0
    http_statuses: Counter[int] = field(default_factory=Counter)
    acked_readings: list[SentReading] = field(default_factory=list)

    def lines(self) -> list[str]:
        rate = sum(self.sent.values()) / self.elapsed if self.elapsed else 0.0
        return [
            f"sent {dict(self.sent)} in {self.elapsed:.1f} s ({rate:.0f} readings/s)",
            f"acked {dict(self.acked)} (as duplicate {dict(self.acked_duplicate)}), gave up {dict(self.gave_up)}",
            f"nbiot datagrams {self.datagrams}, retransmitted {self.retransmitted}",
            f"sigfox and lorawan HTTP statuses {dict(sorted(self.http_statuses.items()))}",
        ]


class Simulation:
    def __init__(self, config: SimulationConfig) -> None:
        self.config = config
        self.meters: list[Meter] = build_fleet(
            devices=config.devices, nbiot_share=config.nbiot_share, master_key=config.master_key,
            start=int(config.clock.now() - config.start_age), seed=config.seed,
            first_id=config.first_id, profiles=config.profiles, lorawan_share=config.lorawan_share,
        )
        self.nbiot = NbiotClient(
            config.udp_target, sockets=config.sockets, ack_timeout=config.ack_timeout,
            retransmissions=config.retransmissions,
        )
        # The LoRaWAN servers retry like Sigfox's backend (ChirpStack and The Things Stack both back off).
        self.callbacks = {
            protocol: CallbackClient(
                url, token, request, concurrency=config.http_concurrency, retry_delays=config.sigfox_retry_delays,
                host=config.http_host, ca_file=config.http_ca_file,
            )
            for protocol, url, token, request in (
                (sigfox.PROTOCOL, config.http_url, config.sigfox_token, sigfox_callback),
                (lorawan.PROTOCOL, config.lorawan_url, config.lorawan_token, lorawan_uplink),
            )
        }
        self.clients: dict[str, NbiotClient | CallbackClient] = {nbiot.PROTOCOL: self.nbiot, **self.callbacks}
        self._cursor = 0
        self.started = 0.0
        self.caught_up = False  # every device has sent its readings up to the clock

    @property
    def sent(self) -> int:
        return sum(client.sent for client in self.clients.values())

    async def run(self, stop: asyncio.Event | None = None, settle_timeout: float = 60.0) -> SimulationReport:
        c = self.config
        for client in self.clients.values():
            await client.start()
        self.started = time.monotonic()
        stop = stop or asyncio.Event()
        try:
            while not stop.is_set():
                elapsed = time.monotonic() - self.started
                if c.duration is not None and elapsed >= c.duration:
                    break
                target = int(c.rate * elapsed)
                if c.readings is not None:
                    target = min(target, c.readings)
                    if self.sent >= c.readings:
                        break
                self.caught_up = not self._send(target - self.sent)
                if self.caught_up:
                    await asyncio.sleep(0.5)
                await asyncio.sleep(0.005)
            await asyncio.gather(*(client.settle(settle_timeout) for client in self.clients.values()))
        finally:
            for client in self.clients.values():
                await client.close()
        return self.report()

    def _send(self, count: int) -> bool:
        now = self.config.clock.now()
        meters = self.meters
        checked = 0
        while count > 0 and checked < len(meters):
            meter = meters[self._cursor]
            self._cursor = (self._cursor + 1) % len(meters)
            if not meter.due(now):
                checked += 1
                continue
            checked = 0
            reading = meter.next_reading()
            self.clients[meter.protocol].send(meter, reading)
            count -= 1
        return count <= 0

    def report(self) -> SimulationReport:
        report = SimulationReport(elapsed=time.monotonic() - self.started)
        for protocol, client in self.clients.items():
            report.sent[protocol] = client.sent
            report.acked[protocol] = len(client.acked)
            report.acked_duplicate[protocol] = client.acked_duplicate
            report.gave_up[protocol] = len(client.gave_up)
            report.acked_readings += client.acked
        report.retransmitted = self.nbiot.retransmitted
        report.datagrams = self.nbiot.datagrams
        for client in self.callbacks.values():
            report.http_statuses.update(client.statuses)
        return report
