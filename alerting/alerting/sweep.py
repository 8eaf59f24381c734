"""Periodic work over all devices: silence, the end of a threshold alert's day, and the outbox.

A few statements per sweep, whatever the fleet size: device_state is scanned
once and each device compared with three of its own reporting intervals, and
registered devices never heard from are found by an anti-join; there are no
per-device timers to keep.
"""

from __future__ import annotations

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
ON CONFLICT (protocol, device_id, kind) WHERE resolved_at IS NULL DO NOTHING
RETURNING id
"""
# Registered, enabled, and never heard from since three default intervals after registration.
_NEVER_HEARD = """
INSERT INTO alerts (protocol, device_id, kind, detail)
SELECT d.protocol, d.device_id, 'silent', jsonb_build_object('last_seen', NULL, 'registered', d.created_at)
FROM devices d
WHERE NOT d.disabled AND d.created_at < now() - make_interval(secs => $2::int * $1::int)
  AND NOT EXISTS (SELECT FROM device_state s WHERE s.protocol = d.protocol AND s.device_id = d.device_id)
ON CONFLICT (protocol, device_id, kind) WHERE resolved_at IS NULL DO NOTHING
RETURNING id
"""
# A threshold alert belongs to one device-local day; it clears when that day is over.
_DAY_OVER = """
UPDATE alerts a SET resolved_at = now()
FROM devices d
WHERE a.kind = 'threshold' AND a.resolved_at IS NULL AND d.protocol = a.protocol AND d.device_id = a.device_id
  AND a.day < (now() AT TIME ZONE coalesce(d.settings ->> 'timezone', 'UTC'))::date
RETURNING a.id
"""


async def sweep(pool: asyncpg.Pool, default_interval: int) -> list[int]:
    """Opens silent-meter alerts and ends past days' threshold alerts; returns the alert ids changed."""
    started = time.monotonic()
    async with pool.acquire() as conn:
        opened = await conn.fetch(_SILENT, default_interval, SILENCE_FACTOR)
        never = await conn.fetch(_NEVER_HEARD, default_interval, SILENCE_FACTOR)
        ended = await conn.fetch(_DAY_OVER)
    metrics.silent_sweep_seconds.observe(time.monotonic() - started)
    return [r["id"] for r in opened + never + ended]
