"""The raw stage's write: each reading once in raw_messages, whatever the redeliveries."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
import orjson

from pulsestack.store.timeconv import ts, ts_float
from pulsestack.wire.reading import Reading

_COLUMNS = (
    "ord", "protocol", "device_id", "seq", "device_time", "period_end", "bucket_seconds", "counts",
    "meter_index", "battery_mv", "flags", "received_at", "trace_id", "payload", "meta",
)
_INSERT = """
WITH ins AS (
    INSERT INTO raw_messages (protocol, device_id, seq, device_time, period_end, bucket_seconds, counts,
                              meter_index, battery_mv, flags, received_at, trace_id, payload, meta)
    SELECT protocol, device_id, seq, device_time, period_end, bucket_seconds, counts,
           meter_index, battery_mv, flags, received_at, trace_id, payload, meta
    FROM stage_raw ORDER BY ord
    ON CONFLICT (protocol, device_id, seq, device_time) DO NOTHING
    RETURNING id, protocol, device_id, seq, device_time
)
SELECT s.ord, i.id AS inserted_id, r.id AS existing_id
FROM stage_raw s
LEFT JOIN ins i USING (protocol, device_id, seq, device_time)
LEFT JOIN raw_messages r
       ON i.id IS NULL AND r.protocol = s.protocol AND r.device_id = s.device_id
      AND r.seq = s.seq AND r.device_time = s.device_time
"""
# A row a concurrent replica committed during our statement is invisible to its
# snapshot; a fresh statement sees it.
_LOOKUP = """
SELECT id FROM raw_messages WHERE protocol = $1 AND device_id = $2 AND seq = $3 AND device_time = $4
"""


@dataclass(frozen=True, slots=True)
class RawRow:
    raw_id: int
    inserted: bool  # False: the reading was already stored (a duplicate)


def _record(ord_: int, r: Reading) -> tuple[object, ...]:
    return (
        ord_, r.protocol, r.device, r.seq, ts(r.device_time), ts(r.period_end), r.bucket_seconds, r.counts,
        r.index, r.battery_mv, r.flags, ts_float(r.received_at), r.trace_id, r.payload,
        orjson.dumps(r.meta).decode() if r.meta else None,
    )


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
    await conn.copy_records_to_table(
        "stage_raw", records=[_record(i, r) for i, r in enumerate(unique)], columns=_COLUMNS
    )
    rows: list[RawRow | None] = [None] * len(unique)
    for rec in await conn.fetch(_INSERT):
        if rec["inserted_id"] is not None:
            rows[rec["ord"]] = RawRow(rec["inserted_id"], True)
        elif rec["existing_id"] is not None:
            rows[rec["ord"]] = RawRow(rec["existing_id"], False)
    for i, row in enumerate(rows):
        if row is None:
            r = unique[i]
            raw_id = await conn.fetchval(_LOOKUP, r.protocol, r.device, r.seq, ts(r.device_time))
            rows[i] = RawRow(raw_id, False)
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
