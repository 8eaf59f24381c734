"""Connection pools. Each connection gets its own staging tables for COPY-then-upsert writes."""

from __future__ import annotations

import asyncpg

from pulsestack.config import database_url

# COPY into a temporary table, then one INSERT ... SELECT ... ON CONFLICT: the
# fastest idempotent bulk write measured here (~50k rows/s per connection).
_STAGING = """
CREATE TEMP TABLE IF NOT EXISTS stage_raw (
    ord int, protocol text, device_id text, seq bigint, device_time timestamptz,
    period_end timestamptz, bucket_seconds int, counts int[], meter_index bigint,
    battery_mv int, flags int, received_at timestamptz, trace_id text, payload bytea, meta jsonb
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_pulses (
    protocol text, device_id text, bucket_start timestamptz, bucket_seconds int, count int,
    raw_id bigint, device_time timestamptz, seq bigint
) ON COMMIT DELETE ROWS;
"""


async def prepare(conn: asyncpg.Connection) -> None:
    """What the stages' writes expect of a connection: the staging tables, UTC for hours and days."""
    await conn.execute(_STAGING)
    await conn.execute("SET TIME ZONE 'UTC'")


async def create_pool(url: str | None = None, *, size: int = 4) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        url or database_url(),
        min_size=1,
        max_size=size,
        init=prepare,
        # Statements are few and fixed; cache them.
        statement_cache_size=256,
        command_timeout=60,
    )
    assert pool is not None
    return pool
