"""What PostgreSQL says about its WAL and the archiving of it, read as the read-only role."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

# Ages come from the server's clock, like the times they are measured from: clock_timestamp(), not now(),
# since now() is the statement's start and the archiver may finish a segment between that and the read of
# pg_stat_archiver (an age of -1.4 ms failed CI once). A segment is waiting for the archiver while
# pg_wal/archive_status holds its `.ready` file.
WAL_QUERY = """
SELECT current_setting('archive_mode') <> 'off' AS archiving,
       a.archived_count AS archived,
       a.failed_count AS failed,
       extract(epoch FROM clock_timestamp() - a.last_archived_time)::float8 AS since_archived,
       extract(epoch FROM clock_timestamp() - a.last_failed_time)::float8 AS since_failed,
       w.bytes,
       w.files,
       (SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready') AS ready,
       pg_size_bytes(current_setting('max_wal_size')) AS max_bytes
FROM pg_stat_archiver AS a,
     (SELECT coalesce(sum(size), 0)::int8 AS bytes, count(*) AS files FROM pg_ls_waldir()) AS w
"""


@dataclass(frozen=True, slots=True)
class WalStatus:
    archiving: bool  # archive_mode is on (or always)
    archived: int  # segments archived since the statistics were reset
    failed: int  # failed attempts to archive one
    since_archived: float | None  # seconds since the last success; None: never
    since_failed: float | None  # seconds since the last failure; None: never
    bytes: int  # size of pg_wal
    files: int  # files in pg_wal
    ready: int  # completed segments waiting for the archiver
    max_bytes: int  # max_wal_size: what checkpoints keep pg_wal under while nothing holds WAL back


async def wal_status(conn: asyncpg.Connection) -> WalStatus:
    row = await conn.fetchrow(WAL_QUERY)
    assert row is not None  # one row: pg_stat_archiver always has one
    return WalStatus(**dict(row))
