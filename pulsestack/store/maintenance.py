"""Maintenance on a schedule: partitions months ahead, and each time-series table's retention.

Run by the alerting service every `PULSESTACK_MAINTENANCE_INTERVAL` (one instance at a time: the others skip
a run whose lock is held) and by `pulsestack maintain`. Partitioned tables lose whole months (detach, drop);
the others lose rows in batches, each its own short transaction, so a first run over years of rows never
holds one long transaction or lock. Retention per table, in months (0 keeps everything), is documented in
docs/durability.md.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field, fields

import asyncpg

from pulsestack.config import env_int
from pulsestack.logs import get_logger

log = get_logger(__name__)
_LOCK = 0x6D61696E74  # "maint": one maintenance run at a time, whichever replica starts it
PARTITIONED = (("readings", "device_time"),)
# Tables trimmed row by row, and the time that decides a row's age. An open alert is never old.
TRIMMED = (("gaps", "from_period_end"), ("meter_events", "at"), ("gap_hourly", "hour"),
           ("consumption_daily", "day"), ("alerts", "resolved_at"))
BATCH = 10_000
MONTHS_BACK = 2  # readings may be 30 days old: last month's partition must exist
MONTHS_AHEAD = 3  # an alert fires below 2: a quarter of a year to notice a stopped job


# A setting's v1 name still counts when the new one is unset: a deployment that kept readings longer (or
# forever, 0) must not start dropping them at the upgrade's first maintenance run.
_FORMERLY = {"readings": "PULSESTACK_RETENTION_RAW_MESSAGES_MONTHS",
             "gap_hourly": "PULSESTACK_RETENTION_CONSUMPTION_HOURLY_MONTHS"}


@dataclass(frozen=True, slots=True)
class Retention:
    """Months each table keeps; 0 keeps everything."""

    readings: int = 24
    gaps: int = 24
    meter_events: int = 24
    gap_hourly: int = 24
    consumption_daily: int = 120
    alerts: int = 24

    @classmethod
    def from_env(cls) -> Retention:
        def months(table: str, default: int) -> int:
            if table in _FORMERLY:
                default = env_int(_FORMERLY[table], default)
            return env_int(f"PULSESTACK_RETENTION_{table.upper()}_MONTHS", default)

        return cls(**{f.name: months(f.name, f.default) for f in fields(cls)})  # type: ignore[arg-type]

    @classmethod
    def every_table(cls, months: int) -> Retention:
        return cls(**{f.name: months for f in fields(cls)})


@dataclass(slots=True)
class MaintenanceReport:
    ran: bool = True  # False: another instance held the lock
    dropped: list[str] = field(default_factory=list)
    deleted: dict[str, int] = field(default_factory=dict)
    months_ahead: dict[str, int] = field(default_factory=dict)
    default_rows: dict[str, int] = field(default_factory=dict)
    finished_at: float = 0.0


def month_start(day: dt.date, offset: int = 0) -> dt.date:
    index = day.year * 12 + day.month - 1 + offset
    return dt.date(index // 12, index % 12 + 1, 1)


def _months_between(a: dt.date, b: dt.date) -> int:
    return (b.year - a.year) * 12 + b.month - a.month


async def ensure_partitions(conn: asyncpg.Connection, months_ahead: int, today: dt.date,
                            retention: Retention | None = None) -> None:
    """Monthly partitions from MONTHS_BACK before `today`'s month (never a month `retention` drops) to
    `months_ahead` after it; creating one moves the rows its month had in the default partition."""
    for table, column in PARTITIONED:
        kept = getattr(retention, table) if retention else 0
        back = min(MONTHS_BACK, kept) if kept else MONTHS_BACK
        for offset in range(-back, months_ahead + 1):
            await conn.execute("SELECT pulsestack_ensure_partition($1::regclass, $2, $3)", table, column,
                               month_start(today, offset))


async def _partitions(conn: asyncpg.Connection, table: str) -> list[tuple[str, dt.date]]:
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = $1::regclass AND c.relname ~ '_y[0-9]{4}m[0-9]{2}$' ORDER BY 1", table,
    )
    return [(r["relname"], dt.date(int(r["relname"][-7:-3]), int(r["relname"][-2:]), 1)) for r in rows]


async def _drop_before(conn: asyncpg.Connection, table: str, cutoff: dt.date) -> list[str]:
    dropped = []
    for name, month in await _partitions(conn, table):
        if month < cutoff:
            await conn.execute("SELECT pulsestack_drop_partition($1::regclass, $2)", table, name)
            dropped.append(name)
    return dropped


async def _trim(conn: asyncpg.Connection, table: str, column: str, cutoff: dt.date) -> int:
    """Deletes rows older than `cutoff` in batches of BATCH rows, each batch its own transaction."""
    total = 0
    while True:
        # Identifiers come from TRIMMED, never from input.
        status = await conn.execute(
            f"DELETE FROM {table} WHERE ctid = ANY(ARRAY("
            f"SELECT ctid FROM {table} WHERE {column} < $1::timestamptz LIMIT {BATCH}))",
            dt.datetime(cutoff.year, cutoff.month, cutoff.day, tzinfo=dt.UTC),
        )
        deleted = int(status.rsplit(" ", 1)[1])
        total += deleted
        if deleted < BATCH:
            return total


async def maintain(conn: asyncpg.Connection, retention: Retention, months_ahead: int = MONTHS_AHEAD,
                   today: dt.date | None = None) -> MaintenanceReport:
    """One maintenance run, unless another instance is running one (report.ran is then False)."""
    today = today or dt.datetime.now(dt.UTC).date()
    if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", _LOCK):
        return MaintenanceReport(ran=False)
    try:
        report = MaintenanceReport()
        await ensure_partitions(conn, months_ahead, today, retention)
        for table, _ in PARTITIONED:
            months = getattr(retention, table)
            if months:
                report.dropped += await _drop_before(conn, table, month_start(today, -months))
            last = max((month for _, month in await _partitions(conn, table)), default=month_start(today))
            report.months_ahead[table] = _months_between(month_start(today), last)
            report.default_rows[table] = await conn.fetchval(f"SELECT count(*) FROM {table}_default")
        for table, column in TRIMMED:
            months = getattr(retention, table)
            if months:
                report.deleted[table] = await _trim(conn, table, column, month_start(today, -months))
        report.finished_at = time.time()
        return report
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK)
