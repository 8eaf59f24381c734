"""Consumption rollups (the gap part per UTC hour, all of it per device-local day), kept by deltas in the
raw stage's transaction.

Every change to a bucket's winner or to `gaps` becomes a signed delta on the
15-minute slot it belongs to; slots then add into days in the device's time
zone (every real zone's offset is a multiple of 15 minutes), and the gap
deltas also into `gap_hourly` (an hour's buckets are summed from readings when
asked, by the `consumption_hourly` view). Because deltas are computed against
what the transaction found under its device locks, the rollups stay equal to a
recomputation from buckets and gaps, whatever the order, duplication or
lateness of readings — which is what `reprocess` checks.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass

import asyncpg

from pulsestack.store.timeconv import ts

SLOT = 900
# A day with a row is updated (one WAL record, HOT); only a new day is inserted: the upsert's path through an
# existing row locks it first, a second WAL record per reading. Each CTE sees the statement's snapshot, so the
# insert skips the days the update found; the conflict clause stays for a day another writer inserted since.
_APPLY = """
WITH delta AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::bigint[], $5::bigint[])
        AS t(p, dev, slot, n, gap)
), hourly AS (
    INSERT INTO gap_hourly AS c (protocol, device_id, hour, pulses)
    SELECT p, dev, date_trunc('hour', slot, 'UTC'), sum(gap) FROM delta WHERE gap <> 0 GROUP BY 1, 2, 3
    ON CONFLICT (protocol, device_id, hour) DO UPDATE SET pulses = c.pulses + EXCLUDED.pulses
), days AS (
    SELECT delta.p, delta.dev, (delta.slot AT TIME ZONE device_time_zone(d.settings))::date AS day, sum(n) AS n
    FROM delta LEFT JOIN LATERAL (
        SELECT settings FROM devices d WHERE d.protocol = delta.p AND d.device_id = delta.dev
    ) d ON true
    WHERE delta.n <> 0
    GROUP BY 1, 2, 3
), updated AS (
    UPDATE consumption_daily c SET pulses = c.pulses + days.n
    FROM days WHERE c.protocol = days.p AND c.device_id = days.dev AND c.day = days.day
    RETURNING c.protocol, c.device_id, c.day, c.pulses
), inserted AS (
    INSERT INTO consumption_daily AS c (protocol, device_id, day, pulses)
    SELECT days.p, days.dev, days.day, days.n FROM days
    WHERE NOT EXISTS (SELECT FROM updated u WHERE (u.protocol, u.device_id, u.day) = (days.p, days.dev, days.day))
    ON CONFLICT (protocol, device_id, day) DO UPDATE SET pulses = c.pulses + EXCLUDED.pulses
    RETURNING protocol, device_id, day, pulses
)
SELECT * FROM updated UNION ALL SELECT * FROM inserted
"""


def spread(start: int, end: int, volume: int) -> list[tuple[int, int]]:
    """Splits `volume` over the 15-minute slots of [start, end) in proportion to time, as integers
    (largest remainder, ties to the earlier slot); a boundary (start == end) takes it whole."""
    if end <= start:
        return [(start - start % SLOT, volume)]
    if volume < 0:
        # Exactly the opposite of the positive split, so taking a gap back undoes putting it in.
        return [(slot, -share) for slot, share in spread(start, end, -volume)]
    slots = []
    t = start
    while t < end:
        slot = t - t % SLOT
        upto = min(end, slot + SLOT)
        slots.append((slot, upto - t))
        t = upto
    total = end - start
    shares = [(slot, volume * seconds // total, volume * seconds % total) for slot, seconds in slots]
    left = volume - sum(share for _, share, _ in shares)
    order = sorted(range(len(shares)), key=lambda i: (-shares[i][2], i))
    result = [[slot, share] for slot, share, _ in shares]
    for i in order[:left]:
        result[i][1] += 1
    return [(slot, share) for slot, share in result if share]


@dataclass(frozen=True, slots=True)
class DayTotal:
    protocol: str
    device: str
    day: dt.date
    pulses: int


class Deltas:
    """Signed pulse deltas per (protocol, device, slot), collected during one transaction: all of them, and
    the part that is gap volume."""

    def __init__(self) -> None:
        self._by_slot: dict[tuple[str, str, int], int] = defaultdict(int)
        self._gap_by_slot: dict[tuple[str, str, int], int] = defaultdict(int)

    def add(self, protocol: str, device: str, at: int, n: int) -> None:
        """A bucket's change (its hour is computed from readings: only its day is stored)."""
        if n:
            self._by_slot[(protocol, device, at - at % SLOT)] += n

    def add_spread(self, protocol: str, device: str, start: int, end: int, volume: int) -> None:
        for slot, share in spread(start, end, volume):
            self._by_slot[(protocol, device, slot)] += share
            self._gap_by_slot[(protocol, device, slot)] += share

    async def apply(self, conn: asyncpg.Connection) -> list[DayTotal]:
        """Adds the deltas to the rollups; returns the new totals of the days touched."""
        rows = [(k, n, self._gap_by_slot.get(k, 0)) for k, n in self._by_slot.items()]
        rows = [(k, n, gap) for k, n, gap in rows if n or gap]
        if not rows:
            return []
        records = await conn.fetch(
            _APPLY, [k[0] for k, _, _ in rows], [k[1] for k, _, _ in rows], [ts(k[2]) for k, _, _ in rows],
            [n for _, n, _ in rows], [gap for _, _, gap in rows],
        )
        return [DayTotal(r["protocol"], r["device_id"], r["day"], r["pulses"]) for r in records]
