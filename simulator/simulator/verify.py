"""Delivery verification: what devices sent and were told is stored, against what PostgreSQL holds.

Per reading: its `readings` row is there exactly once; per bucket of a stored reading: its `pulses`
row holds the count sent; per device with two stored readings or more: the pulses plus the gap volume
between its first and last stored reading equal the index difference (mod 2^32).

The readings are copied into a temporary table (COPY) and checked with a few set-based queries, so
verifying a million readings takes seconds, not a query per reading or per device.
"""

from __future__ import annotations

import datetime as dt
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field

import asyncpg

from simulator.batch import ReadingBatch
from simulator.fleet import BUCKET_SECONDS, BUCKETS, SentReading

_TABLE = "pulsestack_verify"
_CREATE = f"""
CREATE TEMP TABLE {_TABLE} (
    ord int, protocol text, device_id text, seq bigint, device_time timestamptz, period_end timestamptz,
    meter_index bigint, counts int[], acked boolean
) ON COMMIT DROP
"""
_COLUMNS = ("ord", "protocol", "device_id", "seq", "device_time", "period_end", "meter_index", "counts", "acked")
_FOUND = f"""
CREATE TEMP TABLE pulsestack_verify_found ON COMMIT DROP AS
SELECT v.*, (SELECT count(*) FROM readings r JOIN devices d ON d.id = r.device
             WHERE d.protocol = v.protocol AND d.device_id = v.device_id AND r.seq = v.seq
               AND r.device_time = v.device_time AND r.device_hour = reading_hour(v.device_time)) AS n
FROM {_TABLE} v
"""
_SUMMARY = """
SELECT count(*) FILTER (WHERE n > 0) AS delivered,
       count(*) FILTER (WHERE n = 0 AND acked) AS lost,
       count(*) FILTER (WHERE n = 0 AND NOT acked) AS not_acked_missing,
       count(*) FILTER (WHERE n > 0 AND NOT acked) AS not_acked_stored,
       coalesce(sum(greatest(n - 1, 0)), 0) AS duplicated
FROM pulsestack_verify_found
"""
# The stored buckets are read per device sent, by a correlated subquery on buckets_between: PostgreSQL inlines
# it, and the device's filter (then a parameter) reaches the readings' primary key. A join of the `buckets` view
# computes every bucket of the database instead, once per chunk, which made a soak's 10 M readings take longer
# to verify than to send; a lateral join does the same, its filter being a join clause the planner does not push
# into the view's DISTINCT ON.
_BUCKET_ROW = "pulsestack_verify_bucket"
_BUCKETS = f"""
WITH sent AS (
    SELECT v.protocol, v.device_id, c.count,
           v.period_end - make_interval(secs => (cardinality(v.counts) - c.k + 1) * {BUCKET_SECONDS}) AS bucket_start
    FROM pulsestack_verify_found v
    CROSS JOIN LATERAL unnest(v.counts) WITH ORDINALITY AS c(count, k)
    WHERE v.n > 0
), spans AS (
    SELECT protocol, device_id, min(bucket_start) AS lo, max(bucket_start) AS hi FROM sent GROUP BY protocol, device_id
), stored AS (
    SELECT s.protocol, s.device_id, u.bucket_start, u.count
    FROM spans s
    CROSS JOIN LATERAL unnest((
        SELECT array_agg((b.bucket_start, b.count)::{_BUCKET_ROW})
        FROM buckets_between(s.lo, s.hi + interval '{BUCKET_SECONDS} seconds') b
        WHERE b.protocol = s.protocol AND b.device_id = s.device_id AND b.bucket_seconds = {BUCKET_SECONDS}
    )) u
)
SELECT count(*) AS mismatches
FROM sent s
LEFT JOIN stored p USING (protocol, device_id, bucket_start)
WHERE p.count IS DISTINCT FROM s.count
"""
_TOTALS = """
WITH ends AS (
    SELECT protocol, device_id, min(period_end) AS first_end, max(period_end) AS last_end,
           (array_agg(meter_index ORDER BY period_end))[1] AS first_index,
           (array_agg(meter_index ORDER BY period_end DESC))[1] AS last_index
    FROM pulsestack_verify_found WHERE n > 0 GROUP BY protocol, device_id HAVING count(*) >= 2
), totals AS (
    SELECT e.*,
           (SELECT coalesce(sum(count), 0) FROM buckets p
             WHERE p.protocol = e.protocol AND p.device_id = e.device_id
               AND p.bucket_start >= e.first_end AND p.bucket_start < e.last_end)
         + (SELECT coalesce(sum(volume), 0) FROM gaps g
             WHERE g.protocol = e.protocol AND g.device_id = e.device_id
               AND g.from_period_end >= e.first_end AND g.from_period_end < e.last_end) AS stored,
           ((e.last_index - e.first_index) % 4294967296 + 4294967296) % 4294967296 AS expected
    FROM ends e
)
SELECT protocol, device_id, stored, expected FROM totals WHERE stored <> expected
ORDER BY protocol, device_id
"""
_LOST = """
SELECT protocol, device_id, seq, device_time FROM pulsestack_verify_found WHERE n = 0 AND acked
ORDER BY device_time, protocol, device_id LIMIT 20
"""


def _ts(seconds: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


@dataclass(slots=True)
class Delivery:
    expected: int = 0  # readings checked (sent, once each)
    delivered: int = 0  # of those, stored
    lost: int = 0  # acknowledged to the device, not stored: what must never happen
    duplicated: int = 0
    bucket_mismatches: int = 0
    total_mismatches: list[str] = field(default_factory=list)
    acked: int = 0
    not_acked_missing: int = 0  # never acknowledged (the device gave up) and not stored
    not_acked_stored: int = 0  # stored although the device never got the ack
    lost_readings: list[str] = field(default_factory=list)  # the first lost ones, named, for the investigation

    @property
    def exact(self) -> bool:
        return (
            self.lost == 0 and self.duplicated == 0 and self.bucket_mismatches == 0 and not self.total_mismatches
        )

    @property
    def complete(self) -> bool:
        """Every reading sent is stored once, with its buckets and totals."""
        return self.exact and self.delivered == self.expected

    def line(self) -> str:
        pct = 100.0 * self.delivered / self.expected if self.expected else 100.0
        text = (
            f"messages delivered {self.delivered:,} / {self.expected:,} ({pct:.2f} %), lost {self.lost},"
            f" duplicated {self.duplicated}, bucket mismatches {self.bucket_mismatches},"
            f" devices whose totals differ from their index {len(self.total_mismatches)}"
        )
        if self.acked != self.expected:
            text += f"; acked {self.acked:,}, never acked {self.expected - self.acked:,}" \
                    f" (of which stored {self.not_acked_stored:,})"
        return text

    def add(self, other: Delivery) -> Delivery:
        return Delivery(
            self.expected + other.expected, self.delivered + other.delivered, self.lost + other.lost,
            self.duplicated + other.duplicated, self.bucket_mismatches + other.bucket_mismatches,
            self.total_mismatches + other.total_mismatches, self.acked + other.acked,
            self.not_acked_missing + other.not_acked_missing, self.not_acked_stored + other.not_acked_stored,
            self.lost_readings + other.lost_readings,
        )


async def verify(conn: asyncpg.Connection, readings: list[SentReading], check_totals: bool = True) -> Delivery:
    """Readings the devices were told are stored (duplicates in the list count once)."""
    unique = list({(r.protocol, r.device, r.seq, r.device_time): r for r in readings}.values())
    records = [
        (i, r.protocol, r.device, r.seq, _ts(r.device_time), _ts(r.period_end), r.index, list(r.counts), True)
        for i, r in enumerate(unique)
    ]
    return await _verify_records(conn, records, check_totals)


async def verify_batch(
    conn: asyncpg.Connection, batch: ReadingBatch, acked: Sequence[int] | bytes | None = None,
    check_totals: bool = True, chunk: int = 250_000,
) -> Delivery:
    """Every reading of `batch` (sent once each); `acked[i]` non-zero if reading i was acknowledged
    (None: all were). Large batches are checked in chunks of whole devices' worth of rows."""
    n = len(batch)
    protocol = batch.protocol
    total = Delivery()
    # Chunks split by device number so that the totals of a device are checked in one chunk.
    order = sorted(range(n), key=batch.number.__getitem__) if n > chunk else range(n)
    start = 0
    while start < n:
        stop = min(n, start + chunk)
        while stop < n and batch.number[order[stop]] == batch.number[order[stop - 1]]:
            stop += 1
        records = []
        for ord_, i in enumerate(order[start:stop]):
            records.append((
                ord_, protocol, batch.device(i), batch.seq[i], _ts(batch.device_time[i]),
                _ts(batch.period_end[i]), batch.index[i], list(batch.counts[i * BUCKETS:(i + 1) * BUCKETS]),
                True if acked is None else bool(acked[i]),
            ))
        total = total.add(await _verify_records(conn, records, check_totals))
        start = stop
    return total


async def _verify_records(
    conn: asyncpg.Connection, records: Sequence[tuple[object, ...]], check_totals: bool
) -> Delivery:
    result = Delivery(expected=len(records), acked=sum(1 for r in records if r[-1]))
    if not records:
        return result
    async with conn.transaction():
        await conn.execute(_CREATE)
        await conn.execute(f"CREATE TEMP TABLE {_BUCKET_ROW} (bucket_start timestamptz, count int) ON COMMIT DROP")
        await conn.copy_records_to_table(_TABLE, records=records, columns=_COLUMNS)
        await conn.execute(f"ANALYZE {_TABLE}")
        await conn.execute(_FOUND)
        row = await conn.fetchrow(_SUMMARY)
        result.delivered = row["delivered"]
        result.lost = row["lost"]
        if result.lost:
            result.lost_readings = [f"{r['protocol']}:{r['device_id']} seq {r['seq']} at {r['device_time'].isoformat()}"
                                    for r in await conn.fetch(_LOST)]
        result.not_acked_missing = row["not_acked_missing"]
        result.not_acked_stored = row["not_acked_stored"]
        result.duplicated = int(row["duplicated"])
        result.bucket_mismatches = await conn.fetchval(_BUCKETS)
        if check_totals:
            for r in await conn.fetch(_TOTALS):
                result.total_mismatches.append(
                    f"{r['protocol']}:{r['device_id']} stored {r['stored']}, index says {r['expected']}"
                )
    return result


def acked_flags(status: bytes) -> array[int]:
    """A load generator's status bytes as 0/1 flags."""
    return array("B", (1 if s else 0 for s in status))
