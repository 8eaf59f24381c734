"""The alert outbox (pulsestack/alerts/outbox.py) publishes every pending event, a page of alerts at a time: a
sweep that opens thousands of silent-meter alerts at once must not hold thousands of events in memory."""

from __future__ import annotations

import uuid

import asyncpg
import pytest
from nats.aio.client import Client as NATS
from nats.js.api import PubAck

from pulsestack.alerts import outbox as alerts
from pulsestack.bus.publisher import Publisher, PublishError
from pulsestack_cli.local import LocalStack

pytestmark = pytest.mark.asyncio(loop_scope="session")


class CountingPublisher(Publisher):
    """The real publisher, counting the publishes awaiting their PubAck at once."""

    def __init__(self, nc: NATS) -> None:
        super().__init__(nc)
        self.now = self.most = self.total = 0

    async def publish(self, subject: str, data: bytes, headers: dict[str, str], stream: str) -> PubAck:
        self.now += 1
        self.most, self.total = max(self.most, self.now), self.total + 1
        try:
            return await super().publish(subject, data, headers, stream)
        finally:
            self.now -= 1


class DownPublisher(CountingPublisher):
    """A bus that answers no publish, as in an outage (each would wait for its PubAck timeout)."""

    async def publish(self, subject: str, data: bytes, headers: dict[str, str], stream: str) -> PubAck:
        self.total += 1
        raise PublishError("no PubAck")


async def pending(db: asyncpg.Connection, count: int) -> list[int]:
    tag = uuid.uuid4().hex[:8]
    return [row["id"] for row in await db.fetch(
        "INSERT INTO alerts (protocol, device_id, kind) SELECT 'nbiot', $1 || n, 'silent'"
        " FROM generate_series(1, $2) n RETURNING id", f"outbox-{tag}-", count)]


async def test_thousands_of_pending_alerts_go_out_a_page_at_a_time(
    stack: LocalStack, db: asyncpg.Connection, nc: NATS
) -> None:
    # Stopped, so that its sweep (every second here) does not publish them first; restarted after the test.
    stack.services["alerting"].stop()
    count = 2 * alerts.PAGE + alerts.PAGE // 2
    ids = await pending(db, count)
    publisher = CountingPublisher(nc)
    await publisher.start()
    pool = await asyncpg.create_pool(stack.database_url, min_size=1, max_size=1)
    try:
        await alerts.publish_pending(pool, publisher, ids)
    finally:
        await pool.close()
        await publisher.stop()
    assert publisher.total == count
    assert await db.fetchval(
        "SELECT count(*) FROM alerts WHERE id = ANY($1) AND NOT published_open", ids) == 0
    assert publisher.most <= alerts.PAGE, (publisher.most, publisher.total)
    await db.execute("DELETE FROM alerts WHERE id = ANY($1)", ids)


async def test_an_outage_stops_at_the_first_page_and_leaves_every_event_for_the_next_sweep(
    stack: LocalStack, db: asyncpg.Connection, nc: NATS
) -> None:
    stack.services["alerting"].stop()
    ids = await pending(db, 3 * alerts.PAGE)
    publisher = DownPublisher(nc)
    pool = await asyncpg.create_pool(stack.database_url, min_size=1, max_size=1)
    try:
        assert await alerts.publish_pending(pool, publisher, ids) == 0
    finally:
        await pool.close()
    assert publisher.total == alerts.PAGE, "one page tried, not every page's timeouts waited for"
    assert await db.fetchval("SELECT count(*) FROM alerts WHERE id = ANY($1) AND NOT published_open", ids) == len(ids)
    await db.execute("DELETE FROM alerts WHERE id = ANY($1)", ids)
