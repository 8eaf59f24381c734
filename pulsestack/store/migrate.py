"""Versioned migrations, safe when several replicas start at once, and partition upkeep."""

from __future__ import annotations

import datetime as dt
from importlib import resources

import asyncpg

from pulsestack.logs import get_logger

log = get_logger(__name__)
# Any fixed number: every migrating process queues on the same advisory lock.
_LOCK = 0x70756C7365
PARTITIONED = (("raw_messages", "device_time"), ("pulses", "bucket_start"))


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
        await ensure_partitions(conn)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK)
    return applied


def _month(day: dt.date, offset: int) -> dt.date:
    index = day.year * 12 + day.month - 1 + offset
    return dt.date(index // 12, index % 12 + 1, 1)


async def ensure_partitions(
    conn: asyncpg.Connection, *, months_back: int = 2, months_ahead: int = 3, today: dt.date | None = None
) -> None:
    """Creates monthly partitions around today (readings may be up to 30 days old or a day ahead)."""
    today = today or dt.datetime.now(dt.UTC).date()
    for offset in range(-months_back, months_ahead + 1):
        for table, column in PARTITIONED:
            await conn.execute(
                "SELECT pulsestack_ensure_partition($1::regclass, $2, $3)", table, column, _month(today, offset)
            )


async def drop_partitions_before(conn: asyncpg.Connection, cutoff: dt.date) -> list[str]:
    """Retention: drops whole monthly partitions that end on or before `cutoff`'s month."""
    dropped = []
    for table, _ in PARTITIONED:
        rows = await conn.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = $1::regclass AND c.relname ~ '_y[0-9]{4}m[0-9]{2}$'",
            table,
        )
        for row in rows:
            name = row["relname"]
            year, month = int(name[-7:-3]), int(name[-2:])
            if (year, month) < (cutoff.year, cutoff.month):
                await conn.execute(f'DROP TABLE "{name}"')
                dropped.append(name)
    return dropped


async def set_role_passwords(conn: asyncpg.Connection, passwords: dict[str, str]) -> None:
    for role, password in passwords.items():
        # Identifiers cannot be parameters; role names come from our own fixed list.
        await conn.execute(f'ALTER ROLE "{role}" PASSWORD {_literal(password)}')


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
