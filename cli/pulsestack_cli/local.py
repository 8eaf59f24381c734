"""The whole stack on one machine: embedded NATS and PostgreSQL (unless NATS_URL / DATABASE_URL point
elsewhere), migrations, streams, and the services as processes. Used by `pulsestack run local`,
the tests and the benchmark."""

from __future__ import annotations

import os
import secrets
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import nats

from ingest_http.config import token_variable
from ingest_http.routes import ROUTES, SIGFOX
from pulsestack.bus.topology import REGISTRY_BUCKET, BusLimits, raw_backlog, setup
from pulsestack.registry import devices as registry
from pulsestack.services import API, BY_NAME, INGEST_HTTP
from pulsestack.store.migrate import bootstrap_owner, migrate
from pulsestack_cli.localstack import NatsServer, Postgres, free_port
from pulsestack_cli.processes import STACK_SERVICES, ServiceProcess
from simulator.fleet import fleet_ids, simulated

OWNER = "pulsestack_owner"  # owns the schema (pulsestack/store/owner.sql)


def with_user(url: str, user: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{user}@{host}"))


def _secret_file(path: Path, make: str) -> Path:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(make + "\n")
    return path


@dataclass
class LocalStack:
    workdir: Path
    nats_url: str = ""
    database_url: str = ""  # the superuser's URL (embedded server: trusted on loopback), for setup and checks
    udp_port: int = 0
    http_port: int = 0
    api_port: int = 0
    ops_ports: dict[str, int] = field(default_factory=dict)
    nats: NatsServer | None = None
    postgres: Postgres | None = None
    services: dict[str, ServiceProcess] = field(default_factory=dict)
    service_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.master_key_file = _secret_file(self.workdir / "secrets" / "device-master-key", secrets.token_hex(32))
        # One tokens file per ingest-http route realm (network server): secrets/<realm>-tokens.
        self.route_tokens_files = {
            realm: _secret_file(self.workdir / "secrets" / f"{realm}-tokens", secrets.token_urlsafe(24))
            for realm in sorted({route.realm for route in ROUTES})
        }
        self.tokens_file = self.route_tokens_files[SIGFOX.realm]
        self.api_tokens_file = _secret_file(self.workdir / "secrets" / "api-tokens", secrets.token_urlsafe(24))
        self.webhook_secret_file = _secret_file(self.workdir / "secrets" / "webhook-secret", secrets.token_hex(32))

    @property
    def master_key(self) -> bytes:
        return bytes.fromhex(self.master_key_file.read_text().strip())

    @property
    def sigfox_token(self) -> str:
        return self.tokens_file.read_text().split()[0]

    def route_token(self, realm: str) -> str:
        """A token the ingest-http routes of `realm` accept."""
        return self.route_tokens_files[realm].read_text().split()[0]

    @property
    def api_token(self) -> str:
        return self.api_tokens_file.read_text().split()[0]

    def start_servers(self, fixed_ports: bool = False, postgres_settings: Mapping[str, str] | None = None) -> None:
        """Starts what NATS_URL / DATABASE_URL do not point to; PostgreSQL with `postgres_settings` on top of
        production's file (the benchmark's WAL archiving)."""
        self.nats_url = os.environ.get("NATS_URL", "")
        self.database_url = os.environ.get("DATABASE_URL", "")
        if not self.nats_url:
            self.nats = NatsServer(self.workdir / "nats", port=4222 if fixed_ports else None)
            self.nats.start()
            self.nats_url = self.nats.url
        if not self.database_url:
            self.postgres = Postgres(self.workdir / "postgres", port=55432 if fixed_ports else None,
                                     settings=postgres_settings)
            self.postgres.start()
            self.database_url = self.postgres.url()

    async def prepare(self) -> None:
        url = self.database_url
        if self.postgres:  # as in production: the superuser makes the owner, the owner migrates
            conn = await asyncpg.connect(url)
            try:
                await bootstrap_owner(conn)
            finally:
                await conn.close()
            url = with_user(url, OWNER)
        conn = await asyncpg.connect(url)
        try:
            await migrate(conn)
        finally:
            await conn.close()
        nc = await nats.connect(self.nats_url)
        try:
            await setup(nc.jetstream(), BusLimits.from_env())
        finally:
            await nc.close()

    async def provision(self, devices: int, nbiot_share: float, first_id: int = 0, lorawan_share: float = 0.0) -> None:
        """Registers the simulator's fleet (same ids as simulator.fleet)."""
        conn = await asyncpg.connect(self.database_url)
        nc = await nats.connect(self.nats_url)
        try:
            kv = await nc.jetstream().key_value(REGISTRY_BUCKET)
            for protocol, ids in fleet_ids(devices, nbiot_share, first_id, lorawan_share).items():
                if ids:
                    await registry.add_bulk(conn, kv, protocol, ids)
        finally:
            await nc.close()
            await conn.close()

    async def retire_others(self, devices: int, nbiot_share: float, lorawan_share: float = 0.0) -> int:
        """Disables the simulated devices an earlier, larger run registered that this fleet leaves out: they
        would go silent and each open an alert. A later, larger run enables them again (`provision`)."""
        wanted = {protocol: set(ids) for protocol, ids in fleet_ids(devices, nbiot_share, 0, lorawan_share).items()}
        conn = await asyncpg.connect(self.database_url)
        nc = await nats.connect(self.nats_url)
        try:
            kv = await nc.jetstream().key_value(REGISTRY_BUCKET)
            retired = 0
            for protocol, ids in wanted.items():
                rows = await conn.fetch("SELECT device_id FROM devices WHERE protocol = $1 AND NOT disabled", protocol)
                others = [d for d in (r["device_id"] for r in rows) if d not in ids and simulated(protocol, d)]
                if others:
                    retired += await registry.disable_bulk(conn, kv, protocol, others)
            return retired
        finally:
            await nc.close()
            await conn.close()

    async def backlog(self) -> int:
        """Messages the processor has not processed yet (pending or unacknowledged in RAW)."""
        nc = await nats.connect(self.nats_url)
        try:
            return await raw_backlog(nc.jetstream())
        finally:
            await nc.close()

    def configure_services(self, udp_port: int | None = None, http_port: int | None = None,
                           api_port: int | None = None) -> None:
        self.udp_port = udp_port or free_port()
        self.http_port = http_port or free_port()
        self.api_port = api_port or free_port()
        # The services whose ops endpoints share the port their clients use.
        fixed = {INGEST_HTTP.name: self.http_port, API.name: self.api_port}
        taken = {self.udp_port, self.http_port, self.api_port}
        self.ops_ports = {}
        for name in STACK_SERVICES:
            port = fixed.get(name)
            while port is None or (name not in fixed and port in taken):
                # Two picks of free_port can return the same free port; the second service would then fail
                # to bind while the first answered its readiness probe.
                port = free_port()
            taken.add(port)
            self.ops_ports[name] = port
        self.service_env = {
            "NATS_URL": self.nats_url,
            "PULSESTACK_DEVICE_MASTER_KEY_FILE": str(self.master_key_file),
            **{f"{token_variable(realm)}_FILE": str(path) for realm, path in self.route_tokens_files.items()},
            "PULSESTACK_UDP_HOST": "127.0.0.1",
            "PULSESTACK_UDP_PORT": str(self.udp_port),
            "PULSESTACK_HTTP_HOST": "127.0.0.1",
            "PULSESTACK_HTTP_PORT": str(self.http_port),
            "PULSESTACK_OPS_HOST": "127.0.0.1",
            "PULSESTACK_API_HOST": "127.0.0.1",
            "PULSESTACK_API_PORT": str(self.api_port),
            "PULSESTACK_API_TOKENS_FILE": str(self.api_tokens_file),
            "PULSESTACK_WEBHOOK_SECRET_FILE": str(self.webhook_secret_file),
        }
        for name, port in self.ops_ports.items():
            env = {**self.service_env, "PULSESTACK_OPS_PORT": str(port)}
            if role := BY_NAME[name].database_role:
                # Embedded PostgreSQL trusts loopback, so each service can use its own least-privilege
                # role; an external DATABASE_URL is used as given.
                url = self.database_url
                env["DATABASE_URL"] = with_user(url, role) if self.postgres else url
            self.services[name] = ServiceProcess(name, env, port, self.workdir / "logs" / f"{name}.log")

    @property
    def env_file(self) -> Path:
        return self.workdir / "env"

    def write_env(self) -> None:
        """What the CLI needs to reach this stack, as export lines (`pulsestack env` prints them); paths to
        secret files, never a secret."""
        settings = {
            "NATS_URL": self.nats_url, "DATABASE_URL": self.database_url,
            "PULSESTACK_DEVICE_MASTER_KEY_FILE": str(self.master_key_file),
            "PULSESTACK_SIGFOX_TOKENS_FILE": str(self.tokens_file),
            "PULSESTACK_API_URL": f"http://127.0.0.1:{self.api_port}",
            "PULSESTACK_API_TOKENS_FILE": str(self.api_tokens_file),
        }
        self.env_file.write_text("".join(f"export {name}={shlex.quote(value)}\n" for name, value in settings.items()))

    def start_services(self, timeout: float = 30.0) -> None:
        for service in self.services.values():
            service.start()
        for service in self.services.values():
            service.wait_ready(timeout)

    def exited(self) -> dict[str, int]:
        """The services that stopped by themselves, with their exit codes."""
        return {name: code for name, s in self.services.items()
                if s.process is not None and (code := s.process.poll()) is not None}

    def metrics_urls(self) -> dict[str, str]:
        return {name: s.url("/metrics") for name, s in self.services.items()}

    def stop(self) -> None:
        for service in self.services.values():
            service.stop()
        if self.nats:
            self.nats.stop()
        if self.postgres:
            self.postgres.stop()
