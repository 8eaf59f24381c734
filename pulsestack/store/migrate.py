"""Versioned migrations, safe when several replicas start at once, and partition upkeep."""

from __future__ import annotations

import datetime as dt
from importlib import resources

import asyncpg

from pulsestack.logs import get_logger
from pulsestack.store.maintenance import MONTHS_AHEAD, ensure_partitions

log = get_logger(__name__)
# Any fixed number: every migrating process queues on the same advisory lock.
_LOCK = 0x70756C7365


def _migrations() -> list[tuple[int, str, str]]:
    folder = resources.files("pulsestack.store").joinpath("migrations")
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.name, entry.read_text()))
    return sorted(found)


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Applies pending migrations in order; returns the names applied."""
    applied: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version int PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, name, sql in _migrations():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name)
            log.info("migration applied", migration=name)
            applied.append(name)
        await ensure_partitions(conn, MONTHS_AHEAD, dt.datetime.now(dt.UTC).date())
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK)
    return applied


async def set_role_passwords(conn: asyncpg.Connection, passwords: dict[str, str]) -> None:
    for role, password in passwords.items():
        # Identifiers cannot be parameters; role names come from our own fixed list.
        await conn.execute(f'ALTER ROLE "{role}" PASSWORD {_literal(password)}')


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
