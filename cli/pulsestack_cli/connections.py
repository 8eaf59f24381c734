"""The CLI's connections, configured like the services' (NATS_URL, DATABASE_URL, users and password files).

When the environment names neither server, the settings `make run` wrote for the local stack
(`var/local/env`, see `LocalStack.write_env`) are used: the CLI then works against a running `make run`
as it is. A server that cannot be reached is an `Unreachable` error, which the CLI prints as one line.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import time
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import nats
from nats.aio.client import Client as NATS

from pulsestack.config import CommonConfig, database_url, secret
from pulsestack.store.db import create_pool

LOCAL_ENV = Path("var/local/env")


class Unreachable(Exception):
    """NATS or PostgreSQL did not answer; the message says where, and what to do."""


def local_settings(path: Path | None = None) -> dict[str, str]:
    """The `export NAME=value` lines of the local stack's settings file, if it exists."""
    path = path or Path(os.environ.get("PULSESTACK_LOCAL_ENV", LOCAL_ENV))
    settings = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.startswith("export ") and "=" in line:
                name, value = line.removeprefix("export ").split("=", 1)
                settings[name] = shlex.split(value)[0] if value else ""
    return settings


def use_local_stack() -> Path | None:
    """Takes the local stack's settings when the environment names no server; returns the file used."""
    if "NATS_URL" in os.environ or "DATABASE_URL" in os.environ:
        return None
    path = Path(os.environ.get("PULSESTACK_LOCAL_ENV", LOCAL_ENV))
    settings = local_settings(path)
    for name, value in settings.items():
        os.environ.setdefault(name, value)
    return path.resolve() if settings else None


async def _quiet(exc: Exception) -> None:
    """nats-py logs every failed attempt with a traceback; the CLI reports the outcome itself."""


def _where(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}" if parts.hostname else url


async def connect(*, system: bool = False, patience: float = 0.0) -> NATS:
    """The account user's connection, or with `system` the system account user's (server-wide requests).

    The system user is PULSESTACK_NATS_SYSTEM_USER with PULSESTACK_NATS_SYSTEM_PASSWORD (or its _FILE); without
    it, the account user is tried, and the server's "no answer" tells what is missing. With `patience`
    (seconds), servers that do not answer yet are tried again until then: a runbook's wait starts while
    servers rescheduled on new nodes may still be starting (a cluster proof's migration failed on that).
    """
    config = CommonConfig.from_env("cli")
    user, password = config.nats_user, config.nats_password
    if system and (system_user := os.environ.get("PULSESTACK_NATS_SYSTEM_USER")):
        user, password = system_user, secret("PULSESTACK_NATS_SYSTEM_PASSWORD", "")
    deadline = time.monotonic() + patience
    while True:
        try:
            # A few quick attempts: an operator waits seconds for an answer, not the client's default 2 minutes.
            nc = await nats.connect(config.nats_servers, user=user, password=password, tls=config.nats_tls,
                                    tls_hostname=config.nats_tls_hostname, max_reconnect_attempts=4,
                                    reconnect_time_wait=0.5, error_cb=_quiet)
            break
        except (nats.errors.NoServersError, OSError) as exc:
            if time.monotonic() < deadline:
                await asyncio.sleep(2.0)
                continue
            servers = ", ".join(_where(url) for url in config.nats_servers)
            raise Unreachable(
                f"cannot reach NATS at {servers} ({exc}): start the stack (make run) or set NATS_URL") from exc
    # Once connected, the client's usual patience (60 attempts, 2 s apart): the runbooks' waits
    # (`jetstream streams-healthy --within`) outlast servers restarting under them. nats-py reads these
    # options at each reconnection.
    nc.options["max_reconnect_attempts"] = 60
    nc.options["reconnect_time_wait"] = 2.0
    return nc


_DB_UNREACHABLE = (OSError, asyncpg.PostgresConnectionError, asyncpg.InvalidAuthorizationSpecificationError)


def _db_unreachable(url: str, exc: Exception) -> Unreachable:
    return Unreachable(f"cannot reach PostgreSQL at {_where(url)} ({exc}): start the stack (make run) or set "
                       "DATABASE_URL")


async def connect_db() -> asyncpg.Connection:
    url = database_url()
    try:
        return await asyncpg.connect(url)
    except _DB_UNREACHABLE as exc:
        raise _db_unreachable(url, exc) from exc


async def connect_pool() -> asyncpg.Pool:
    """One connection set up as the stages' (`create_pool`), for code that writes through their write path."""
    url = database_url()
    try:
        return await create_pool(url, size=1)
    except _DB_UNREACHABLE as exc:
        raise _db_unreachable(url, exc) from exc
