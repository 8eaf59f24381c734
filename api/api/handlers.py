"""The read API's handlers: parameters checked, one query each, JSON out."""

from __future__ import annotations

import datetime as dt
from typing import Any

import asyncpg
import orjson
from aiohttp import web

from api.openapi import SPEC
from pulsestack.registry.devices import canonical
from pulsestack.store.alerts import KINDS

PROTOCOLS = ("nbiot", "sigfox")


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
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _only(request: web.Request, *allowed: str) -> None:
    """Unknown or repeated query parameters are refused: a typo must not silently mean "default"."""
    for name in request.query:
        if name not in allowed:
            raise BadParameter(f"unknown parameter {name!r}; allowed: {', '.join(allowed) or 'none'}")
        if len(request.query.getall(name)) > 1:
            raise BadParameter(f"{name} given more than once")


def _device(request: web.Request) -> tuple[str, str]:
    protocol = request.match_info["protocol"]
    if protocol not in PROTOCOLS:
        raise BadParameter(f"protocol must be one of {', '.join(PROTOCOLS)}")
    try:
        return protocol, canonical(protocol, request.match_info["device"])
    except ValueError as exc:
        raise BadParameter(f"device: {exc}") from exc


class ReadApi:
    def __init__(self, pool: asyncpg.Pool, max_points: int) -> None:
        self._pool = pool
        self._max_points = max_points

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/openapi.json", self.openapi)
        app.router.add_get("/v1/devices/{protocol}/{device}/consumption", self.consumption)
        app.router.add_get("/v1/devices/{protocol}/{device}/state", self.state)
        app.router.add_get("/v1/alerts", self.alerts)

    async def openapi(self, _: web.Request) -> web.Response:
        return json_response(SPEC)

    async def consumption(self, request: web.Request) -> web.Response:
        try:
            _only(request, "from", "to", "resolution")
            protocol, device = _device(request)
            start, end = _timestamp(request, "from"), _timestamp(request, "to")
            resolution = request.query.get("resolution", "hour")
            if resolution not in ("hour", "day"):
                raise BadParameter("resolution must be hour or day")
            if end <= start:
                raise BadParameter("to must be after from")
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
                    "SELECT hour AS start, pulses FROM consumption_hourly WHERE protocol = $1 AND device_id = $2"
                    " AND hour >= $3 AND hour < $4 AND pulses <> 0 ORDER BY hour", protocol, device, start, end,
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
        except BadParameter as exc:
            return error(400, "bad_parameter", str(exc))
        status = request.query.get("status", "open")
        kind = request.query.get("kind")
        try:
            limit = int(request.query.get("limit", "100"))
        except ValueError:
            return error(400, "bad_parameter", "limit must be an integer")
        if status not in ("open", "resolved", "all"):
            return error(400, "bad_parameter", "status must be open, resolved or all")
        if kind is not None and kind not in KINDS:
            return error(400, "bad_parameter", f"kind must be one of {', '.join(KINDS)}")
        if not 1 <= limit <= 1000:
            return error(400, "bad_parameter", "limit must be between 1 and 1000")
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
