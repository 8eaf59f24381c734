"""Versioned migrations, safe when several replicas start at once, and partition upkeep."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import os
import re
from importlib import resources

import asyncpg

from pulsestack.logs import get_logger
from pulsestack.store.gap_hourly import fill_gap_hourly
from pulsestack.store.maintenance import MONTHS_AHEAD, ensure_partitions
from pulsestack.store.v1_move import move_v1_readings

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
    """Applies pending migrations in order, then moves a v1 database's readings (pulsestack.store.v1_move);
    returns the names applied."""
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
        # After the partitions: the months ahead exist before readings arrive in them.
        await move_v1_readings(conn)
        await fill_gap_hourly(conn)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK)
    return applied


async def bootstrap_owner(superuser: asyncpg.Connection) -> None:
    """Makes pulsestack_owner the owner of the database and of all it holds (pulsestack/store/owner.sql),
    so that `migrate` runs as that role and never as the superuser."""
    await superuser.execute(resources.files("pulsestack.store").joinpath("owner.sql").read_text())


async def set_role_passwords(conn: asyncpg.Connection, passwords: dict[str, str]) -> None:
    """Sets each role's password as its SCRAM-SHA-256 verifier: the password itself never travels in SQL
    text (ALTER ROLE takes no parameters), so it cannot reach the server's statement logs or
    pg_stat_statements, and nothing is escaped by hand."""
    for role, password in passwords.items():
        verifier = scram_verifier(password)
        # Identifiers cannot be parameters; role names come from our own fixed list, and a verifier holds
        # only base64, digits, '$' and ':' (checked).
        if not (_ROLE.fullmatch(role) and _VERIFIER.fullmatch(verifier)):
            raise ValueError(f"refusing to set a password on role {role!r}")
        await conn.execute(f"ALTER ROLE \"{role}\" PASSWORD '{verifier}'")


_ROLE = re.compile(r"[a-z_][a-z0-9_]*")
_VERIFIER = re.compile(r"SCRAM-SHA-256\$[0-9]+:[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+:[A-Za-z0-9+/=]+")


def scram_verifier(password: str, salt: bytes | None = None, iterations: int = 4096) -> str:
    """What PostgreSQL stores for a SCRAM-SHA-256 password (RFC 5802 and 7677, in PostgreSQL's format).

    PostgreSQL runs a password through SASLprep first, which changes nothing in printable ASCII; other
    passwords are refused rather than hashed differently from what the server would compute."""
    if not (password.isascii() and password.isprintable()):
        raise ValueError("role passwords must be printable ASCII (deploy/secrets.sh generates them so)")
    salt = salt or os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    stored_key = hashlib.sha256(hmac.digest(salted, b"Client Key", "sha256")).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"
