"""The raw stage's write: each reading once in `readings`, whatever the redeliveries."""

from __future__ import annotations

import asyncpg
import orjson

from pulsestack.store.timeconv import ts, ts_float
from pulsestack.store.writes import Refused
from pulsestack.wire.reading import Reading

# Arrays in, one statement: no staging table to truncate at every commit. Counts travel as array literals,
# since a 2-D parameter would not unnest row by row. A reading's device id is looked up by joining devices in
# the statement: one probe of its primary key per reading, on pages every batch keeps hot, and always
# current, where a per-process cache would need invalidating when a device is removed and registered again
# (a new id). A reading is inserted or already stored (a redelivery) unless its device has no row.
_INSERT = """
WITH batch AS (
    SELECT u.n, dev.id AS device, u.dt, u.s, u.bs, u.c, u.i, u.r, u.pl, u.m
    FROM unnest($1::text[], $2::text[], $3::bigint[], $4::timestamptz[], $5::int[], $6::text[], $7::bigint[],
                $8::timestamptz[], $9::bytea[], $10::jsonb[]) WITH ORDINALITY AS u(p, d, s, dt, bs, c, i, r, pl, m, n)
    LEFT JOIN devices dev ON dev.protocol = u.p AND dev.device_id = u.d
), stored AS (
    INSERT INTO readings (device, bucket_seconds, device_time, seq, meter_index, received_at, counts, payload, meta)
    SELECT device, bs, dt, s, i, r, c::int[], pl, m FROM batch WHERE device IS NOT NULL
    -- Not ON CONFLICT: its speculative insertion writes a second WAL record per reading. The caller holds the
    -- devices' locks, which every writer of readings takes first, so nothing can store the same key meanwhile.
    AND NOT EXISTS (SELECT FROM readings r WHERE r.device_hour = reading_hour(batch.dt)
                    AND r.device = batch.device AND r.device_time = batch.dt AND r.seq = batch.s)
    RETURNING device, device_time, seq
)
SELECT b.n, b.device IS NOT NULL AS known, s.device IS NOT NULL AS inserted
FROM batch b LEFT JOIN stored s ON (s.device, s.device_time, s.seq) = (b.device, b.dt, b.s)
ORDER BY b.n
"""


class UnknownDevice(Refused):
    """A reading of a device with no registry row: ingest accepted it, then the device was deleted."""


async def insert_readings(conn: asyncpg.Connection, readings: list[Reading]) -> list[bool]:
    """Stores readings idempotently, in the caller's transaction, which holds their devices' locks
    (pulses.lock_devices); per input, in order, whether this call
    stored it (False: it was already stored). Repeats within the batch are written once: the first
    occurrence counts as inserted. Raises UnknownDevice, storing nothing, if a reading's device has no
    devices row: the caller quarantines that reading rather than drop it."""
    first: dict[str, int] = {}
    u: list[Reading] = []
    for r in readings:
        if r.msg_id not in first:
            first[r.msg_id] = len(u)
            u.append(r)
    rows = await conn.fetch(
        _INSERT, [r.protocol for r in u], [r.device for r in u], [r.seq for r in u], [ts(r.device_time) for r in u],
        [r.bucket_seconds for r in u], ["{" + ",".join(map(str, r.counts)) + "}" for r in u], [r.index for r in u],
        [ts_float(r.received_at) for r in u], [r.payload for r in u],
        [orjson.dumps(r.meta).decode() if r.meta else None for r in u],
    )
    unknown = sorted({f"{u[row['n'] - 1].protocol}:{u[row['n'] - 1].device}" for row in rows if not row["known"]})
    if unknown:
        raise UnknownDevice(f"no registered device {', '.join(unknown)} (removed after ingest accepted the reading?)")
    inserted = [row["inserted"] for row in rows]
    seen: set[int] = set()
    result = []
    for r in readings:
        index = first[r.msg_id]
        result.append(inserted[index] and index not in seen)
        seen.add(index)
    return result
