"""Reading configuration from the environment, once, at start-up.

Secrets follow the Docker secrets convention: `NAME_FILE` names a file whose
content is the value, so nothing secret has to sit in the environment.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from pulsestack.clock import WALL, Clock


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


def env_str(name: str, default: str | None = None) -> str:
    value = os.environ.get(name, default)
    if value is None:
        raise ConfigError(f"{name} is required")
    return value


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from exc


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from exc


def secret(name: str, default: str | None = None) -> str:
    """`NAME_FILE` wins over `NAME`; surrounding whitespace is stripped."""
    path = os.environ.get(f"{name}_FILE")
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{name}_FILE={path} cannot be read: {exc.strerror}") from exc
    return env_str(name, default)


@dataclass(frozen=True, slots=True)
class CommonConfig:
    """What every service needs: where the bus and the database are, how to log."""

    nats_url: str
    nats_user: str | None
    nats_password: str | None
    nats_tls: ssl.SSLContext | None
    nats_tls_hostname: str | None  # the name the servers' certificate is for, where the URLs' host is not it
    log_level: str
    service: str
    clock: Clock

    @property
    def nats_servers(self) -> list[str]:
        """NATS_URL may list several servers, comma-separated (the client learns the rest from them)."""
        return [url.strip() for url in self.nats_url.split(",") if url.strip()]

    @classmethod
    def from_env(cls, service: str) -> CommonConfig:
        user = os.environ.get("PULSESTACK_NATS_USER") or None
        return cls(
            nats_url=env_str("NATS_URL", "nats://127.0.0.1:4222"),
            nats_user=user,
            nats_password=secret("PULSESTACK_NATS_PASSWORD", "") if user else None,
            nats_tls=tls_context("NATS_CA_FILE"),
            nats_tls_hostname=os.environ.get("NATS_TLS_HOSTNAME") or None,
            log_level=env_str("PULSESTACK_LOG_LEVEL", "info"),
            service=service,
            clock=env_clock(),
        )


def tls_context(name: str) -> ssl.SSLContext | None:
    """A client's TLS context trusting only the CA certificate in the file the variable `name` names (the
    stack's own CA, deploy/secrets.sh), with the server's name checked; None when the variable is unset."""
    path = os.environ.get(name)
    if not path:
        return None
    try:
        # With a CA file, the system's CAs are not loaded: no public CA can vouch for the stack's servers.
        return ssl.create_default_context(cafile=path)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{name}={path} is not a readable CA certificate: {exc}") from exc


def env_clock() -> Clock:
    """The wall clock, or the compressed clock of `PULSESTACK_TEST_CLOCK` (pulsestack/clock.py)."""
    raw = os.environ.get("PULSESTACK_TEST_CLOCK", "").strip()
    if not raw:
        return WALL
    try:
        wall_epoch, epoch, rate = (float(part) for part in raw.split())
    except ValueError as exc:
        raise ConfigError(f"PULSESTACK_TEST_CLOCK must be '<wall epoch> <clock epoch> <rate>', got {raw!r}") from exc
    if rate <= 0:
        raise ConfigError(f"PULSESTACK_TEST_CLOCK: the rate must be positive, got {rate}")
    return Clock(wall_epoch, epoch, rate)


def database_url() -> str:
    """`DATABASE_URL`, with the password optionally taken from `PULSESTACK_DB_PASSWORD_FILE`."""
    url = env_str("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/pulsestack")
    password_file = os.environ.get("PULSESTACK_DB_PASSWORD_FILE")
    if password_file:
        # asyncpg takes the password separately; keeping it out of the URL keeps it out of logs.
        os.environ.setdefault("PGPASSWORD", Path(password_file).read_text().strip())
    return url
