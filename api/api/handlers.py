"""The read API's handlers: parameters checked, one query each, JSON out (CSV for the export)."""

from __future__ import annotations

import base64
import binascii
import csv
import datetime as dt
import io
from typing import Any

import asyncpg
import orjson
from aiohttp import web

from api.docs import page
from api.openapi import SPEC
from pulsestack.alerts.changes import KINDS
from pulsestack.logs import get_logger
from pulsestack.registry.devices import canonical
from pulsestack.wire.codecs import PROTOCOLS

log = get_logger(__name__)

DOCS = page(SPEC)
MAX_PAGE = 1000
# Rows per fetch from the export's server-side cursor, and per HTTP chunk: memory stays at one batch.
EXPORT_BATCH = 2000


class BadParameter(Exception):
    pass


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def error(status: int, code: str, detail: str) -> web.Response:
    return json_response({"error": code, "detail": detail}, status)


def _timestamp(request: web.Request, name: str) -> dt.datetime:
    raw = request.query.get(name)
    if raw is None:
        raise BadParameter(f"{name} is required")
    try:
        value = dt.datetime.fromisoformat(raw)
    except ValueError as exc:
        raise BadParameter(f"{name}: RFC 3339 date-time expected") from exc
    try:
        return value.astimezone(dt.UTC) if value.tzinfo else value.replace(tzinfo=dt.UTC)
    except OverflowError as exc:  # in UTC, before year 1 or after 9999
        raise BadParameter(f"{name}: out of range") from exc


def _only(request: web.Request, *allowed: str, repeatable: tuple[str, ...] = ()) -> None:
    """Unknown or repeated query parameters are refused: a typo must not silently mean "default"."""
    for name in request.query:
        if name not in allowed and name not in repeatable:
            raise BadParameter(f"unknown parameter {name!r}; allowed: {', '.join(allowed + repeatable) or 'none'}")
        if name not in repeatable and len(request.query.getall(name)) > 1:
            raise BadParameter(f"{name} given more than once")


def _range(request: web.Request) -> tuple[dt.datetime, dt.datetime]:
    start, end = _timestamp(request, "from"), _timestamp(request, "to")
    if end <= start:
        raise BadParameter("to must be after from")
    return start, end


def _resolution(request: web.Request) -> str:
    resolution = request.query.get("resolution", "hour")
    if resolution not in ("hour", "day"):
        raise BadParameter("resolution must be hour or day")
    return resolution


def _protocol(value: str | None) -> str | None:
    if value is not None and value not in PROTOCOLS:
        raise BadParameter(f"protocol must be one of {', '.join(PROTOCOLS)}")
    return value


def _boolean(request: web.Request, name: str) -> bool | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    if raw not in ("true", "false"):
        raise BadParameter(f"{name} must be true or false")
    return raw == "true"


def _limit(request: web.Request, default: int) -> int:
    try:
        limit = int(request.query.get("limit", str(default)))
    except ValueError as exc:
        raise BadParameter("limit must be an integer") from exc
    if not 1 <= limit <= MAX_PAGE:
        raise BadParameter(f"limit must be between 1 and {MAX_PAGE}")
    return limit


_NOT_A_CURSOR = "cursor: not a cursor this API issued (take `next` from a previous page)"


def _cursor_after(protocol: str, device: str) -> str:
    """An opaque position in (protocol, device) order: the page after it starts past that device."""
    return base64.urlsafe_b64encode(orjson.dumps([protocol, device])).decode().rstrip("=")


def _position(request: web.Request) -> tuple[str, str]:
    """Where a page starts: after the cursor's device, or before every device (protocols are never empty)."""
    raw = request.query.get("cursor")
    if raw is None:
        return "", ""
    try:
        position = orjson.loads(base64.b64decode(raw + "=" * (-len(raw) % 4), altchars=b"-_", validate=True))
    except (binascii.Error, ValueError, orjson.JSONDecodeError) as exc:
        raise BadParameter(_NOT_A_CURSOR) from exc
    try:
        protocol, device = position
        if not isinstance(device, str) or canonical(protocol, device) != device:
            raise ValueError(device)
    except (TypeError, ValueError) as exc:  # a position no device can have
        raise BadParameter(_NOT_A_CURSOR) from exc
    return protocol, device


def _label_prefix(request: web.Request) -> str | None:
    prefix = request.query.get("label_prefix")
    if prefix is not None and "\0" in prefix:
        raise BadParameter("label_prefix: no label contains NUL")
    return prefix


def _listed_devices(request: web.Request) -> list[tuple[str, str]]:
    """`device` values, `protocol:id` each, canonical and without repeats, in (protocol, device) order."""
    listed = set()
    for value in request.query.getall("device", []):
        protocol, _, device = value.partition(":")
        if protocol not in PROTOCOLS:
            raise BadParameter(f"device {value!r}: protocol:id expected, protocol one of {', '.join(PROTOCOLS)}")
        try:
            listed.add((protocol, canonical(protocol, device)))
        except ValueError as exc:
            raise BadParameter(f"device: {exc}") from exc
    return sorted(listed)


def _device(request: web.Request) -> tuple[str, str]:
    protocol = request.match_info["protocol"]
    _protocol(protocol)
    try:
        return protocol, canonical(protocol, request.match_info["device"])
    except ValueError as exc:
        raise BadParameter(f"device: {exc}") from exc


# Keyset pagination: the primary key's order, each page an index range after the previous page's last device.
# "Silent" is the alerting service's verdict (an open `silent` alert), not a second definition.
_DEVICES = """
SELECT d.protocol, d.device_id, d.label, d.disabled, d.settings, s.last_seen, s.interval_seconds,
       ARRAY(SELECT kind FROM alerts a WHERE a.protocol = d.protocol AND a.device_id = d.device_id
             AND a.resolved_at IS NULL ORDER BY kind) AS open_alerts
FROM devices d LEFT JOIN device_state s ON s.protocol = d.protocol AND s.device_id = d.device_id
WHERE (d.protocol, d.device_id) > ($1::text, $2::text)
  AND ($3::text IS NULL OR d.protocol = $3)
  AND ($4::text IS NULL OR starts_with(d.label, $4))
  AND ($5::boolean IS NULL OR $5 = EXISTS (SELECT FROM alerts a WHERE a.protocol = d.protocol
       AND a.device_id = d.device_id AND a.resolved_at IS NULL AND a.kind = 'silent'))
  AND ($6::boolean IS NULL OR $6 = EXISTS (SELECT FROM alerts a WHERE a.protocol = d.protocol
       AND a.device_id = d.device_id AND a.resolved_at IS NULL))
ORDER BY d.protocol, d.device_id
LIMIT $7
"""
# The devices an export covers: all (of one protocol, or every one), or those listed.
_ALL_DEVICES = "SELECT protocol, device_id, settings FROM devices WHERE $3::text IS NULL OR protocol = $3"
_LISTED_DEVICES = (
    "SELECT d.protocol, d.device_id, d.settings FROM unnest($3::text[], $4::text[]) AS w(protocol, device_id)"
    " JOIN devices d ON d.protocol = w.protocol AND d.device_id = w.device_id"
)
_UNKNOWN_DEVICES = (
    "SELECT protocol, device_id FROM unnest($1::text[], $2::text[]) AS w(protocol, device_id)"
    " EXCEPT SELECT protocol, device_id FROM devices ORDER BY 1, 2 LIMIT 5"
)
# Device by device (LATERAL), an index range of each one's rollup: the work follows the devices and the range,
# not the table's size, and rows leave in (protocol, device, period) order while later devices are still
# unread (only one device's periods are sorted at a time). The inner ORDER BY keeps the planner from flattening
# the subquery into a scan of the whole rollup index. Settings with their defaults: migration 011.
_WEIGHT = "device_pulse_weight(d.settings)::float8"
_ZONE = "device_time_zone(d.settings)"
_EXPORT = {
    "hour": f"""
SELECT d.protocol, d.device_id, c.start, c.pulses, c.pulses * {_WEIGHT} AS volume
FROM ({{devices}}) d CROSS JOIN LATERAL (
    SELECT hour AS start, pulses FROM consumption_hourly_between($1, $2::timestamptz + interval '1 hour') c
    WHERE c.protocol = d.protocol AND c.device_id = d.device_id AND c.hour >= $1 AND c.hour < $2 AND c.pulses <> 0
    ORDER BY c.hour) c
ORDER BY d.protocol, d.device_id, c.start
""",
    "day": f"""
SELECT d.protocol, d.device_id, c.start, c.pulses, c.pulses * {_WEIGHT} AS volume
FROM ({{devices}}) d CROSS JOIN LATERAL (
    SELECT day AS start, pulses FROM consumption_daily c WHERE c.protocol = d.protocol AND c.device_id = d.device_id
    AND c.day >= ($1 AT TIME ZONE {_ZONE})::date
    AND c.day <= (($2::timestamptz - interval '1 microsecond') AT TIME ZONE {_ZONE})::date AND c.pulses <> 0
    ORDER BY c.day) c
ORDER BY d.protocol, d.device_id, c.start
""",
}


def _csv(rows: list[asyncpg.Record]) -> bytes:
    out = io.StringIO()
    csv.writer(out).writerows((r["protocol"], r["device_id"], r["start"].isoformat(), r["pulses"], r["volume"])
                              for r in rows)
    return out.getvalue().encode()


class ReadApi:
    def __init__(self, pool: asyncpg.Pool, export_pool: asyncpg.Pool, max_points: int) -> None:
        self._pool = pool
        # Exports hold a connection for as long as the client reads: their own pool, so a few long ones
        # queue among themselves and never starve the other endpoints.
        self._export_pool = export_pool
        self._max_points = max_points

    def routes(self, app: web.Application) -> None:
        for path in ("/openapi.json", "/v1/openapi.json"):
            app.router.add_get(path, self.openapi)
        app.router.add_get("/docs", self.docs)
        app.router.add_get("/v1/devices", self.devices)
        app.router.add_get("/v1/devices/{protocol}/{device}/consumption", self.consumption)
        app.router.add_get("/v1/devices/{protocol}/{device}/state", self.state)
        app.router.add_get("/v1/consumption.csv", self.export)
        app.router.add_get("/v1/alerts", self.alerts)

    async def openapi(self, _: web.Request) -> web.Response:
        return json_response(SPEC)

    async def docs(self, _: web.Request) -> web.Response:
        return web.Response(text=DOCS, content_type="text/html")

    async def devices(self, request: web.Request) -> web.Response:
        try:
            _only(request, "limit", "cursor", "protocol", "label_prefix", "silent", "open_alerts")
            limit = _limit(request, 100)
            after = _position(request)
            protocol = _protocol(request.query.get("protocol"))
            label_prefix = _label_prefix(request)
            silent, open_alerts = _boolean(request, "silent"), _boolean(request, "open_alerts")
        except BadParameter as exc:
            return error(400, "bad_parameter", str(exc))
        rows = await self._pool.fetch(
            _DEVICES, *after, protocol, label_prefix, silent, open_alerts, limit + 1)
        page, more = rows[:limit], len(rows) > limit
        following = _cursor_after(page[-1]["protocol"], page[-1]["device_id"]) if more else None
        response = json_response({"devices": [
            {"protocol": r["protocol"], "device": r["device_id"], "label": r["label"], "disabled": r["disabled"],
             "settings": orjson.loads(r["settings"]), "last_seen": r["last_seen"],
             "interval_seconds": r["interval_seconds"], "open_alerts": list(r["open_alerts"]),
             "silent": "silent" in r["open_alerts"]}
            for r in page
        ], "next": following})
        if following is not None:
            response.headers["Link"] = f'<{request.rel_url.update_query(cursor=following)}>; rel="next"'
        return response

    async def export(self, request: web.Request) -> web.StreamResponse:
        try:
            _only(request, "from", "to", "resolution", "protocol", repeatable=("device",))
            start, end = _range(request)
            resolution = _resolution(request)
            protocol = _protocol(request.query.get("protocol"))
            listed = _listed_devices(request)
            if listed and protocol is not None:
                raise BadParameter("give device or protocol, not both")
        except BadParameter as exc:
            return error(400, "bad_parameter", str(exc))
        protocols, ids = [p for p, _ in listed], [d for _, d in listed]
        args: list[object]
        async with self._export_pool.acquire() as conn, conn.transaction(isolation="repeatable_read",
                                                                         readonly=True):
            if listed:
                unknown = await conn.fetch(_UNKNOWN_DEVICES, protocols, ids)
                if unknown:
                    names = ", ".join(f"{r['protocol']}:{r['device_id']}" for r in unknown)
                    return error(404, "unknown_device", f"not registered: {names}")
                query, args = _EXPORT[resolution].format(devices=_LISTED_DEVICES), [protocols, ids]
            else:
                query, args = _EXPORT[resolution].format(devices=_ALL_DEVICES), [protocol]
            rows = await conn.cursor(query, start, end, *args)
            response = web.StreamResponse(headers={
                "Content-Type": "text/csv; charset=utf-8",
                "Content-Disposition": f'attachment; filename="consumption-{resolution}.csv"',
            })
            # Chunked, with no deadline of ours on writing: the export lasts as long as the client reads.
            await response.prepare(request)
            sent = 0
            try:
                await response.write(f"protocol,device,{resolution},pulses,volume\r\n".encode())
                while batch := await rows.fetch(EXPORT_BATCH):
                    await response.write(_csv(batch))
                    sent += len(batch)
            except ConnectionResetError:  # the client's choice: one line, and the snapshot ends with it
                log.info("export abandoned by the client", rows_sent=sent)
                return response
        await response.write_eof()
        return response

    async def consumption(self, request: web.Request) -> web.Response:
        try:
            _only(request, "from", "to", "resolution")
            protocol, device = _device(request)
            start, end = _range(request)
            resolution = _resolution(request)
            step = 3600 if resolution == "hour" else 86_400
            if (end - start).total_seconds() / step > self._max_points:
                raise BadParameter(f"at most {self._max_points} points per request")
        except BadParameter as exc:
            return error(400, "bad_parameter", str(exc))
        async with self._pool.acquire() as conn:
            settings = await conn.fetchval(
                "SELECT settings FROM devices WHERE protocol = $1 AND device_id = $2", protocol, device
            )
            if settings is None:
                return error(404, "unknown_device", f"{protocol} device {device} is not registered")
            settings = orjson.loads(settings)
            zone = str(settings.get("timezone", "UTC"))
            if resolution == "hour":
                rows = await conn.fetch(
                    # The function reads only the readings that can cover the range; the hour of `end`'s
                    # buckets is included, the range's own bounds decide which hours are answered.
                    "SELECT hour AS start, pulses"
                    " FROM consumption_hourly_between($3, $4::timestamptz + interval '1 hour')"
                    " WHERE protocol = $1 AND device_id = $2 AND hour >= $3 AND hour < $4 AND pulses <> 0"
                    " ORDER BY hour", protocol, device, start, end,
                )
                points = [(r["start"].isoformat(), r["pulses"]) for r in rows]
            else:
                rows = await conn.fetch(
                    "SELECT day AS start, pulses FROM consumption_daily WHERE protocol = $1 AND device_id = $2"
                    " AND day >= ($3 AT TIME ZONE $5)::date"
                    " AND day <= (($4::timestamptz - interval '1 microsecond') AT TIME ZONE $5)::date"
                    " AND pulses <> 0"
                    " ORDER BY day", protocol, device, start, end, zone,
                )
                points = [(r["start"].isoformat(), r["pulses"]) for r in rows]
        weight = float(settings.get("pulse_weight", 1))
        return json_response({
            "protocol": protocol, "device": device, "resolution": resolution, "timezone": zone,
            "pulse_weight": weight,
            "points": [{"start": s, "pulses": n, "volume": n * weight} for s, n in points],
        })

    async def state(self, request: web.Request) -> web.Response:
        try:
            _only(request)
            protocol, device = _device(request)
        except BadParameter as exc:
            return error(400, "bad_parameter", str(exc))
        row = await self._pool.fetchrow(
            "SELECT s.*, ARRAY(SELECT kind FROM alerts a WHERE a.protocol = s.protocol AND a.device_id = s.device_id"
            " AND a.resolved_at IS NULL ORDER BY kind) AS open_alerts"
            " FROM device_state s WHERE s.protocol = $1 AND s.device_id = $2", protocol, device,
        )
        if row is None:
            return error(404, "unknown_device", f"no reading stored for {protocol} device {device}")
        return json_response({
            "protocol": protocol, "device": device, "last_period_end": row["last_period_end"],
            "last_seq": row["last_seq"], "last_index": row["last_index"], "last_seen": row["last_seen"],
            "battery_mv": row["last_battery_mv"], "flags": row["last_flags"], "readings": row["readings"],
            "interval_seconds": row["interval_seconds"], "open_alerts": list(row["open_alerts"]),
        })

    async def alerts(self, request: web.Request) -> web.Response:
        try:
            _only(request, "status", "kind", "limit")
            limit = _limit(request, 100)
        except BadParameter as exc:
            return error(400, "bad_parameter", str(exc))
        status = request.query.get("status", "open")
        kind = request.query.get("kind")
        if status not in ("open", "resolved", "all"):
            return error(400, "bad_parameter", "status must be open, resolved or all")
        if kind is not None and kind not in KINDS:
            return error(400, "bad_parameter", f"kind must be one of {', '.join(KINDS)}")
        rows = await self._pool.fetch(
            "SELECT id, protocol, device_id, kind, opened_at, resolved_at, day, detail FROM alerts"
            " WHERE ($1 = 'all' OR ($1 = 'open') = (resolved_at IS NULL)) AND ($2::text IS NULL OR kind = $2)"
            " ORDER BY id DESC LIMIT $3", status, kind, limit,
        )
        return json_response({"alerts": [
            {"id": r["id"], "protocol": r["protocol"], "device": r["device_id"], "kind": r["kind"],
             "opened_at": r["opened_at"], "resolved_at": r["resolved_at"], "day": r["day"],
             "detail": orjson.loads(r["detail"])}
            for r in rows
        ]})
