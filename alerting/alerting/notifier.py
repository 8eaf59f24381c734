"""Webhook delivery of alert events: signed, retried with back-off, at least once.

Events come from the ALERTS stream through a durable consumer; a failed
delivery is redelivered later by JetStream (back-off up to 30 s) and after
`max_deliver` attempts lands in `dead.notifier`. Nothing here can slow the
pipeline: it is a separate consumer of a separate stream.

Signature: `X-Pulsestack-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>` with the
Unix time in `X-Pulsestack-Timestamp`; a receiver recomputes it and rejects old timestamps (replays).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time

import aiohttp
from nats.aio.msg import Msg

from pulsestack import metrics
from pulsestack.logs import get_logger

log = get_logger(__name__)


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


class Notifier:
    def __init__(self, url: str | None, secret: bytes, timeout: float) -> None:
        self._url = url
        self._secret = secret
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout))

    async def close(self) -> None:
        await self._session.close()

    async def process(self, msgs: list[Msg]) -> list[str | None]:
        return list(await asyncio.gather(*(self._deliver(m) for m in msgs)))

    async def _deliver(self, msg: Msg) -> str | None:
        if self._url is None:
            metrics.notifications.labels("no_webhook").inc()
            return None
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "X-Pulsestack-Timestamp": timestamp,
            "X-Pulsestack-Signature": sign(self._secret, timestamp, msg.data),
            "X-Pulsestack-Delivery": f"{msg.metadata.sequence.stream}",
        }
        started = time.monotonic()
        try:
            async with self._session.post(self._url, data=msg.data, headers=headers) as response:
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            status, error = 0, f"{type(exc).__name__}: {exc}"
        else:
            error = f"HTTP {status}"
        finally:
            metrics.notification_seconds.observe(time.monotonic() - started)
        if 200 <= status < 300:
            metrics.notifications.labels("delivered").inc()
            return None
        metrics.notifications.labels("failed").inc()
        log.warning("webhook delivery failed; will retry", error=error, deliveries=msg.metadata.num_delivered)
        return error
