"""swarm-exporter's WAL series, read from a real PostgreSQL as the read-only role: archiving off, archiving on
with an archive_command that fails, and with one that succeeds (docs/durability.md)."""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from pulsestack.store.migrate import migrate
from pulsestack_cli.localstack import Postgres

REPO = Path(__file__).resolve().parents[2]
try:
    import swarm_exporter  # noqa: F401 - installed with the distribution once pyproject lists it
except ImportError:
    sys.path.insert(0, str(REPO / "swarm-exporter"))

from swarm_exporter.app import SwarmCollector, probe_postgres  # noqa: E402

READER = "pulsestack_reader"


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Not under pytest's temporary root (0700): PostgreSQL runs as its own user when the tests run as root.
    path = Path(tempfile.mkdtemp(prefix="pulsestack-wal-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def server(workdir: Path) -> AsyncIterator[Postgres]:
    """A PostgreSQL of its own, migrated, with production's settings (archive_mode off)."""
    postgres = Postgres(workdir / "pg")
    await asyncio.to_thread(postgres.start)
    try:
        conn = await asyncpg.connect(postgres.url())
        try:
            await migrate(conn)
        finally:
            await conn.close()
        yield postgres
    finally:
        # A throwaway server: no shutdown checkpoint, and no last round of a failing archive command's retries.
        await asyncio.to_thread(postgres.stop, "immediate")


async def archive_with(postgres: Postgres, command: str) -> None:
    """archive_mode takes a restart; archive_command a reload. The command runs in the data folder."""
    conn = await asyncpg.connect(postgres.url())
    try:
        await conn.execute("ALTER SYSTEM SET archive_mode = 'on'")
        await conn.execute(f"ALTER SYSTEM SET archive_command = '{command}'")
    finally:
        await conn.close()
    await asyncio.to_thread(postgres.stop)
    await asyncio.to_thread(postgres.resume)


async def complete_a_segment(postgres: Postgres) -> None:
    """Writes some WAL and closes its segment, which hands it to the archiver."""
    conn = await asyncpg.connect(postgres.url())
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS wal_filler (n int); INSERT INTO wal_filler VALUES (1)")
        await conn.fetchval("SELECT pg_switch_wal()")
    finally:
        await conn.close()


async def scrape(postgres: Postgres, role: str = READER) -> dict[str, float]:
    """What the exporter serves after one probe, as {sample name: value}."""
    collector = SwarmCollector()
    up, collector.wal = await probe_postgres(postgres.url(role), 5.0)
    collector.postgres_up = 1.0 if up else 0.0
    return {s.name: s.value for family in collector.collect() for s in family.samples}


async def scrape_until(postgres: Postgres, name: str, seconds: float = 30.0) -> dict[str, float]:
    """Scrapes until `name` is above 0 (the archiver works in the background)."""
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        got = await scrape(postgres)
        if got.get(name, 0) > 0 or asyncio.get_running_loop().time() > deadline:
            return got
        await asyncio.sleep(0.2)


async def test_archiving_off_is_exported_as_off(server: Postgres) -> None:
    got = await scrape(server)
    assert got["pulsestack_postgres_up"] == 1.0
    assert got["pulsestack_postgres_wal_archiving_enabled"] == 0.0
    assert got["pulsestack_postgres_wal_archived_total"] == 0.0
    assert got["pulsestack_postgres_wal_archive_failures_total"] == 0.0
    assert got["pulsestack_postgres_wal_archive_ready_files"] == 0.0
    # Never archived, never failed: no age at all rather than a made-up one.
    assert "pulsestack_postgres_wal_last_archived_age_seconds" not in got
    assert "pulsestack_postgres_wal_last_archive_failure_age_seconds" not in got
    # pg_wal holds at least the current 16 MiB segment; max_wal_size is production's 8GB.
    assert got["pulsestack_postgres_wal_bytes"] >= 16 * 2**20
    assert got["pulsestack_postgres_wal_files"] >= 1
    assert got["pulsestack_postgres_wal_max_bytes"] == 8 * 2**30


async def test_a_role_without_the_grants_loses_only_the_wal_series(server: Postgres) -> None:
    conn = await asyncpg.connect(server.url())
    try:
        await conn.execute("CREATE ROLE ungranted LOGIN")
    finally:
        await conn.close()
    got = await scrape(server, "ungranted")
    assert got == {"pulsestack_postgres_up": 1.0}


async def test_a_failing_archive_command_is_counted(server: Postgres) -> None:
    await archive_with(server, "false")
    await complete_a_segment(server)
    got = await scrape_until(server, "pulsestack_postgres_wal_archive_failures_total")
    assert got["pulsestack_postgres_wal_archiving_enabled"] == 1.0
    assert got["pulsestack_postgres_wal_archive_failures_total"] >= 1
    assert got["pulsestack_postgres_wal_archived_total"] == 0.0
    assert "pulsestack_postgres_wal_last_archived_age_seconds" not in got
    assert 0 <= got["pulsestack_postgres_wal_last_archive_failure_age_seconds"] < 30
    # The segment stays in pg_wal, waiting: what WalArchiveStale and PgWalGrowing watch.
    assert got["pulsestack_postgres_wal_archive_ready_files"] >= 1


async def test_a_succeeding_archive_command_is_counted(server: Postgres) -> None:
    await archive_with(server, "mkdir -p ../wal-archive && cp %p ../wal-archive/%f")
    await complete_a_segment(server)
    got = await scrape_until(server, "pulsestack_postgres_wal_archived_total")
    assert got["pulsestack_postgres_wal_archiving_enabled"] == 1.0
    assert got["pulsestack_postgres_wal_archived_total"] >= 1
    assert got["pulsestack_postgres_wal_archive_failures_total"] == 0.0
    assert 0 <= got["pulsestack_postgres_wal_last_archived_age_seconds"] < 30
    assert "pulsestack_postgres_wal_last_archive_failure_age_seconds" not in got
    assert got["pulsestack_postgres_wal_archive_ready_files"] == 0.0
    assert list((server.workdir / "wal-archive").iterdir())
