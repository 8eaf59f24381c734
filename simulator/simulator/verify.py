"""Delivery verification: what devices were told is stored, against what PostgreSQL holds."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, field

import asyncpg

from simulator.fleet import BUCKET_SECONDS, SentReading

_RAW = """
SELECT s.ord, count(r.id) AS n
FROM unnest($1::int[], $2::text[], $3::text[], $4::bigint[], $5::timestamptz[]) AS s(ord, p, d, seq, t)
LEFT JOIN raw_messages r ON r.protocol = s.p AND r.device_id = s.d AND r.seq = s.seq AND r.device_time = s.t
GROUP BY s.ord
"""
_PULSES = """
SELECT s.ord, p.count
FROM unnest($1::int[], $2::text[], $3::text[], $4::timestamptz[]) AS s(ord, pr, d, b)
LEFT JOIN pulses p ON p.protocol = s.pr AND p.device_id = s.d AND p.bucket_start = s.b AND p.bucket_seconds = 900
"""
_TOTAL = """
SELECT (SELECT coalesce(sum(count), 0) FROM pulses
        WHERE protocol = $1 AND device_id = $2 AND bucket_start >= $3 AND bucket_start < $4)
     + (SELECT coalesce(sum(volume), 0) FROM gaps
        WHERE protocol = $1 AND device_id = $2 AND from_period_end >= $3 AND from_period_end < $4)
"""


def _ts(seconds: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


@dataclass(slots=True)
class Delivery:
    expected: int = 0
    delivered: int = 0
    lost: int = 0
    duplicated: int = 0
    bucket_mismatches: int = 0
    total_mismatches: list[str] = field(default_factory=list)

    @property
    def exact(self) -> bool:
        return (
            self.lost == 0 and self.duplicated == 0 and self.bucket_mismatches == 0 and not self.total_mismatches
        )

    def line(self) -> str:
        pct = 100.0 * self.delivered / self.expected if self.expected else 100.0
        return (
            f"messages delivered {self.delivered:,} / {self.expected:,} ({pct:.2f} %), lost {self.lost},"
            f" duplicated {self.duplicated}, bucket mismatches {self.bucket_mismatches},"
            f" devices whose totals differ from their index {len(self.total_mismatches)}"
        )


async def verify(conn: asyncpg.Connection, readings: list[SentReading], check_totals: bool = True) -> Delivery:
    unique = list({(r.protocol, r.device, r.seq, r.device_time): r for r in readings}.values())
    result = Delivery(expected=len(unique))
    if not unique:
        return result
    rows = await conn.fetch(
        _RAW, list(range(len(unique))), [r.protocol for r in unique], [r.device for r in unique],
        [r.seq for r in unique], [_ts(r.device_time) for r in unique],
    )
    found = {row["ord"]: row["n"] for row in rows}
    for i in range(len(unique)):
        n = found.get(i, 0)
        if n == 0:
            result.lost += 1
        else:
            result.delivered += 1
            result.duplicated += n - 1
    buckets = [
        (i, r, r.period_end - (len(r.counts) - k) * BUCKET_SECONDS, count)
        for i, r in enumerate(unique) for k, count in enumerate(r.counts)
    ]
    stored = await conn.fetch(
        _PULSES, list(range(len(buckets))), [b[1].protocol for b in buckets], [b[1].device for b in buckets],
        [_ts(b[2]) for b in buckets],
    )
    result.bucket_mismatches = sum(1 for row in stored if row["count"] != buckets[row["ord"]][3])
    if check_totals:
        await _check_totals(conn, unique, result)
    return result


async def _check_totals(conn: asyncpg.Connection, readings: list[SentReading], result: Delivery) -> None:
    """Per device: pulses plus gap volume between its first and last reading equal the index difference."""
    by_device: dict[tuple[str, str], list[SentReading]] = defaultdict(list)
    for r in readings:
        by_device[(r.protocol, r.device)].append(r)
    for (protocol, device), rs in by_device.items():
        if len(rs) < 2:
            continue
        first = min(rs, key=lambda r: r.period_end)
        last = max(rs, key=lambda r: r.period_end)
        total = await conn.fetchval(_TOTAL, protocol, device, _ts(first.period_end), _ts(last.period_end))
        if total != (last.index - first.index) % 2**32:
            result.total_mismatches.append(f"{protocol}:{device} stored {total}, index says "
                                           f"{(last.index - first.index) % 2**32}")
