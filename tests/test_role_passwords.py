"""Role passwords are set as SCRAM-SHA-256 verifiers: PostgreSQL accepts a login with the password and
refuses one without it, and the password itself is never in the SQL the server sees."""

from __future__ import annotations

import os

import asyncpg
import pytest

from pulsestack.store.migrate import scram_verifier, set_role_passwords
from pulsestack_cli.local import LocalStack, with_user

ROLE = f"pulsestack_probe_{os.getpid()}"


@pytest.fixture
async def probe_role(stack: LocalStack) -> object:
    """A role that must give a SCRAM password over TCP (the local stack trusts loopback otherwise)."""
    assert stack.postgres is not None
    hba = stack.postgres.data / "pg_hba.conf"
    original = hba.read_text()
    admin = await asyncpg.connect(stack.database_url)
    await admin.execute(f'CREATE ROLE "{ROLE}" LOGIN')
    hba.write_text(f"host all {ROLE} 127.0.0.1/32 scram-sha-256\n" + original)
    await admin.fetchval("SELECT pg_reload_conf()")
    try:
        yield admin
    finally:
        hba.write_text(original)
        await admin.fetchval("SELECT pg_reload_conf()")
        await admin.execute(f'DROP ROLE "{ROLE}"')
        await admin.close()


async def test_a_role_logs_in_with_the_password_set_as_its_verifier(stack: LocalStack, probe_role: object) -> None:
    admin = probe_role
    assert isinstance(admin, asyncpg.Connection)
    password = "a generated password with spaces and 'quotes' and \\\\ backslashes"
    log = stack.postgres.data / "server.log"  # type: ignore[union-attr]
    logged_before = log.stat().st_size
    await admin.execute("SET log_statement = 'all'")  # what the server sees, in its log
    await set_role_passwords(admin, {ROLE: password})
    await admin.execute("RESET log_statement")
    with log.open("rb") as f:
        f.seek(logged_before)
        statements = f.read().decode(errors="replace")
    assert f'ALTER ROLE "{ROLE}" PASSWORD' in statements and "spaces" not in statements, statements[-2000:]
    stored = await admin.fetchval("SELECT rolpassword FROM pg_authid WHERE rolname = $1", ROLE)
    assert stored.startswith("SCRAM-SHA-256$4096:") and password not in stored
    url = with_user(stack.database_url, ROLE)
    conn = await asyncpg.connect(url, password=password)
    assert await conn.fetchval("SELECT current_user") == ROLE
    await conn.close()
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(url, password=password + "x")


def test_each_verifier_has_a_salt_of_its_own() -> None:
    assert scram_verifier("foobar") != scram_verifier("foobar")
    with pytest.raises(ValueError, match="printable ASCII"):
        scram_verifier("pässword")
