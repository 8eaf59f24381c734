"""The raw stage's write, shared with `pulsestack replay`: store readings idempotently and derive from the
ones this transaction stored (buckets, gaps, meter events, device state, rollups, alerts)."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from pulsestack.store.pulses import PulseItem, PulseOutcome, write_pulses
from pulsestack.store.raw import RawRow, insert_readings
from pulsestack.wire.reading import Reading


@dataclass(frozen=True, slots=True)
class Stored:
    rows: list[RawRow]
    outcome: PulseOutcome


async def store_readings(conn: asyncpg.Connection, items: list[Reading]) -> Stored:
    """In the caller's transaction; one RawRow per reading, `inserted` False for one already stored."""
    rows = await insert_readings(conn, items)
    # Only what this transaction inserted: a reading found already stored was derived from in the
    # transaction that stored it (an upgrade drains the earlier two-stage pipeline first; see setup).
    fresh = [PulseItem(row.raw_id, r) for row, r in zip(rows, items, strict=True) if row.inserted]
    return Stored(rows, await write_pulses(conn, fresh) if fresh else PulseOutcome())
