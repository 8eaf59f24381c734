"""Running a stage's batch write so that one bad reading cannot block the others.

The batch is written in one transaction. If PostgreSQL rejects it for its data
(SQLSTATE class 22 or 23), or the write refuses it (Refused), each reading is
written alone and the ones still rejected are returned for quarantine. Any other error (connection lost, server
down) is raised: the whole batch is redelivered later, nothing is lost.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg

T = TypeVar("T")
R = TypeVar("R")


class Refused(Exception):
    """What a write refuses for what the item says, like PostgreSQL's data errors: the item is quarantined
    with this message, not retried."""


def is_data_error(exc: BaseException) -> bool:
    if isinstance(exc, Refused):
        return True
    sqlstate = getattr(exc, "sqlstate", None) or ""
    return isinstance(exc, asyncpg.PostgresError) and sqlstate[:2] in ("22", "23")


async def write_isolating(
    pool: asyncpg.Pool,
    items: list[T],
    write: Callable[[asyncpg.Connection, list[T]], Awaitable[R]],
) -> tuple[list[tuple[list[T], R]], list[tuple[T, str]]]:
    """Returns ([(items written together, write result)], [(rejected item, error)])."""
    try:
        async with pool.acquire() as conn, conn.transaction():
            return [(items, await write(conn, items))], []
    except Exception as exc:
        if not is_data_error(exc) or len(items) == 1:
            if is_data_error(exc):
                return [], [(items[0], f"{type(exc).__name__}: {exc}")]
            raise
    written: list[tuple[list[T], R]] = []
    rejected: list[tuple[T, str]] = []
    for item in items:
        ok, bad = await write_isolating(pool, [item], write)
        written += ok
        rejected += bad
    return written, rejected
