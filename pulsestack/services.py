"""The catalogue of pulsestack's own services: the one place that says which exist, how each is started,
on which ports it listens by default, as whom it reaches the database and the bus, and what `run all`
hosts. The services' configs take their default ports from here; the CLI, the local stack, the swarm
proof and the stack.yml consistency test (tests/test_service_catalogue.py) read the rest."""

from __future__ import annotations

from dataclasses import dataclass

from pulsestack.config import env_int


@dataclass(frozen=True, slots=True)
class Port:
    env: str  # the variable that moves it (stack.yml sets it, to the default)
    default: int
    protocol: str = "tcp"

    def from_env(self) -> int:
        return env_int(self.env, self.default)


@dataclass(frozen=True, slots=True)
class Service:
    name: str  # stack.yml's service, Prometheus job and log name
    module: str  # `python -m <module>`, the image's entry point; its folder (module with dashes) has the Dockerfile
    ops: Port  # /healthz, /readyz, /metrics (ingest-http and api serve them beside their own routes)
    readiness: str  # what /readyz waits for
    database_role: str | None = None
    nats_user: str | None = None
    traffic: Port | None = None  # where devices reach it, when that is not the ops port
    local: bool = True  # `pulsestack run local` (and the tests' stack) starts it
    in_all: bool = False  # `pulsestack run all` hosts it

    @property
    def ports(self) -> tuple[Port, ...]:
        return (self.ops,) if self.traffic is None else (self.ops, self.traffic)


OPS_PORT = "PULSESTACK_OPS_PORT"
NBIOT_UDP = Port("PULSESTACK_UDP_PORT", 2204, "udp")

INGEST_UDP = Service(
    "ingest-udp", "ingest_udp", Port(OPS_PORT, 9101), readiness="connected to NATS, the registry loaded",
    nats_user="ingest-udp", traffic=NBIOT_UDP, in_all=True,
)
INGEST_HTTP = Service(
    "ingest-http", "ingest_http", Port("PULSESTACK_HTTP_PORT", 7070),
    readiness="connected to NATS, the registry loaded", nats_user="ingest-http", in_all=True,
)
RAW_PROCESSOR = Service(
    "raw-processor", "processors", Port(OPS_PORT, 9102),
    readiness="connected to NATS, its consumer bound, the database up",
    database_role="pulsestack_raw", nats_user="raw-processor", in_all=True,
)
ALERTING = Service(
    "alerting", "alerting", Port(OPS_PORT, 9105), readiness="connected to NATS, the notifier's consumer bound",
    database_role="pulsestack_alerting", nats_user="alerting",
)
API = Service(
    "api", "api", Port("PULSESTACK_API_PORT", 8080), readiness="the database up", database_role="pulsestack_reader",
)
# Reads the Docker API of a swarm manager: not part of the local stack.
SWARM_EXPORTER = Service(
    "swarm-exporter", "swarm_exporter", Port(OPS_PORT, 9104), readiness="the Docker API answering",
    database_role="pulsestack_reader", local=False,
)

SERVICES = (INGEST_UDP, INGEST_HTTP, RAW_PROCESSOR, ALERTING, API, SWARM_EXPORTER)
BY_NAME = {s.name: s for s in SERVICES}
LOCAL = tuple(s for s in SERVICES if s.local)
