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

# An alert opened and resolved within one batch is inserted resolved: the partial index does not hold it back,
# and its row records both readings, as storing them one batch each would have. Ids grow with the readings.
_OPEN = """
INSERT INTO alerts (protocol, device_id, kind, detail, resolved_at)
SELECT p, d, k, detail, CASE WHEN closed THEN now() END
FROM unnest($1::text[], $2::text[], $3::text[], $4::jsonb[], $5::boolean[]) WITH ORDINALITY
     AS t(p, d, k, detail, closed, i)
ORDER BY i
ON CONFLICT (protocol, device_id, kind) WHERE resolved_at IS NULL DO NOTHING
RETURNING id
"""
_RESOLVE = """
UPDATE alerts a SET resolved_at = now(), detail = a.detail || r.detail
FROM unnest($1::text[], $2::text[], $3::text[], $4::jsonb[]) AS r(p, d, k, detail)
WHERE a.protocol = r.p AND a.device_id = r.d AND a.kind = r.k AND a.resolved_at IS NULL
RETURNING a.id
"""
# Either index may hold the row back: this day's alert exists, or the last day's is still open (one open alert
# per device and kind) until the sweep ends it; then this day's opens with its next reading. Naming only the
# per-day index made the second case fail the reading's transaction. Of a batch's days over the limit, only the
# earliest without an alert is tried, as when the days came one batch each: the rows of one INSERT are not
# inserted in the order given, so letting the index choose among several made the day depend on the plan.
_THRESHOLD = """
INSERT INTO alerts (protocol, device_id, kind, day, detail)
SELECT DISTINCT ON (t.p, t.d) t.p, t.d, 'threshold', t.day,
       jsonb_build_object('day', t.day, 'total', t.pulses * t.weight, 'limit', t.lim, 'pulses', t.pulses)
FROM (
    SELECT u.p, u.d, u.day, u.pulses,
           device_pulse_weight(dv.settings) AS weight,
           (dv.settings ->> 'daily_limit')::numeric AS lim
    FROM unnest($1::text[], $2::text[], $3::date[], $4::bigint[]) AS u(p, d, day, pulses)
    CROSS JOIN LATERAL (SELECT settings FROM devices dv WHERE dv.protocol = u.p AND dv.device_id = u.d) dv
) t
WHERE t.lim IS NOT NULL AND t.pulses * t.weight >= t.lim
  AND NOT EXISTS (SELECT FROM alerts a WHERE a.protocol = t.p AND a.device_id = t.d AND a.kind = 'threshold'
                                         AND a.day = t.day)
ORDER BY t.p, t.d, t.day
ON CONFLICT DO NOTHING
RETURNING id
"""


Key = tuple[str, str, str]  # (protocol, device, kind)


class AlertChanges:
    """Alerts to open and resolve in one transaction, in the order they happened; ids of what changed, for
    publishing. An alert opened and resolved within the transaction stays a row of its own (an episode), so
    the alerts table tells the same history whatever the batches were."""

    def __init__(self) -> None:
        self.to_resolve: dict[Key, dict[str, object]] = {}  # alerts open before this transaction
        self.episodes: list[tuple[Key, dict[str, object], dict[str, object] | None]] = []  # None: still open
        self.days: list[tuple[str, str, dt.date, int]] = []
        self.changed: list[int] = []
        self._open_here: dict[Key, int] = {}  # the episode still open, by key

    def open(self, protocol: str, device: str, kind: str, **detail: object) -> None:
        key = (protocol, device, kind)
        self._open_here[key] = len(self.episodes)
        self.episodes.append((key, detail, None))

    def resolve(self, protocol: str, device: str, kind: str, **detail: object) -> None:
        """`detail` joins the alert's own (what resolved it)."""
        key = (protocol, device, kind)
        here = self._open_here.pop(key, None)
        if here is None:
            self.to_resolve[key] = detail
        else:
            self.episodes[here] = (key, self.episodes[here][1], detail)

    def day_total(self, protocol: str, device: str, day: dt.date, pulses: int) -> None:
        self.days.append((protocol, device, day, pulses))

    async def apply(self, conn: asyncpg.Connection) -> list[int]:
        if self.to_resolve:
            keys = sorted(self.to_resolve)
            rows = await conn.fetch(
                _RESOLVE, [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys],
                [_json(self.to_resolve[k]) for k in keys],
            )
            self.changed += [r["id"] for r in rows]
        if self.episodes:
            order = sorted(range(len(self.episodes)), key=lambda i: (self.episodes[i][0], i))
            episodes = [self.episodes[i] for i in order]
            rows = await conn.fetch(
                _OPEN, [k[0] for k, _, _ in episodes], [k[1] for k, _, _ in episodes],
                [k[2] for k, _, _ in episodes],
                [_json(opened | (closed or {})) for _, opened, closed in episodes],
                [closed is not None for _, _, closed in episodes],
            )
            self.changed += [r["id"] for r in rows]
        if self.days:
            rows = await conn.fetch(
                _THRESHOLD, [d[0] for d in self.days], [d[1] for d in self.days], [d[2] for d in self.days],
                [d[3] for d in self.days],
            )
            self.changed += [r["id"] for r in rows]
        return self.changed


def _json(detail: dict[str, object]) -> str:
    return orjson.dumps(detail, default=str).decode()
