"""A network server's callback route (Sigfox's backend, LoRaWAN servers' HTTP integrations): every answer the
server can act on, each counted by reason. What differs between servers is a `Route` (routes.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
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
from pulsestack.wire.codecs import codec_of
from pulsestack.wire.errors import CodecError
from pulsestack.wire.reading import Reading, clock_problem, trace_id_or_new

RETRY_AFTER = "5"
log = get_logger(__name__)


def json_response(body: dict[str, Any], status: int, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json", headers=headers)


# (query parameters, parsed JSON body, received_at, trace_id) -> the reading, or the name of an event that is
# answered and counted but carries none; raises CodecError.
Decode = Callable[[Mapping[str, str], Any, float, str], Reading | str]


@dataclass(frozen=True, slots=True)
class Route:
    path: str
    protocol: str
    realm: str  # names the tokens (PULSESTACK_<REALM>_TOKENS_FILE), in WWW-Authenticate and the logs
    decode: Decode
    max_body: int
    # LoRaWAN servers disable a webhook that keeps failing: a device's odd frame is kept in quarantine and
    # answered 202 instead of 422.
    keep_odd_frames: bool


class Callbacks:
    def __init__(
        self,
        *,
        route: Route,
        tokens: Tokens,
        membership: Membership,
        grouper: ReadingGrouper,
        quarantine: Quarantine,
        max_age_seconds: float,
        clock: Clock,
        answer_within: float,
    ) -> None:
        self._route = route
        self._codec = codec_of(route.protocol)
        self._tokens = tokens
        self._membership = membership
        self._grouper = grouper
        self._quarantine = quarantine
        self._max_age = max_age_seconds
        self._clock = clock
        self._answer_within = answer_within
        self._logs = RateLimitedLog(per_second=1.0)
        self._counts = metrics.IngestCounters.of(route.protocol)

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
            return json_response({"error": "unauthorized"}, 401,
                                 {"WWW-Authenticate": f'Bearer realm="{self._route.realm}"'})
        if request.content_type != "application/json":
            self._reject(request, "unsupported_media_type", request.content_type)
            return json_response({"error": "unsupported_media_type", "detail": "application/json expected"}, 415)
        if request.content_length is not None and request.content_length > self._route.max_body:
            self._reject(request, "too_large", f"{request.content_length} bytes")
            return json_response({"error": "too_large", "detail": f"at most {self._route.max_body} bytes"}, 413)
        try:
            raw = await read_body(request, self._route.max_body)
        except BodyIncomplete as exc:
            self._reject(request, "bad_json", f"body shorter than announced: {exc}")
            return json_response({"error": "bad_json", "field": None, "detail": "truncated body"}, 400)
        except BodyTimeout:
            response = json_response({"error": "timeout", "detail": "body not received in time"}, 408)
            response.force_close()
            return response
        if len(raw) > self._route.max_body:
            self._reject(request, "too_large", "chunked body over the limit")
            return json_response({"error": "too_large", "detail": f"at most {self._route.max_body} bytes"}, 413)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            self._reject(request, "bad_json", str(exc))
            return json_response({"error": "bad_json", "field": None, "detail": str(exc)}, 400)
        received_at = time.time()
        trace_id = trace_id_or_new(request.headers.get("X-Trace-Id"))
        try:
            decoded = self._route.decode(request.query, body, received_at, trace_id)
        except CodecError as exc:
            if exc.reason == "payload" and self._route.keep_odd_frames and exc.device is not None:
                return await self._quarantined(request, "payload", exc.detail, exc.device, payload=raw)
            self._reject(request, exc.reason, exc.detail, field=exc.field)
            if exc.reason == "payload":
                return json_response({"error": "payload", "detail": exc.detail}, 422)
            return json_response({"error": exc.reason, "field": exc.field, "detail": exc.detail}, 400)
        if isinstance(decoded, str):
            metrics.ingest_events.labels(self._route.protocol, decoded).inc()
            return json_response({"status": "ignored", "event": decoded}, 200)
        reading = decoded
        fields = {"device": reading.device, "seq": reading.seq, "trace_id": reading.trace_id}
        if not self._membership.ready.is_set():
            self._reject(request, "overloaded", "registry not loaded yet", **fields)
            return json_response({"error": "overloaded"}, 503, {"Retry-After": RETRY_AFTER})
        if not self._membership.contains(self._route.protocol, self._codec.number(reading.device)):
            return await self._quarantined(request, "unknown_device", "device not registered or disabled",
                                           reading.device, reading=reading)
        problem = clock_problem(reading.device_time, self._clock.at(received_at), self._max_age)
        if problem:
            return await self._quarantined(request, "clock", problem, reading.device, reading=reading)
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

    async def _quarantined(
        self, request: web.Request, reason: str, detail: str, device: str, *, reading: Reading | None = None,
        payload: bytes = b"",
    ) -> web.Response:
        """Keeps the decoded reading, or the body as received when its frame could not be decoded."""
        trace = {"seq": reading.seq, "trace_id": reading.trace_id} if reading else {}
        self._reject(request, reason, detail, device=device, **trace)
        # Rate-limited per device: every callback comes from the same few network-server addresses.
        source = f"{self._route.protocol}:{device}"
        if not await self._quarantine.put("ingest", reason, detail, source=source, reading=reading,
                                          payload=payload):
            # Not kept: let the backend retry rather than claim we hold it.
            return json_response({"error": "overloaded"}, 503, {"Retry-After": RETRY_AFTER})
        return json_response({"status": "quarantined", "reason": reason}, 202)
