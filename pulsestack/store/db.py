"""Connection pools for the stages and services."""

from __future__ import annotations

import asyncpg

from pulsestack.config import database_url


async def prepare(conn: asyncpg.Connection) -> None:
    """UTC for the rollups' hours and days, and index lookups only. Every statement of the stages' hot
    path looks rows up by key from a batch of a few thousand; a plan made while a partition was still
    empty (statistics say a scan is free), or on a misjudged batch size, would otherwise keep reading
    whole partitions of tables that grow without bound."""
    await conn.execute(
        "SET TIME ZONE 'UTC'; SET enable_hashjoin = off; SET enable_mergejoin = off; SET enable_seqscan = off"
    )


async def _utc(conn: asyncpg.Connection) -> None:
    await conn.execute("SET TIME ZONE 'UTC'")


async def create_pool(url: str | None = None, *, size: int = 4, keyed_lookups: bool = True) -> asyncpg.Pool:
    """`keyed_lookups`: the stages' setting (see `prepare`); sweeps that scan on purpose turn it off."""
    pool = await asyncpg.create_pool(
        url or database_url(),
        min_size=1,
        max_size=size,
        init=prepare if keyed_lookups else _utc,
        # Statements are few and fixed; cache them.
        statement_cache_size=256,
        command_timeout=60,
    )
    assert pool is not None
    return pool
