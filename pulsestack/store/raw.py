"""The raw stage's write: each reading once in raw_messages, whatever the redeliveries."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
import orjson

from pulsestack.store.timeconv import ts, ts_float
from pulsestack.wire.reading import Reading

# Arrays in, one statement: no staging table to truncate at every commit. Counts travel as array
# literals, since a 2-D parameter would not unnest row by row.
_INSERT = """
INSERT INTO raw_messages (protocol, device_id, seq, device_time, period_end, bucket_seconds, counts,
                          meter_index, battery_mv, flags, received_at, trace_id, payload, meta)
SELECT p, d, s, dt, pe, bs, c::int[], i, b, f, r, t, pl, m
FROM unnest($1::text[], $2::text[], $3::bigint[], $4::timestamptz[], $5::timestamptz[], $6::int[], $7::text[],
            $8::bigint[], $9::int[], $10::int[], $11::timestamptz[], $12::text[], $13::bytea[], $14::jsonb[])
    AS u(p, d, s, dt, pe, bs, c, i, b, f, r, t, pl, m)
ON CONFLICT (protocol, device_id, seq, device_time) DO NOTHING
RETURNING id, protocol, device_id, seq, device_time
"""
# Only for the readings already stored (duplicates), which are few; a fresh statement also sees a row a
# concurrent replica committed while our INSERT waited on it.
_EXISTING = """
SELECT r.id, r.protocol, r.device_id, r.seq, r.device_time
FROM unnest($1::text[], $2::text[], $3::bigint[], $4::timestamptz[]) AS k(p, d, s, t)
CROSS JOIN LATERAL (
    SELECT * FROM raw_messages r WHERE r.protocol = k.p AND r.device_id = k.d AND r.seq = k.s AND r.device_time = k.t
) r
"""


@dataclass(frozen=True, slots=True)
class RawRow:
    raw_id: int
    inserted: bool  # False: the reading was already stored (a duplicate)


async def insert_readings(conn: asyncpg.Connection, readings: list[Reading]) -> list[RawRow]:
    """Stores readings idempotently, in the caller's transaction; one RawRow per input, in order.

    Repeats within the batch are written once: the first occurrence decides.
    """
    first: dict[str, int] = {}
    unique: list[Reading] = []
    for r in readings:
        if r.msg_id not in first:
            first[r.msg_id] = len(unique)
            unique.append(r)
    u = unique
    inserted = await conn.fetch(
        _INSERT, [r.protocol for r in u], [r.device for r in u], [r.seq for r in u], [ts(r.device_time) for r in u],
        [ts(r.period_end) for r in u], [r.bucket_seconds for r in u],
        ["{" + ",".join(map(str, r.counts)) + "}" for r in u], [r.index for r in u], [r.battery_mv for r in u],
        [r.flags for r in u], [ts_float(r.received_at) for r in u], [r.trace_id for r in u], [r.payload for r in u],
        [orjson.dumps(r.meta).decode() if r.meta else None for r in u],
    )
    rows: list[RawRow | None] = [None] * len(unique)

    def key(rec: asyncpg.Record) -> str:
        return f"{rec['protocol']}:{rec['device_id']}:{rec['seq']}:{int(rec['device_time'].timestamp())}"

    for rec in inserted:
        rows[first[key(rec)]] = RawRow(rec["id"], True)
    missing = [unique[i] for i, row in enumerate(rows) if row is None]
    if missing:
        for rec in await conn.fetch(
            _EXISTING, [r.protocol for r in missing], [r.device for r in missing], [r.seq for r in missing],
            [ts(r.device_time) for r in missing],
        ):
            rows[first[key(rec)]] = RawRow(rec["id"], False)
    if any(row is None for row in rows):
        raise RuntimeError("a reading was neither inserted nor found")  # cannot happen under the unique key
    result: list[RawRow] = []
    seen: set[int] = set()
    for r in readings:
        index = first[r.msg_id]
        row = rows[index]
        assert row is not None
        # Only the first occurrence of a repeated reading counts as inserted.
        result.append(row if index not in seen else RawRow(row.raw_id, False))
        seen.add(index)
    return result
