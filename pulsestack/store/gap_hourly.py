"""Migration 010's data step: the gap part of hourly consumption, recomputed from `gaps`.

A v1 or v2-step-1 database stored each hour's whole consumption in `consumption_hourly` (renamed
`consumption_hourly_v1` by the migration). The buckets' part is now computed from readings, so only the gap
part is kept, and it is recomputed from the gap rows with the rule the write path spreads them by
(`rollups.spread`): no second copy of the rule. Gap rows are few (one per reading that followed a missed one),
so the fill is one transaction, read in keyset batches: a kill rolls it back whole and the next `migrate`
starts it again; the old table is dropped in the same transaction, which is what marks the step done.
"""

from __future__ import annotations

from collections import defaultdict

import asyncpg

from pulsestack.logs import get_logger
from pulsestack.store.rollups import spread
from pulsestack.store.timeconv import epoch, ts

log = get_logger(__name__)
HOUR = 3600
BATCH = 10_000  # gap rows per read: bounds memory only, the fill is one transaction
_GAPS = """
SELECT protocol, device_id, from_period_end, from_seq, interval_start, interval_end, volume FROM gaps
WHERE (protocol, device_id, from_period_end, from_seq) > ($1, $2, $3, $4)
ORDER BY protocol, device_id, from_period_end, from_seq LIMIT $5
"""
_ADD = """
INSERT INTO gap_hourly AS g (protocol, device_id, hour, pulses)
SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::bigint[])
ON CONFLICT (protocol, device_id, hour) DO UPDATE SET pulses = g.pulses + EXCLUDED.pulses
"""


async def fill_gap_hourly(conn: asyncpg.Connection) -> None:
    """Fills gap_hourly once, if consumption_hourly_v1 is still there."""
    if await conn.fetchval("SELECT to_regclass('consumption_hourly_v1')") is None:
        return
    after: tuple[object, ...] = ("", "", ts(0), -(2**63))
    gaps = 0
    async with conn.transaction():
        await conn.execute("DELETE FROM gap_hourly")
        while rows := await conn.fetch(_GAPS, *after, BATCH):
            hours: dict[tuple[str, str, int], int] = defaultdict(int)
            for g in rows:
                for slot, share in spread(epoch(g["interval_start"]), epoch(g["interval_end"]), g["volume"]):
                    hours[(g["protocol"], g["device_id"], slot - slot % HOUR)] += share
            keys = [k for k, n in hours.items() if n]
            await conn.execute(_ADD, [k[0] for k in keys], [k[1] for k in keys], [ts(k[2]) for k in keys],
                               [hours[k] for k in keys])
            last = rows[-1]
            after = (last["protocol"], last["device_id"], last["from_period_end"], last["from_seq"])
            gaps += len(rows)
        await conn.execute("DROP TABLE consumption_hourly_v1")
    log.info("hourly consumption kept as its gap part", gaps=gaps)
