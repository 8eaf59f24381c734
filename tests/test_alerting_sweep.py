"""The alerting service's sweep loop outlives any failed sweep: if it ended, silent meters would go unnoticed
until the service restarted, and its shutdown would fail on the loop's exception."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import asyncpg
import pytest
from nats.aio.client import Client as NATS

from alerting.app import _sweep_loop
from pulsestack.bus.publisher import Publisher
from pulsestack_cli.local import LocalStack

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_sweep_loop_keeps_going_when_a_sweep_fails_in_the_client(stack: LocalStack, nc: NATS) -> None:
    # A closed pool fails in asyncpg itself (InterfaceError, not a PostgresError), as connections that
    # died with the server can.
    pool = await asyncpg.create_pool(stack.database_url, min_size=1, max_size=1)
    await pool.close()
    with pytest.raises(asyncpg.InterfaceError):
        await pool.fetchval("SELECT 1")
    config = SimpleNamespace(default_interval=2, sweep_every=0.05)
    stop = asyncio.Event()
    loop = asyncio.create_task(_sweep_loop(pool, Publisher(nc), config, stop))  # type: ignore[arg-type]
    await asyncio.sleep(0.5)  # about ten sweeps, each failing
    assert not loop.done(), loop.exception()
    stop.set()
    await asyncio.wait_for(loop, 5)
