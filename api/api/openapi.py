"""The OpenAPI 3.0 document of the read API; tests check the running service against it (schemathesis)."""

from __future__ import annotations

from typing import Any

_ERROR = {
    "type": "object",
    "required": ["error", "detail"],
    "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
}
_PROTOCOL = {
    "name": "protocol", "in": "path", "required": True, "schema": {"type": "string", "enum": ["nbiot", "sigfox"]},
}
_DEVICE = {
    "name": "device", "in": "path", "required": True,
    "schema": {"type": "string", "pattern": "^[0-9A-Fa-f]{1,20}$"},
    "description": "Canonical id: decimal for NB-IoT, hex for Sigfox.",
}
_TS = {"type": "string", "format": "date-time"}
_NULLABLE_TS = {"type": "string", "format": "date-time", "nullable": True}


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "Bad parameters", 401: "Missing or wrong token", 404: "Unknown device"}
    return {
        str(code): {"description": text[code], "content": {"application/json": {"schema": _ERROR}}} for code in codes
    }


_KIND = {"type": "string", "enum": ["leak", "threshold", "silent", "tamper", "reverse_flow", "battery_low"]}
_ALERT = {
    "type": "object",
    "required": ["id", "protocol", "device", "kind", "opened_at", "resolved_at", "day", "detail"],
    "properties": {
        "id": {"type": "integer"},
        "protocol": {"type": "string"},
        "device": {"type": "string"},
        "kind": _KIND,
        "opened_at": _TS,
        "resolved_at": _NULLABLE_TS,
        "day": {"type": "string", "format": "date", "nullable": True},
        "detail": {"type": "object"},
    },
}

SPEC: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "pulsestack read API", "version": "1.0.0",
        "description": "Unknown or repeated query parameters are answered with 400.",
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
    },
    "security": [{"bearer": []}],
    "paths": {
        "/v1/devices/{protocol}/{device}/consumption": {
            "get": {
                "operationId": "consumption",
                "summary": "Consumption of a device over a range, per hour (UTC) or per day (the device's zone)",
                "description": "Hours starting in [from, to); days (in the device's zone) that [from, to) touches.",
                "parameters": [
                    _PROTOCOL, _DEVICE,
                    {"name": "from", "in": "query", "required": True, "schema": _TS},
                    {"name": "to", "in": "query", "required": True, "schema": _TS},
                    {"name": "resolution", "in": "query", "required": False,
                     "schema": {"type": "string", "enum": ["hour", "day"], "default": "hour"}},
                ],
                "responses": {
                    "200": {"description": "Points in time order; periods without pulses are absent", "content": {
                        "application/json": {"schema": {
                            "type": "object",
                            "required": ["protocol", "device", "resolution", "timezone", "pulse_weight", "points"],
                            "properties": {
                                "protocol": {"type": "string"}, "device": {"type": "string"},
                                "resolution": {"type": "string", "enum": ["hour", "day"]},
                                "timezone": {"type": "string"}, "pulse_weight": {"type": "number"},
                                "points": {"type": "array", "items": {
                                    "type": "object", "required": ["start", "pulses", "volume"],
                                    "properties": {
                                        "start": {"type": "string"}, "pulses": {"type": "integer"},
                                        "volume": {"type": "number"},
                                    },
                                }},
                            },
                        }},
                    }},
                    **_errors(400, 401, 404),
                },
            },
        },
        "/v1/devices/{protocol}/{device}/state": {
            "get": {
                "operationId": "state",
                "summary": "A device's last reading and open alerts",
                "parameters": [_PROTOCOL, _DEVICE],
                "responses": {
                    "200": {"description": "Last known state", "content": {"application/json": {"schema": {
                        "type": "object",
                        "required": ["protocol", "device", "last_period_end", "last_seq", "last_index", "last_seen",
                                     "battery_mv", "flags", "readings", "interval_seconds", "open_alerts"],
                        "properties": {
                            "protocol": {"type": "string"}, "device": {"type": "string"},
                            "last_period_end": _TS, "last_seq": {"type": "integer"},
                            "last_index": {"type": "integer"}, "last_seen": _TS,
                            "battery_mv": {"type": "integer"}, "flags": {"type": "integer"},
                            "readings": {"type": "integer"},
                            "interval_seconds": {"type": "integer", "nullable": True},
                            "open_alerts": {"type": "array", "items": {"type": "string"}},
                        },
                    }}}},
                    **_errors(400, 401, 404),
                },
            },
        },
        "/v1/alerts": {
            "get": {
                "operationId": "alerts",
                "summary": "Alerts, newest first",
                "parameters": [
                    {"name": "status", "in": "query", "required": False,
                     "schema": {"type": "string", "enum": ["open", "resolved", "all"], "default": "open"}},
                    {"name": "kind", "in": "query", "required": False, "schema": _KIND},
                    {"name": "limit", "in": "query", "required": False,
                     "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}},
                ],
                "responses": {
                    "200": {"description": "Matching alerts", "content": {"application/json": {"schema": {
                        "type": "object", "required": ["alerts"],
                        "properties": {"alerts": {"type": "array", "items": _ALERT}},
                    }}}},
                    **_errors(400, 401),
                },
            },
        },
    },
}
