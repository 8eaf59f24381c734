"""The raw stage's write, shared with `pulsestack replay`: store readings idempotently and derive from the
ones this transaction stored (buckets, gaps, meter events, device state, rollups, alerts)."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from pulsestack.store.pulses import PulseOutcome, lock_devices, write_pulses
from pulsestack.store.raw import insert_readings
from pulsestack.wire.reading import Reading


@dataclass(frozen=True, slots=True)
class Stored:
    inserted: list[bool]  # per reading: False for one already stored (a duplicate)
    outcome: PulseOutcome


async def store_readings(conn: asyncpg.Connection, items: list[Reading]) -> Stored:
    """In the caller's transaction."""
    await lock_devices(conn, {(r.protocol, r.device) for r in items})
    inserted = await insert_readings(conn, items)
    # Only what this transaction inserted: a reading found already stored was derived from in the
    # transaction that stored it (an upgrade drains the earlier two-stage pipeline first; see setup).
    fresh = [r for new, r in zip(inserted, items, strict=True) if new]
    return Stored(inserted, await write_pulses(conn, fresh) if fresh else PulseOutcome())
