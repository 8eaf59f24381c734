"""The v1 -> v2 migration, proven on a v1 database filled through the real v1 pipeline (the committed fixture of
tests/fixtures/make_v1_fixture.py): after `pulsestack migrate` every read-API answer and every device's stored
readings are what they were, and a move killed at any point and run again ends the same, nothing lost or doubled.

Nothing in the compared answers depends on the clock once the fixture is dumped: no alerting sweep runs against
the restored database (its silent alerts would change with 'now'), and every range is the fixture's own fixed
one. `last_seen`, `interval_seconds` and alert times are compared exactly: they come from the dump.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pulsestack.store.migrate import migrate
from pulsestack.store.v1_move import OrphanReadings, move_v1_readings
from pulsestack_cli.local import LocalStack, with_user
from pulsestack_cli.localstack import free_port, postgres_binaries
from pulsestack_cli.processes import ServiceProcess
from tests.fixtures.make_v1_fixture import ANSWERS, DUMP, V1_READINGS, api_answers, fleet, totals

TEMPLATE = "v1_fleet_template"
V2_READINGS = ("SELECT d.protocol, d.device_id, r.device_time, r.seq, r.counts FROM readings r"
               " JOIN devices d ON d.id = r.device")
# Every column a reading keeps, by its v1 identity: before from raw_messages, after from readings.
V1_ROWS = ("SELECT protocol, device_id, seq, device_time, bucket_seconds, counts, meter_index, received_at, payload,"
           " meta FROM raw_messages ORDER BY 1, 2, 3, 4")
V2_ROWS = ("SELECT d.protocol, d.device_id, r.seq, r.device_time, r.bucket_seconds, r.counts, r.meter_index,"
           " r.received_at, r.payload, r.meta FROM readings r JOIN devices d ON d.id = r.device ORDER BY 1, 2, 3, 4")


def _url(servers: LocalStack, database: str) -> str:
    return servers.database_url.rsplit("/", 1)[0] + "/" + database


@pytest.fixture(scope="module")
async def v1_template(servers: LocalStack) -> AsyncIterator[str]:
    """A database restored from the fixture's dump, the template each test copies (a copy takes a moment, a
    restore seconds)."""
    admin = await asyncpg.connect(servers.database_url)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {TEMPLATE} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {TEMPLATE}")
        psql = await asyncio.create_subprocess_exec(
            postgres_binaries() / "psql", "-q", "-v", "ON_ERROR_STOP=1", "-d", _url(servers, TEMPLATE),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL)
        await psql.communicate(gzip.decompress(DUMP.read_bytes()))
        assert psql.returncode == 0, "restoring the v1 fixture failed"
        yield TEMPLATE
        await admin.execute(f"DROP DATABASE IF EXISTS {TEMPLATE} WITH (FORCE)")
    finally:
        await admin.close()


@pytest.fixture
async def v1_database(servers: LocalStack, v1_template: str) -> AsyncIterator[str]:
    """The URL of a fresh copy of the v1 database."""
    admin = await asyncpg.connect(servers.database_url)
    name = f"v1_copy_{os.getpid()}"
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {name} TEMPLATE {v1_template}")
        yield _url(servers, name)
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await admin.close()


async def _rows(url: str, query: str) -> list[tuple[Any, ...]]:
    conn = await asyncpg.connect(url)
    try:
        return [tuple(r) for r in await conn.fetch(query)]
    finally:
        await conn.close()


async def pulsestack_migrate(url: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pulsestack_cli", "migrate", env={**os.environ, "DATABASE_URL": url},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode() + err.decode()


async def test_every_api_answer_and_device_total_survives_the_migration(servers: LocalStack, v1_database: str,
                                                                        tmp_path: Any) -> None:
    recorded = orjson.loads(gzip.decompress(ANSWERS.read_bytes()))
    before = await _rows(v1_database, V1_ROWS)
    conn = await asyncpg.connect(v1_database)
    try:
        assert await totals(conn, V1_READINGS) == recorded["totals"]
    finally:
        await conn.close()

    code, output = await pulsestack_migrate(v1_database)
    assert code == 0, output
    conn = await asyncpg.connect(v1_database)
    try:
        assert await conn.fetchval("SELECT to_regclass('raw_messages')") is None
        assert await conn.fetchval("SELECT count(*) FROM pg_class WHERE relname LIKE 'raw_messages%'") == 0
        assert await conn.fetchval("SELECT count(*) FROM readings_default") == 0  # each month in its partition
        assert await totals(conn, V2_READINGS) == recorded["totals"]
    finally:
        await conn.close()
    assert await _rows(v1_database, V2_ROWS) == before

    port = free_port()
    api = ServiceProcess("api", {
        "DATABASE_URL": with_user(v1_database, "pulsestack_reader"), "PULSESTACK_API_HOST": "127.0.0.1",
        "PULSESTACK_API_PORT": str(port), "PULSESTACK_OPS_HOST": "127.0.0.1", "PULSESTACK_OPS_PORT": str(port),
        "PULSESTACK_API_TOKENS_FILE": str(servers.api_tokens_file)}, port, tmp_path / "api.log")
    api.start()
    try:
        api.wait_ready()
        answers = await api_answers(f"http://127.0.0.1:{port}", servers.api_token, fleet(),
                                    recorded["range"]["from"], recorded["range"]["to"])
    finally:
        api.stop()
    assert answers.keys() == recorded["answers"].keys()
    for request, pages in recorded["answers"].items():
        assert answers[request] == pages, request


async def test_a_device_missing_from_the_registry_stops_the_move_before_anything_moves(v1_database: str) -> None:
    conn = await asyncpg.connect(v1_database)
    try:
        await conn.execute("DELETE FROM devices WHERE protocol = 'sigfox' AND device_id = '3C000007'")
        before = await _rows(v1_database, V1_ROWS)
        with pytest.raises(OrphanReadings, match=r"1 devices that are not registered: sigfox:3C000007 \(24 readings\)"):
            await migrate(conn)
        assert await _rows(v1_database, V1_ROWS) == before
        assert await conn.fetchval("SELECT count(*) FROM readings") == 0
    finally:
        await conn.close()
    code, output = await pulsestack_migrate(v1_database)
    assert code == 4 and "sigfox:3C000007" in output and "Traceback" not in output, output


async def test_readings_already_in_the_new_table_are_kept_once(v1_database: str) -> None:
    """A reading the new raw stage stored from RAW's backlog before its v1 row moved (same device, device time
    and seq): the move leaves the stored one and drops the v1 copy."""
    before = await _rows(v1_database, V1_ROWS)
    await _migrate_dying(v1_database, 1_000, 1, after=False)  # 008 applied, the move killed before its start
    conn = await asyncpg.connect(v1_database)
    try:
        assert await conn.fetchval("SELECT count(*) FROM readings") == 0
        await conn.execute(
            "INSERT INTO readings (device, bucket_seconds, device_time, seq, meter_index, received_at, counts,"
            " payload, meta) SELECT d.id, r.bucket_seconds, r.device_time, r.seq, r.meter_index, r.received_at,"
            " r.counts, r.payload, r.meta FROM raw_messages r JOIN devices d USING (protocol, device_id)"
            " WHERE r.device_id IN ('861000000000005', '3C000010')")
        report = await move_v1_readings(conn)
    finally:
        await conn.close()
    assert report is not None and report.moved == len(before) and report.moved - report.stored == 48
    assert await _rows(v1_database, V2_ROWS) == before


class RemovingDevice(asyncpg.Connection):  # type: ignore[misc]
    """Before the move's first batch, another session removes a device (and commits)."""

    removing: tuple[str, str, str] | None = None  # (url, protocol, device)

    async def fetchrow(self, query: str, *args: Any, **kwargs: Any) -> Any:
        if "WITH batch AS" in query and RemovingDevice.removing:
            url, protocol, device = RemovingDevice.removing
            RemovingDevice.removing = None
            other = await asyncpg.connect(url)
            try:
                await other.execute("DELETE FROM devices WHERE protocol = $1 AND device_id = $2", protocol, device)
            finally:
                await other.close()
        return await super().fetchrow(query, *args, **kwargs)


async def test_a_device_removed_during_the_move_stops_it_at_that_batch(v1_database: str) -> None:
    before = await _rows(v1_database, V1_ROWS)
    RemovingDevice.removing = (v1_database, "sigfox", "3C000027")
    conn = await asyncpg.connect(v1_database, connection_class=RemovingDevice)
    os.environ["PULSESTACK_V1_MOVE_BATCH"] = "100"
    try:
        with pytest.raises(OrphanReadings, match=r"sigfox:3C000027 \(22 readings\)\. [0-9]+ readings were moved"):
            await migrate(conn)
        moved = await conn.fetchval("SELECT count(*) FROM readings")
        assert 0 < moved and moved + await conn.fetchval("SELECT count(*) FROM raw_messages") == len(before)
        await conn.execute("INSERT INTO devices (protocol, device_id, shard) VALUES ('sigfox', '3C000027', 39)")
        await migrate(conn)
    finally:
        del os.environ["PULSESTACK_V1_MOVE_BATCH"]
        await conn.close()
    assert await _rows(v1_database, V2_ROWS) == before


class Killed(Exception):
    """Where the move's process died."""


class DyingConnection(asyncpg.Connection):  # type: ignore[misc]
    """A connection that fails its `die_at`-th statement of the move, before or after the server ran it: every
    point where a process can die, its open transaction then rolling back."""

    die_at = -1
    after = False
    statements: int | None = None  # counted from the move's first statement; the SQL migrations are not

    def _step(self, query: str) -> bool:
        if "REVOKE INSERT ON raw_messages" in query:
            DyingConnection.statements = 0
        if DyingConnection.statements is None:
            return False
        DyingConnection.statements += 1
        return DyingConnection.statements == DyingConnection.die_at

    async def _run(self, call: Callable[..., Awaitable[Any]], query: str, *args: Any, **kwargs: Any) -> Any:
        dies = self._step(query)
        if dies and not self.after:
            raise Killed(query)
        result = await call(query, *args, **kwargs)
        if dies:
            raise Killed(query)
        return result

    async def execute(self, query: str, *args: Any, **kwargs: Any) -> Any:
        return await self._run(super().execute, query, *args, **kwargs)

    async def fetchrow(self, query: str, *args: Any, **kwargs: Any) -> Any:
        return await self._run(super().fetchrow, query, *args, **kwargs)

    async def fetchval(self, query: str, *args: Any, **kwargs: Any) -> Any:
        return await self._run(super().fetchval, query, *args, **kwargs)


async def _copy(admin: asyncpg.Connection, servers: LocalStack, template: str, name: str) -> str:
    await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    await admin.execute(f"CREATE DATABASE {name} TEMPLATE {template}")
    return _url(servers, name)


async def _migrate_dying(url: str, batch: int, die_at: int, after: bool) -> int:
    """Migrates with `batch` rows a move batch, the `die_at`-th statement of the move killing the run;
    returns how many statements the move ran."""
    DyingConnection.die_at, DyingConnection.after, DyingConnection.statements = die_at, after, None
    dying = await asyncpg.connect(url, connection_class=DyingConnection)
    os.environ["PULSESTACK_V1_MOVE_BATCH"] = str(batch)
    try:
        await migrate(dying)
    except Killed:
        pass
    finally:
        del os.environ["PULSESTACK_V1_MOVE_BATCH"]
        await dying.close()
    return DyingConnection.statements or 0


_statements: dict[int, int] = {}  # statements of a whole move, by batch size


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(batch=st.integers(7, 3_000), where=st.floats(0, 1), after=st.booleans())
@example(batch=500, where=0.05, after=True)  # inside the first batch: rows deleted, not committed
@example(batch=100, where=1.0, after=True)  # the last statement: the grant, in the drop's transaction
@example(batch=100, where=0.995, after=False)
async def test_a_move_killed_anywhere_and_run_again_loses_and_doubles_nothing(
    servers: LocalStack, v1_template: str, batch: int, where: float, after: bool
) -> None:
    admin = await asyncpg.connect(servers.database_url)
    name = f"v1_kill_{os.getpid()}"
    try:
        if batch not in _statements:
            _statements[batch] = await _migrate_dying(await _copy(admin, servers, v1_template, name), batch, -1,
                                                      after)
        url = await _copy(admin, servers, v1_template, name)
        before = await _rows(url, V1_ROWS)
        await _migrate_dying(url, batch, max(1, round(where * _statements[batch])), after)
        conn = await asyncpg.connect(url)
        try:
            if await conn.fetchval("SELECT to_regclass('raw_messages')") is not None:
                # Between the two runs each reading is in exactly one of the tables, and the writer is refused.
                left = await conn.fetchval("SELECT count(*) FROM raw_messages")
                assert left + await conn.fetchval("SELECT count(*) FROM readings") == len(before)
            await migrate(conn)
            assert await conn.fetchval("SELECT to_regclass('raw_messages')") is None
            assert await move_v1_readings(conn) is None
            assert await conn.fetchval("SELECT has_table_privilege('pulsestack_raw', 'readings', 'INSERT')")
        finally:
            await conn.close()
        assert await _rows(url, V2_ROWS) == before
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()
