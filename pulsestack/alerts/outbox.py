"""Alert events on NATS (`alerts.<kind>`), published from the alerts table after commit (an outbox).

Whoever changed an alert publishes its event right after committing; the
alerting service's sweep publishes whatever a crash left unpublished. The
message id `alert:<id>:<event>` lets JetStream drop a second copy.
"""

from __future__ import annotations

import asyncio

import asyncpg
import orjson

from pulsestack import metrics
from pulsestack.bus.publisher import Publisher, PublishError
from pulsestack.bus.topology import ALERTS, MSG_ID, alert_subject
from pulsestack.logs import get_logger

log = get_logger(__name__)
_PENDING = """
SELECT id, protocol, device_id, kind, opened_at, resolved_at, day, detail, published_open, published_resolved
FROM alerts
WHERE (NOT published_open OR (resolved_at IS NOT NULL AND NOT published_resolved))
  AND ($1::bigint[] IS NULL OR id = ANY($1)) AND id > $2
ORDER BY id LIMIT $3
"""
# Alerts whose events are published at once: a sweep may open thousands (a network outage silences a whole
# fleet), and a process's memory keeps the high-water of what it held at once.
PAGE = 100


def event_body(row: asyncpg.Record, event: str) -> bytes:
    return orjson.dumps({
        "id": row["id"], "event": event, "kind": row["kind"], "protocol": row["protocol"],
        "device": row["device_id"], "opened_at": row["opened_at"], "resolved_at": row["resolved_at"],
        "day": row["day"], "detail": orjson.loads(row["detail"]) if row["detail"] else {},
    })


async def publish_pending(pool: asyncpg.Pool, publisher: Publisher, ids: list[int] | None = None) -> int:
    """Publishes unpublished alert events (all, or those of `ids`), PAGE alerts at a time; returns how many
    went out. It stops at the first page with an event that did not go out (the bus is likely down: the
    other pages would wait for their PubAck timeouts too); the next sweep retries."""
    published, after = 0, 0
    while True:
        async with pool.acquire() as conn:
            rows = await conn.fetch(_PENDING, ids, after, PAGE)
            went, sent = await _publish(conn, publisher, rows) if rows else (0, 0)
        published += went
        if len(rows) < PAGE or went < sent:
            return published
        after = rows[-1]["id"]


async def _publish(conn: asyncpg.Connection, publisher: Publisher, rows: list[asyncpg.Record]) -> tuple[int, int]:
    """(events that went out, events tried) for one page of alerts."""
    sends = []
    for row in rows:
        if not row["published_open"]:
            sends.append((row, "opened"))
        if row["resolved_at"] is not None and not row["published_resolved"]:
            sends.append((row, "resolved"))
    results = await asyncio.gather(
        *(publisher.publish(alert_subject(row["kind"]), event_body(row, event),
                            {MSG_ID: f"alert:{row['id']}:{event}"}, ALERTS) for row, event in sends),
        return_exceptions=True,
    )
    opened = [row["id"] for (row, event), r in zip(sends, results, strict=True)
              if event == "opened" and not isinstance(r, BaseException)]
    resolved = [row["id"] for (row, event), r in zip(sends, results, strict=True)
                if event == "resolved" and not isinstance(r, BaseException)]
    await conn.execute("UPDATE alerts SET published_open = true WHERE id = ANY($1)", opened)
    await conn.execute("UPDATE alerts SET published_resolved = true WHERE id = ANY($1)", resolved)
    for (row, event), result in zip(sends, results, strict=True):
        if isinstance(result, PublishError):
            log.warning("alert event not published; the sweep retries", alert=row["id"], error=str(result))
        elif not isinstance(result, BaseException):
            metrics.alerts.labels(row["kind"], event).inc()
            log.info("alert " + event, alert=row["id"], kind=row["kind"], device=row["device_id"],
                     protocol=row["protocol"])
    return len(opened) + len(resolved), len(sends)
