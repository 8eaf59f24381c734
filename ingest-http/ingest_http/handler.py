"""POST /v1/sigfox: every answer a Sigfox backend can act on, each counted by reason."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from aiohttp import web

from pulsestack import metrics
from pulsestack.bus.publisher import PublishError, ReadingGrouper
from pulsestack.bus.quarantine import Quarantine
from pulsestack.clock import Clock
from pulsestack.http import BodyIncomplete, BodyTimeout, read_body
from pulsestack.logs import RateLimitedLog, get_logger
from pulsestack.registry.membership import Membership
from pulsestack.tokens import Tokens
from pulsestack.wire import sigfox
from pulsestack.wire.errors import CodecError
from pulsestack.wire.reading import clock_problem, trace_id_or_new

PROTOCOL = sigfox.PROTOCOL
MAX_BODY = 4096
RETRY_AFTER = "5"
log = get_logger(__name__)


def json_response(body: dict[str, Any], status: int, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json", headers=headers)


class SigfoxCallbacks:
    def __init__(
        self,
        *,
        tokens: Tokens,
        membership: Membership,
        grouper: ReadingGrouper,
        quarantine: Quarantine,
        max_age_seconds: float,
        clock: Clock,
        answer_within: float,
    ) -> None:
        self._tokens = tokens
        self._membership = membership
        self._grouper = grouper
        self._quarantine = quarantine
        self._max_age = max_age_seconds
        self._clock = clock
        self._answer_within = answer_within
        self._logs = RateLimitedLog(per_second=1.0)
        self._counts = metrics.IngestCounters.of(PROTOCOL)

    def _reject(self, request: web.Request, reason: str, detail: str, **fields: Any) -> None:
        self._counts.rejected[reason].inc()
        source = request.remote or "?"
        suppressed = self._logs.allow((reason, source))
        if suppressed is not None:
            log.warning("callback rejected", reason=reason, detail=detail, source=source, suppressed=suppressed,
                        **fields)

    async def handle(self, request: web.Request) -> web.Response:
        self._counts.received.inc()
        if not self._tokens.valid(request.headers.get("Authorization")):
            self._reject(request, "unauthorized", "missing or wrong bearer token")
            return json_response({"error": "unauthorized"}, 401, {"WWW-Authenticate": 'Bearer realm="sigfox"'})
        if request.content_type != "application/json":
            self._reject(request, "unsupported_media_type", request.content_type)
            return json_response({"error": "unsupported_media_type", "detail": "application/json expected"}, 415)
        if request.content_length is not None and request.content_length > MAX_BODY:
            self._reject(request, "too_large", f"{request.content_length} bytes")
            return json_response({"error": "too_large", "detail": f"at most {MAX_BODY} bytes"}, 413)
        try:
            raw = await read_body(request, MAX_BODY)
        except BodyIncomplete as exc:
            self._reject(request, "bad_json", f"body shorter than announced: {exc}")
            return json_response({"error": "bad_json", "field": None, "detail": "truncated body"}, 400)
        except BodyTimeout:
            response = json_response({"error": "timeout", "detail": "body not received in time"}, 408)
            response.force_close()
            return response
        if len(raw) > MAX_BODY:
            self._reject(request, "too_large", "chunked body over the limit")
            return json_response({"error": "too_large", "detail": f"at most {MAX_BODY} bytes"}, 413)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            self._reject(request, "bad_json", str(exc))
            return json_response({"error": "bad_json", "field": None, "detail": str(exc)}, 400)
        received_at = time.time()
        trace_id = trace_id_or_new(request.headers.get("X-Trace-Id"))
        try:
            reading = sigfox.decode_callback(body, received_at, trace_id)
        except CodecError as exc:
            self._reject(request, exc.reason, exc.detail, field=exc.field)
            if exc.reason == "payload":
                return json_response({"error": "payload", "detail": exc.detail}, 422)
            return json_response({"error": exc.reason, "field": exc.field, "detail": exc.detail}, 400)
        fields = {"device": reading.device, "seq": reading.seq, "trace_id": reading.trace_id}
        if not self._membership.ready.is_set():
            self._reject(request, "overloaded", "registry not loaded yet", **fields)
            return json_response({"error": "overloaded"}, 503, {"Retry-After": RETRY_AFTER})
        if not self._membership.contains(PROTOCOL, sigfox.CODEC.number(reading.device)):
            return await self._quarantined(request, "unknown_device", "device not registered or disabled", reading)
        problem = clock_problem(reading.device_time, self._clock.at(received_at), self._max_age)
        if problem:
            return await self._quarantined(request, "clock", problem, reading)
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for wraps the future in another and
            # schedules more callbacks, a measurable share of a callback's time.
            async with asyncio.timeout(self._answer_within):
                stored = await self._grouper.submit(reading)
        except (PublishError, TimeoutError) as exc:
            self._reject(request, "overloaded", str(exc) or "no PubAck in time", **fields)
            return json_response({"error": "overloaded"}, 503, {"Retry-After": RETRY_AFTER})
        self._counts.accepted.inc()
        if stored.duplicate:
            self._counts.duplicates.inc()
            return json_response({"status": "duplicate"}, 200)
        return json_response({"status": "stored"}, 200)

    async def _quarantined(self, request: web.Request, reason: str, detail: str, reading: Any) -> web.Response:
        self._reject(request, reason, detail, device=reading.device, seq=reading.seq, trace_id=reading.trace_id)
        # Rate-limited per device: every callback comes from the same few Sigfox backend addresses.
        source = f"{PROTOCOL}:{reading.device}"
        if not await self._quarantine.put("ingest", reason, detail, source=source, reading=reading):
            # Not kept: let the backend retry rather than claim we hold it.
            return json_response({"error": "overloaded"}, 503, {"Retry-After": RETRY_AFTER})
        return json_response({"status": "quarantined", "reason": reason}, 202)
