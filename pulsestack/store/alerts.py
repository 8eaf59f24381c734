"""Alerts in the database: opened once, resolved when the condition clears.

The unique indexes do the "once": one open alert per device and kind, one
threshold alert per device and day. Each statement returns the ids it opened
or resolved, so the caller can publish those events after commit.
"""

from __future__ import annotations

import datetime as dt

import asyncpg
import orjson

KINDS = ("leak", "threshold", "silent", "tamper", "reverse_flow", "battery_low")

_OPEN = """
INSERT INTO alerts (protocol, device_id, kind, detail)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::jsonb[])
ON CONFLICT (protocol, device_id, kind) WHERE resolved_at IS NULL DO NOTHING
RETURNING id
"""
_RESOLVE = """
UPDATE alerts a SET resolved_at = now()
FROM unnest($1::text[], $2::text[], $3::text[]) AS r(p, d, k)
WHERE a.protocol = r.p AND a.device_id = r.d AND a.kind = r.k AND a.resolved_at IS NULL
RETURNING a.id
"""
# Either index may hold the row back: this day's alert exists, or the last day's is still open (one open alert
# per device and kind) until the sweep ends it; then this day's opens with its next reading. Naming only the
# per-day index made the second case fail the reading's transaction.
_THRESHOLD = """
INSERT INTO alerts (protocol, device_id, kind, day, detail)
SELECT t.p, t.d, 'threshold', t.day,
       jsonb_build_object('day', t.day, 'total', t.pulses * t.weight, 'limit', t.lim, 'pulses', t.pulses)
FROM (
    SELECT u.p, u.d, u.day, u.pulses,
           coalesce((dv.settings ->> 'pulse_weight')::numeric, 1) AS weight,
           (dv.settings ->> 'daily_limit')::numeric AS lim
    FROM unnest($1::text[], $2::text[], $3::date[], $4::bigint[]) AS u(p, d, day, pulses)
    CROSS JOIN LATERAL (SELECT settings FROM devices dv WHERE dv.protocol = u.p AND dv.device_id = u.d) dv
) t
WHERE t.lim IS NOT NULL AND t.pulses * t.weight >= t.lim
ON CONFLICT DO NOTHING
RETURNING id
"""


class AlertChanges:
    """Alerts to open and resolve in one transaction; ids of what changed, for publishing."""

    def __init__(self) -> None:
        self.to_open: dict[tuple[str, str, str], dict[str, object]] = {}
        self.to_resolve: set[tuple[str, str, str]] = set()
        self.days: list[tuple[str, str, dt.date, int]] = []
        self.changed: list[int] = []

    def open(self, protocol: str, device: str, kind: str, **detail: object) -> None:
        self.to_resolve.discard((protocol, device, kind))
        self.to_open[(protocol, device, kind)] = detail

    def resolve(self, protocol: str, device: str, kind: str) -> None:
        self.to_open.pop((protocol, device, kind), None)
        self.to_resolve.add((protocol, device, kind))

    def day_total(self, protocol: str, device: str, day: dt.date, pulses: int) -> None:
        self.days.append((protocol, device, day, pulses))

    async def apply(self, conn: asyncpg.Connection) -> list[int]:
        if self.to_resolve:
            keys = sorted(self.to_resolve)
            rows = await conn.fetch(_RESOLVE, [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys])
            self.changed += [r["id"] for r in rows]
        if self.to_open:
            keys = sorted(self.to_open)
            rows = await conn.fetch(
                _OPEN, [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys],
                [orjson.dumps(self.to_open[k], default=str).decode() for k in keys],
            )
            self.changed += [r["id"] for r in rows]
        if self.days:
            rows = await conn.fetch(
                _THRESHOLD, [d[0] for d in self.days], [d[1] for d in self.days], [d[2] for d in self.days],
                [d[3] for d in self.days],
            )
            self.changed += [r["id"] for r in rows]
        return self.changed
