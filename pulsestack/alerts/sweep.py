"""What only the passing of time decides, over all devices: silence, and the end of a threshold alert's day.

A few statements per sweep, whatever the fleet size: device_state is scanned
once and each device compared with three of its own reporting intervals, and
registered devices never heard from are found by an anti-join; there are no
per-device timers to keep.
"""

from __future__ import annotations

import datetime as dt
import time

import asyncpg

from pulsestack import metrics

SILENCE_FACTOR = 3
_SILENT = """
INSERT INTO alerts (protocol, device_id, kind, detail)
SELECT s.protocol, s.device_id, 'silent',
       jsonb_build_object('last_seen', s.last_seen, 'interval_seconds', coalesce(s.interval_seconds, $1))
FROM device_state s
WHERE s.last_seen < now() - make_interval(secs => $2 * coalesce(s.interval_seconds, $1))
  AND NOT EXISTS (SELECT FROM devices d WHERE d.protocol = s.protocol AND d.device_id = s.device_id AND d.disabled)
ON CONFLICT (protocol, device_id, kind) WHERE resolved_at IS NULL DO NOTHING
RETURNING id
"""
# Registered, enabled, and never heard from in the three default intervals after registration. Each
# sweep looks only at the devices whose deadline passed since the previous sweep (an index range); the
# first sweep of a process looks at all of them.
_NEVER_HEARD = """
WITH deadline AS (SELECT now() - make_interval(secs => $2::int * $1::int) AS at)
INSERT INTO alerts (protocol, device_id, kind, detail)
SELECT d.protocol, d.device_id, 'silent', jsonb_build_object('last_seen', NULL, 'registered', d.created_at)
FROM devices d, deadline
WHERE d.created_at < deadline.at AND d.created_at >= coalesce($3::timestamptz, '-infinity') AND NOT d.disabled
  AND NOT EXISTS (SELECT FROM device_state s WHERE s.protocol = d.protocol AND s.device_id = d.device_id)
ON CONFLICT (protocol, device_id, kind) WHERE resolved_at IS NULL DO NOTHING
RETURNING id
"""
# A threshold alert belongs to one device-local day; it clears when that day is over.
_DAY_OVER = """
UPDATE alerts a SET resolved_at = now()
FROM devices d
WHERE a.kind = 'threshold' AND a.resolved_at IS NULL AND d.protocol = a.protocol AND d.device_id = a.device_id
  AND a.day < (now() AT TIME ZONE device_time_zone(d.settings))::date
RETURNING a.id
"""


class Sweeper:
    def __init__(self, pool: asyncpg.Pool, default_interval: int) -> None:
        self._pool = pool
        self._default_interval = default_interval
        self._never_heard_checked_to: dt.datetime | None = None

    async def sweep(self) -> list[int]:
        """Opens silent-meter alerts and ends past days' threshold alerts; returns the alert ids changed."""
        started = time.monotonic()
        async with self._pool.acquire() as conn, conn.transaction():
            deadline = await conn.fetchval(
                "SELECT now() - make_interval(secs => $2::int * $1::int)", self._default_interval, SILENCE_FACTOR
            )
            opened = await conn.fetch(_SILENT, self._default_interval, SILENCE_FACTOR)
            never = await conn.fetch(_NEVER_HEARD, self._default_interval, SILENCE_FACTOR,
                                     self._never_heard_checked_to)
            ended = await conn.fetch(_DAY_OVER)
        self._never_heard_checked_to = deadline
        metrics.silent_sweep_seconds.observe(time.monotonic() - started)
        return [r["id"] for r in opened + never + ended]
