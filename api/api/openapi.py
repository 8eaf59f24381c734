"""The OpenAPI 3.0 document of the read API; tests check the running service against it (schemathesis)."""

from __future__ import annotations

from typing import Any

from pulsestack.wire.codecs import CODECS, PROTOCOLS

_ERROR = {
    "type": "object",
    "required": ["error", "detail"],
    "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
}
_PROTOCOL = {
    "name": "protocol", "in": "path", "required": True, "schema": {"type": "string", "enum": list(PROTOCOLS)},
}
_DEVICE = {
    "name": "device", "in": "path", "required": True,
    "schema": {"type": "string", "pattern": "^[0-9A-Fa-f]{1,20}$"},
    "description": "Canonical id: " + "; ".join(f"{c.title}: {c.id_form}" for c in CODECS.values()) + ".",
}
_TS = {"type": "string", "format": "date-time"}
_NULLABLE_TS = {"type": "string", "format": "date-time", "nullable": True}


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "Bad parameters", 401: "Missing or wrong token", 404: "Unknown device"}
    return {
        str(code): {"description": text[code], "content": {"application/json": {"schema": _ERROR}}} for code in codes
    }


_RANGE = [
    {"name": "from", "in": "query", "required": True, "schema": _TS},
    {"name": "to", "in": "query", "required": True, "schema": _TS},
    {"name": "resolution", "in": "query", "required": False,
     "schema": {"type": "string", "enum": ["hour", "day"], "default": "hour"}},
]
_PROTOCOL_FILTER = {
    "name": "protocol", "in": "query", "required": False, "schema": {"type": "string", "enum": list(PROTOCOLS)},
}
_SILENT = (
    "A device is silent while it has an open `silent` alert: the alerting service opens one when a device has"
    " not been heard from for three of its reporting intervals (or, never heard from, three default intervals"
    " after registration), and it is resolved when the device reports again."
)
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
        "description": "Unknown query parameters, or repeated ones other than `device`, are answered with 400."
                       " Every path but this document and /docs needs a bearer token.",
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
    },
    "security": [{"bearer": []}],
    "paths": {
        "/v1/devices": {
            "get": {
                "operationId": "devices",
                "summary": "Registered devices in (protocol, device) order, a page at a time",
                "description": (
                    "Pass `next` from a page as `cursor` (with the same filters) for the following page; it is"
                    " null on the last page, and a Link header (rel=\"next\") carries the same. Each device"
                    " appears on exactly one page, whatever the page sizes. " + _SILENT
                ),
                "parameters": [
                    {"name": "limit", "in": "query", "required": False,
                     "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}},
                    {"name": "cursor", "in": "query", "required": False, "schema": {"type": "string"},
                     "description": "Opaque: the `next` of the previous page."},
                    _PROTOCOL_FILTER,
                    {"name": "label_prefix", "in": "query", "required": False, "schema": {"type": "string"},
                     "description": "Devices whose label starts with this text (taken literally: no wildcards)."},
                    {"name": "silent", "in": "query", "required": False, "schema": {"type": "boolean"},
                     "description": "Only silent devices (true) or only the others (false)."},
                    {"name": "open_alerts", "in": "query", "required": False, "schema": {"type": "boolean"},
                     "description": "Only devices with an open alert of any kind (true), or with none (false)."},
                ],
                "responses": {
                    "200": {"description": "One page", "content": {"application/json": {"schema": {
                        "type": "object", "required": ["devices", "next"],
                        "properties": {
                            "devices": {"type": "array", "items": {
                                "type": "object",
                                "required": ["protocol", "device", "label", "disabled", "settings", "last_seen",
                                             "interval_seconds", "open_alerts", "silent"],
                                "properties": {
                                    "protocol": {"type": "string"}, "device": {"type": "string"},
                                    "label": {"type": "string", "nullable": True},
                                    "disabled": {"type": "boolean"},
                                    "settings": {"type": "object", "description": (
                                        "As registered; absent keys take their defaults (timezone UTC,"
                                        " pulse_weight 1, no daily_limit).")},
                                    "last_seen": _NULLABLE_TS,
                                    "interval_seconds": {"type": "integer", "nullable": True},
                                    "open_alerts": {"type": "array", "items": _KIND},
                                    "silent": {"type": "boolean"},
                                },
                            }},
                            "next": {"type": "string", "nullable": True},
                        },
                    }}}},
                    **_errors(400, 401),
                },
            },
        },
        "/v1/consumption.csv": {
            "get": {
                "operationId": "export",
                "summary": "Consumption of many devices as CSV, per hour (UTC) or per day (each device's zone)",
                "description": (
                    "For billing: streamed (chunked) from the database as it is read, so an export of every"
                    " device over a long range is never cut by a server deadline; one consistent snapshot."
                    " Without `device`, every registered device (of `protocol`, if given). Periods as in"
                    " /v1/devices/{protocol}/{device}/consumption: hours starting in [from, to), or the"
                    " device-local days that [from, to) touches; periods without pulses are absent."
                ),
                "parameters": [
                    *_RANGE,
                    {"name": "device", "in": "query", "required": False, "style": "form", "explode": True,
                     "schema": {"type": "array", "items": {
                         "type": "string", "pattern": f"^({'|'.join(PROTOCOLS)}):[0-9A-Fa-f]{{1,20}}$"}},
                     "description": "protocol:id, repeatable (device="
                                    + "&device=".join(f"{c.name}:{c.text(0x1A2B)}" for c in CODECS.values()) + ")."},
                    {**_PROTOCOL_FILTER, "description": "Every device of this protocol (not with `device`)."},
                ],
                "responses": {
                    "200": {"description": (
                        "CSV (RFC 4180) with a header row: protocol, device, then `hour` (RFC 3339, UTC) or"
                        " `day` (YYYY-MM-DD, the device's zone), pulses, volume (pulses times the device's"
                        " pulse_weight); rows in (protocol, device, period) order."),
                        "content": {"text/csv": {"schema": {"type": "string"}}}},
                    **_errors(400, 401, 404),
                },
            },
        },
        "/v1/devices/{protocol}/{device}/consumption": {
            "get": {
                "operationId": "consumption",
                "summary": "Consumption of a device over a range, per hour (UTC) or per day (the device's zone)",
                "description": "Hours starting in [from, to); days (in the device's zone) that [from, to) touches.",
                "parameters": [_PROTOCOL, _DEVICE, *_RANGE],
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
