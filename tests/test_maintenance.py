"""Maintenance in compressed time: four months of device time in a few seconds, on a database of its own.

Readings are written by the raw stage's own write path (readings, gaps, rollups) while
maintenance runs beside them as the alerting service's role, its clock moved a month at a time. After each
month no row sits in a default partition; at the end the months past retention are gone from every table and
nothing retention keeps is missing, though partitions were dropped while writers were busy.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import os
from collections.abc import AsyncIterator

import asyncpg
import pytest

from pulsestack.store.maintenance import Retention, maintain, month_start
from pulsestack.store.migrate import migrate
from pulsestack.store.readings import store_readings
from pulsestack.wire.reading import Reading
from pulsestack_cli.local import LocalStack, with_user
from tests.helpers import device_rows
from tests.helpers import own_database as own_database_of

MONTHS = 4
KEEP = 1  # months of retention, every table: the first two simulated months must go
DEVICES = 20


@pytest.fixture
async def own_database(stack: LocalStack) -> AsyncIterator[str]:
    async with own_database_of(stack, f"maintenance_{os.getpid()}") as url:
        conn = await asyncpg.connect(url)
        try:
            await migrate(conn)
        finally:
            await conn.close()
        yield url


def readings_of(month: dt.date, seqs: itertools.count[int]) -> list[Reading]:
    """A reading per device and day of `month`: an hour of buckets (10 pulses) and an index that agrees, so
    no gap volume; each with a new seq."""
    start = int(dt.datetime(month.year, month.month, 1, tzinfo=dt.UTC).timestamp())
    days = (month_start(month, 1) - month).days
    out = []
    for day in range(days):
        end = start + day * 86_400 + 3600
        for device in range(DEVICES):
            seq = next(seqs)
            index = 10 * ((seq - 1) // DEVICES + 1)  # the device's own count of readings, times 10
            out.append(Reading("nbiot", str(900_000 + device), seq, end, end, 900, [1, 2, 3, 4], index, 3600, 0,
                               float(end), f"t{seq}", b"payload"))
    return out


async def write(conn: asyncpg.Connection, readings: list[Reading]) -> None:
    """What the raw stage writes, in batches of a hundred."""
    await device_rows(conn, readings)
    for i in range(0, len(readings), 100):
        async with conn.transaction():
            await store_readings(conn, readings[i : i + 100])


async def maintain_until_done(url: str, today: dt.date) -> None:
    """The service's role, retried as the service retries (a lock timeout while writers are busy)."""
    conn = await asyncpg.connect(with_user(url, "pulsestack_alerting"))
    try:
        for _ in range(20):
            try:
                report = await maintain(conn, Retention.every_table(KEEP), months_ahead=3, today=today)
            except asyncpg.LockNotAvailableError:
                await asyncio.sleep(0.2)
                continue
            assert report.ran
            assert report.default_rows == {"readings": 0}, report
            assert min(report.months_ahead.values()) == 3
            return
        raise AssertionError("maintenance never got its locks")
    finally:
        await conn.close()


async def count(conn: asyncpg.Connection, sql: str, since: dt.date) -> int:
    return int(await conn.fetchval(sql, dt.datetime(since.year, since.month, 1, tzinfo=dt.UTC)))


async def test_months_go_by_under_traffic_and_retention_keeps_what_it_should(own_database: str) -> None:
    first = month_start(dt.datetime.now(dt.UTC).date(), 12)  # a year ahead: nothing else lives in these months
    seqs = itertools.count(1)
    writer = await asyncpg.connect(own_database)
    written: dict[dt.date, int] = {}
    try:
        await maintain_until_done(own_database, first)
        for k in range(MONTHS):
            month = month_start(first, k)
            readings = readings_of(month, seqs)
            written[month] = len(readings)
            # Traffic of this month, and the maintenance run of this month (which drops old partitions).
            await asyncio.gather(write(writer, readings), maintain_until_done(own_database, month))
        await maintain_until_done(own_database, month_start(first, MONTHS - 1))
        kept = month_start(first, MONTHS - 1 - KEEP)  # months before this are past retention
        assert await writer.fetchval("SELECT count(*) FROM readings_default") == 0
        assert await count(writer, "SELECT count(*) FROM readings WHERE device_time < $1", kept) == 0
        assert await count(writer, "SELECT count(*) FROM readings WHERE device_time >= $1", kept) == sum(
            n for month, n in written.items() if month >= kept)
        for sql in ("SELECT count(*) FROM buckets WHERE device_time < $1",
                    "SELECT count(*) FROM gap_hourly WHERE hour < $1",
                    "SELECT count(*) FROM consumption_daily WHERE day < $1::timestamptz",
                    "SELECT count(*) FROM gaps WHERE from_period_end < $1"):
            assert await count(writer, sql, kept) == 0, sql
        # What retention keeps: every bucket of the kept months' readings, and their hourly totals.
        assert await count(writer, "SELECT count(*) FROM buckets WHERE device_time >= $1", kept) == 4 * sum(
            n for month, n in written.items() if month >= kept)
        assert await count(writer, "SELECT sum(pulses) FROM consumption_hourly WHERE hour >= $1", kept) == 10 * sum(
            n for month, n in written.items() if month >= kept)
        partitions = {r["relname"] for r in await writer.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'readings'::regclass")}
        assert f"readings_y{first.year}m{first.month:02d}" not in partitions
        assert f"readings_y{kept.year}m{kept.month:02d}" in partitions
    finally:
        await writer.close()


def test_the_v1_name_of_the_readings_retention_still_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    """A deployment that kept raw messages forever (0) must not start dropping readings at the upgrade."""
    monkeypatch.delenv("PULSESTACK_RETENTION_READINGS_MONTHS", raising=False)
    monkeypatch.setenv("PULSESTACK_RETENTION_RAW_MESSAGES_MONTHS", "0")
    assert Retention.from_env().readings == 0
    monkeypatch.setenv("PULSESTACK_RETENTION_READINGS_MONTHS", "36")
    assert Retention.from_env().readings == 36
    monkeypatch.delenv("PULSESTACK_RETENTION_RAW_MESSAGES_MONTHS")
    monkeypatch.delenv("PULSESTACK_RETENTION_READINGS_MONTHS")
    assert Retention.from_env().readings == Retention().readings == 24
