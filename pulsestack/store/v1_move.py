"""The v1 -> v2 data move: every `raw_messages` row becomes a `readings` row, then `raw_messages` goes.

Run by `migrate` after the SQL migrations (docs/storage-model.md, "Upgrading a v1 database"). Not one
transaction: each batch is its own, and *moves* its rows (deletes them from `raw_messages` and inserts them into
`readings` in the same statement), so at every commit each reading is in exactly one of the two tables. A kill at
any point loses at most the open batch's work, which rolls back; running again continues with what is left.
`ON CONFLICT DO NOTHING` makes a row already in `readings` (same device, device time and seq) a no-op, so a rerun
can never double a reading. Only inserts reach `readings` (no dead rows there); the deleted `raw_messages` rows
go with their partition, dropped as soon as it is empty.

A `raw_messages` row whose (protocol, device_id) has no `devices` row has no integer key to move to: the move
refuses before touching anything and names those devices (register them again, or delete their rows on
purpose).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg

from pulsestack.config import env_int
from pulsestack.logs import get_logger
from pulsestack.store.maintenance import _partitions

log = get_logger(__name__)
BATCH = 10_000  # rows per transaction; PULSESTACK_V1_MOVE_BATCH overrides
PROGRESS_EVERY = 5.0  # seconds between progress lines
# Writers refused while the move runs: a v1 raw stage would add rows behind the move, and a v2 store stage
# would store (and derive from) again a reading still waiting in raw_messages. Both roll their batch back and
# redeliver; the grant on `readings` comes back when raw_messages is gone.
_WRITER = "pulsestack_raw"

_ORPHANS = """
SELECT r.protocol, r.device_id, count(*) AS rows FROM raw_messages r
WHERE NOT EXISTS (SELECT FROM devices d WHERE d.protocol = r.protocol AND d.device_id = r.device_id)
GROUP BY 1, 2 ORDER BY 1, 2
"""
# One batch of one partition, in its unique key's order after the previous batch's last key. The last key and
# the counts come back from the same statement; a moved row without a device fails the batch (see `_batch`).
_MOVE = """
WITH batch AS (
    SELECT ctid, protocol, device_id, seq, device_time FROM {partition} {after}
    ORDER BY protocol, device_id, seq, device_time LIMIT $1
), moved AS (
    DELETE FROM {partition} r USING batch b WHERE r.ctid = b.ctid RETURNING r.*
), keyed AS (
    SELECT d.id AS device, m.* FROM moved m JOIN devices d ON d.protocol = m.protocol AND d.device_id = m.device_id
), stored AS (
    INSERT INTO readings (device, bucket_seconds, device_time, seq, meter_index, received_at, counts, payload, meta)
    SELECT device, bucket_seconds, device_time, seq, meter_index, received_at, counts, payload, meta FROM keyed
    ON CONFLICT DO NOTHING RETURNING 1
)
SELECT last.*, (SELECT count(*) FROM moved) AS moved, (SELECT count(*) FROM keyed) AS keyed,
       (SELECT count(*) FROM stored) AS stored
FROM (SELECT protocol, device_id, seq, device_time FROM batch
      ORDER BY protocol DESC, device_id DESC, seq DESC, device_time DESC LIMIT 1) last
"""
_AFTER = "WHERE (protocol, device_id, seq, device_time) > ($2::text, $3::text, $4::bigint, $5::timestamptz)"


class OrphanReadings(LookupError):
    """raw_messages holds readings of devices the registry no longer has (the CLI exits "not found")."""

    def __init__(self, devices: list[tuple[str, str, int]], moved: int = 0) -> None:
        self.devices = devices
        named = ", ".join(f"{p}:{d} ({n} readings)" for p, d, n in devices[:20])
        more = f" and {len(devices) - 20} more" if len(devices) > 20 else ""
        done = f"{moved} readings were moved, the others wait" if moved else "Nothing was moved"
        super().__init__(
            f"raw_messages holds readings of {len(devices)} devices that are not registered: {named}{more}. "
            f"{done}. Register them again (`pulsestack devices add`) to keep their readings, or delete their "
            "raw_messages rows if they are to go, then migrate again.")


async def _orphans(conn: asyncpg.Connection) -> list[tuple[str, str, int]]:
    return [(r["protocol"], r["device_id"], r["rows"]) for r in await conn.fetch(_ORPHANS)]


@dataclass(slots=True)
class MoveReport:
    moved: int = 0  # rows taken out of raw_messages
    stored: int = 0  # rows inserted into readings; moved - stored were there already
    partitions: list[str] = field(default_factory=list)  # raw_messages partitions emptied and dropped
    seconds: float = 0.0


async def _move_partition(conn: asyncpg.Connection, partition: str, batch: int, report: MoveReport,
                          progress: Callable[[MoveReport], None]) -> None:
    first = _MOVE.format(partition=f'"{partition}"', after="")
    following = _MOVE.format(partition=f'"{partition}"', after=_AFTER)
    last: tuple[str, str, int, dt.datetime] | None = None
    while True:
        try:
            async with conn.transaction():
                row = await (conn.fetchrow(first, batch) if last is None else conn.fetchrow(following, batch, *last))
                if row is None:
                    return
                if row["keyed"] != row["moved"]:
                    # A device removed since the check: its rows would vanish with this batch, so it rolls back.
                    raise OrphanReadings([])
        except OrphanReadings:
            raise OrphanReadings(await _orphans(conn), report.moved) from None
        last = (row["protocol"], row["device_id"], row["seq"], row["device_time"])
        report.moved += row["moved"]
        report.stored += row["stored"]
        progress(report)


async def _drop_if_empty(conn: asyncpg.Connection, table: str, then: str = "") -> bool:
    """Drops `table` if it holds no row, under a lock that keeps any writer out between the check and the drop;
    `then` runs in the same transaction."""
    async with conn.transaction():
        await conn.execute(f'LOCK TABLE "{table}" IN ACCESS EXCLUSIVE MODE')
        if await conn.fetchval(f'SELECT EXISTS (SELECT FROM "{table}")'):
            return False
        await conn.execute(f'DROP TABLE "{table}"')
        if then:
            await conn.execute(then)
        return True


async def move_v1_readings(conn: asyncpg.Connection, batch: int | None = None) -> MoveReport | None:
    """Moves what raw_messages holds into readings, `batch` rows a transaction, and drops raw_messages; None if
    there is no raw_messages (a v2 database, or a move that finished). Raises OrphanReadings if rows of
    unregistered devices are among them: before moving anything, or at the batch that meets a device removed
    since (the batches before it stay moved)."""
    if await conn.fetchval("SELECT to_regclass('raw_messages')") is None:
        return None
    batch = batch or env_int("PULSESTACK_V1_MOVE_BATCH", BATCH)
    orphans = await _orphans(conn)
    if orphans:
        raise OrphanReadings(orphans)
    await conn.execute(f"REVOKE INSERT ON raw_messages, readings FROM {_WRITER}")
    report = MoveReport()
    started = reported = time.monotonic()

    def progress(report: MoveReport) -> None:
        nonlocal reported
        now = time.monotonic()
        if now - reported >= PROGRESS_EVERY:
            reported = now
            log.info("moving v1 readings", moved=report.moved, per_second=round(report.moved / (now - started)))

    while True:
        monthly = await _partitions(conn, "raw_messages")
        for _, month in monthly:
            # Into readings' partition of the same month, so nothing waits in readings_default to be moved again.
            await conn.execute("SELECT pulsestack_ensure_partition('readings', 'device_time', $1)", month)
        for name in [name for name, _ in monthly] + ["raw_messages_default"]:
            await _move_partition(conn, name, batch, report, progress)
            if name != "raw_messages_default" and await _drop_if_empty(conn, name):
                report.partitions.append(name)
        # Its default partition and id sequence go with it, and the writer's grant comes back in the same
        # transaction (a kill between the two would leave the store stage refused for good). Rows that a writer
        # added meanwhile: another round.
        if await _drop_if_empty(conn, "raw_messages", then=f"GRANT INSERT ON readings TO {_WRITER}"):
            break
    report.seconds = time.monotonic() - started
    log.info("v1 readings moved, raw_messages dropped", moved=report.moved, already_there=report.moved - report.stored,
             seconds=round(report.seconds, 1), per_second=round(report.moved / report.seconds) if report.seconds else 0)
    return report
