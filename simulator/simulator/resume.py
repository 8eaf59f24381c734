"""A fleet that continues from what the store holds, so a second local run sends new readings instead of
the first run's again (which the raw stage would only count as duplicates)."""

from __future__ import annotations

import asyncpg

from simulator.fleet import Meter

# device_state holds each device's latest reading (by period end, device time, seq) once the raw stage
# has processed it: read it after the stages have drained.
_LAST = """
SELECT protocol, device_id, extract(epoch FROM last_period_end)::bigint AS period_end, last_seq, last_index
FROM device_state WHERE protocol = ANY($1::text[]) AND device_id = ANY($2::text[])
"""


async def resume_fleet(conn: asyncpg.Connection, meters: list[Meter]) -> int:
    """Moves each meter past its stored last reading; returns how many had one."""
    by_id = {(m.protocol, m.device): m for m in meters}
    rows = await conn.fetch(_LAST, sorted({m.protocol for m in meters}), [m.device for m in meters])
    resumed = 0
    for row in rows:
        meter = by_id.get((row["protocol"], row["device_id"]))
        if meter is not None:
            meter.resume(row["period_end"], row["last_seq"], row["last_index"])
            resumed += 1
    return resumed
