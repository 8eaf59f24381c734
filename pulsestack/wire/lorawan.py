"""LoRaWAN uplinks as network servers' HTTP integrations deliver them: ChirpStack v4 (`?event=up`, a JSON
UplinkEvent) and The Things Stack v3 webhooks (an ApplicationUp with `uplink_message`), carrying on fPort 1
the same 12-byte v1 payload as Sigfox (docs/wire-formats.md).

A reading's identity is (DevEUI, fCnt, the network server's reception time rounded down to the quarter hour):
the v1 payload has no timestamp, a rejoin resets fCnt, and a webhook the server delivers again carries the
same fields, so a retry lands on the same database key and JetStream message id and is stored once.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pulsestack.wire import sigfox
from pulsestack.wire.errors import CodecError
from pulsestack.wire.protocol import Codec, StoredRaw
from pulsestack.wire.reading import MetaValue, Reading, value_problem

PROTOCOL = "lorawan"
CHIRPSTACK = "chirpstack"
TTS = "tts"
# ingest-http's routes: the webhooks' base, and below it one path per network server.
CALLBACK_BASE = "/v1/lorawan"
SERVER_PATHS = {CHIRPSTACK: "/chirpstack", TTS: "/tts"}
PAYLOAD_PORT = 1  # the v1 payload's application port
SEQ_MODULUS = 2**32  # LoRaWAN's 32-bit FCntUp
IDENTITY_SECONDS = sigfox.BUCKET_SECONDS
_EUI_RE = re.compile(r"[0-9A-Fa-f]{16}")
# RFC 3339 as both servers write it (protobuf's Timestamp JSON, Go's time.Time): the fraction may have up to
# nine digits, which datetime.fromisoformat refuses on Python 3.11; only whole seconds matter here.
_TIME_RE = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.\d{1,9})?(Z|[+-]\d\d:\d\d)")
# ChirpStack's HTTP integration names the event in `?event=`; only `up` carries a reading.
UPLINK_EVENT = "up"
OTHER_EVENT = "other"  # an event name neither server documents: a bounded metric label
CHIRPSTACK_EVENTS = frozenset({"up", "join", "status", "ack", "txack", "log", "location", "integration"})
# The Things Stack's ApplicationUp holds exactly one message; every kind but `uplink_message` is answered only.
UPLINK_MESSAGE = "uplink_message"
TTS_EVENTS = (
    UPLINK_MESSAGE, "uplink_normalized", "join_accept", "downlink_ack", "downlink_nack", "downlink_sent",
    "downlink_failed", "downlink_queued", "downlink_queue_invalidated", "location_solved", "service_data",
)


def canonical_id(device: str) -> str:
    if not _EUI_RE.fullmatch(device):
        raise ValueError(f"{device!r} is not a LoRaWAN DevEUI: 16 hex digits")
    return device.upper()


def device_number(device: str) -> int:
    return int(device, 16)


def device_text(number: int) -> str:
    return f"{number:016X}"


@dataclass(frozen=True, slots=True)
class Uplink:
    """What a network server's uplink says before its application payload is read."""

    device: str  # canonical DevEUI
    seq: int  # fCnt
    time: int  # identity time: the server's reception, rounded down to the quarter hour
    port: int
    payload: bytes
    meta: dict[str, MetaValue]


def _object(body: Any, name: str) -> dict[str, Any]:
    value = body.get(name)
    if not isinstance(value, dict):
        raise CodecError("bad_field", "missing" if value is None else "expected object", field=name)
    return value


def _uint(body: dict[str, Any], name: str, field: str, limit: int) -> int:
    """Protobuf-JSON omits zero values, so a missing number is 0."""
    value = body.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < limit:
        raise CodecError("bad_field", f"integer 0..{limit - 1} expected", field=field)
    return value


def _eui(value: Any, field: str) -> str:
    if not isinstance(value, str) or not _EUI_RE.fullmatch(value):
        raise CodecError("bad_field", "16 hex digits expected", field=field)
    return value.upper()


def _identity_time(value: Any, field: str) -> int:
    match = _TIME_RE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise CodecError("bad_field", "RFC 3339 time expected", field=field)
    try:
        seconds = int(datetime.fromisoformat(match[1] + match[2].replace("Z", "+00:00")).timestamp())
    except ValueError as exc:
        raise CodecError("bad_field", str(exc), field=field) from None
    if not 0 < seconds < 2**32:
        raise CodecError("bad_field", "time out of range", field=field)
    return seconds - seconds % IDENTITY_SECONDS


def _bytes(body: dict[str, Any], name: str, field: str) -> bytes:
    value = body.get(name, "")
    if not isinstance(value, str):
        raise CodecError("bad_field", "base64 string expected", field=field)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise CodecError("bad_field", "base64 string expected", field=field) from None


def _text(value: Any, field: str) -> str:
    if not isinstance(value, str) or value_problem(value):
        raise CodecError("bad_field", "text of at most 64 printable characters expected", field=field)
    return value


def _reception(entries: Any, field: str) -> dict[str, MetaValue]:
    """The number of gateways that heard the uplink and the best signal among them."""
    if entries is None:
        return {}
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise CodecError("bad_field", "list of objects expected", field=field)
    best: dict[str, float] = {}
    for entry in entries:
        signal: dict[str, float] = {}
        for name in ("rssi", "snr"):
            value = entry.get(name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or value_problem(value):
                raise CodecError("bad_field", "finite number expected", field=f"{field}[].{name}")
            signal[name] = value
        if not best or signal.get("rssi", -math.inf) > best.get("rssi", -math.inf):
            best = signal
    return {"gateways": len(entries), **best}


@dataclass(frozen=True, slots=True)
class _Names:
    """Where a server's JSON keeps an uplink's fields."""

    prefix: str  # of the object holding them, for error messages
    f_cnt: str
    time: str
    f_port: str
    data: str
    rx: str  # the gateways' reception metadata


_CHIRPSTACK_NAMES = _Names("", "fCnt", "time", "fPort", "data", "rxInfo")
_TTS_NAMES = _Names("uplink_message.", "f_cnt", "received_at", "f_port", "frm_payload", "rx_metadata")


def _uplink(device: str, message: dict[str, Any], names: _Names, meta: dict[str, MetaValue]) -> Uplink:
    at = names.prefix
    meta.update(_reception(message.get(names.rx), at + names.rx))
    return Uplink(
        device=device,
        seq=_uint(message, names.f_cnt, at + names.f_cnt, SEQ_MODULUS),
        time=_identity_time(message.get(names.time), at + names.time),
        port=_uint(message, names.f_port, at + names.f_port, 256),
        payload=_bytes(message, names.data, at + names.data),
        meta=meta,
    )


def parse_chirpstack(body: Any) -> Uplink:
    """A ChirpStack v4 UplinkEvent in its protobuf-JSON form (camelCase, zero values omitted)."""
    if not isinstance(body, dict):
        raise CodecError("bad_json", "body is not a JSON object")
    device = _eui(_object(body, "deviceInfo").get("devEui"), "deviceInfo.devEui")
    meta: dict[str, MetaValue] = {"server": CHIRPSTACK}
    if "deduplicationId" in body:
        meta["uplinkId"] = _text(body["deduplicationId"], "deduplicationId")
    return _uplink(device, body, _CHIRPSTACK_NAMES, meta)


def parse_tts(body: Any) -> Uplink:
    """A The Things Stack v3 ApplicationUp carrying an `uplink_message` (snake_case, zero values omitted)."""
    if not isinstance(body, dict):
        raise CodecError("bad_json", "body is not a JSON object")
    device = _eui(_object(body, "end_device_ids").get("dev_eui"), "end_device_ids.dev_eui")
    meta: dict[str, MetaValue] = {"server": TTS}
    ids = body.get("correlation_ids")
    if ids is not None:
        if not isinstance(ids, list) or not ids:
            raise CodecError("bad_field", "non-empty list of text expected", field="correlation_ids")
        meta["uplinkId"] = _text(ids[0], "correlation_ids")
    return _uplink(device, _object(body, "uplink_message"), _TTS_NAMES, meta)


def to_reading(uplink: Uplink, received_at: float, trace_id: str) -> Reading:
    """Raises CodecError("payload", device=...) for a frame on another port or of another length than the v1
    payload."""
    if uplink.port != PAYLOAD_PORT:
        raise CodecError("payload", f"fPort {uplink.port} (expected {PAYLOAD_PORT})", device=uplink.device)
    try:
        return sigfox.payload_reading(PROTOCOL, uplink.device, uplink.seq, uplink.time, received_at, trace_id,
                                      uplink.payload, uplink.meta)
    except CodecError as exc:
        raise CodecError(exc.reason, exc.detail, device=uplink.device) from None


def decode_chirpstack(event: str, body: Any, received_at: float, trace_id: str) -> Reading | str:
    """The reading of an `up` event; for any other event its name (`other` for one this module does not
    know), to be answered and counted, never stored."""
    if event != UPLINK_EVENT:
        return event if event in CHIRPSTACK_EVENTS else OTHER_EVENT
    return to_reading(parse_chirpstack(body), received_at, trace_id)


def decode_tts(body: Any, received_at: float, trace_id: str) -> Reading | str:
    """The reading of an `uplink_message`; for any other message its kind, answered and counted only."""
    if not isinstance(body, dict):
        raise CodecError("bad_json", "body is not a JSON object")
    kind = next((name for name in TTS_EVENTS if name in body), OTHER_EVENT)
    if kind != UPLINK_MESSAGE:
        return kind
    return to_reading(parse_tts(body), received_at, trace_id)


def redecode(stored: StoredRaw) -> Reading:
    """The payload holds the counts; DevEUI, fCnt and identity time were stored beside it, the webhook's
    metadata in readings.meta."""
    return sigfox.payload_reading(PROTOCOL, stored.device, stored.seq, stored.device_time, stored.received_at,
                                  stored.trace_id, stored.payload, None)


def _rfc3339(time: float) -> str:
    return datetime.fromtimestamp(time, UTC).isoformat()


def chirpstack_uplink(device: int, seq: int, time: float, payload: bytes, port: int = PAYLOAD_PORT,
                      uplink_id: str | None = None) -> dict[str, Any]:
    """An `up` event as ChirpStack's HTTP integration writes it, zero values left out (simulator and tests)."""
    body: dict[str, Any] = {
        "deduplicationId": uplink_id or f"{device:016x}-{seq}-{int(time)}", "time": _rfc3339(time),
        "deviceInfo": {"devEui": f"{device:016x}"}, "data": base64.b64encode(payload).decode(),
        "rxInfo": [{"gatewayId": "0016c001f153a14c", "rssi": -100, "snr": 7.5}],
    }
    body.update({name: value for name, value in (("fCnt", seq), ("fPort", port)) if value})
    return body


def tts_uplink(device: int, seq: int, time: float, payload: bytes, port: int = PAYLOAD_PORT) -> dict[str, Any]:
    """An ApplicationUp with an `uplink_message` as The Things Stack's webhooks write it (simulator and tests)."""
    message: dict[str, Any] = {
        "frm_payload": base64.b64encode(payload).decode(), "received_at": _rfc3339(time),
        "rx_metadata": [{"gateway_ids": {"gateway_id": "gtw1"}, "rssi": -100, "snr": 7.5}],
    }
    message.update({name: value for name, value in (("f_cnt", seq), ("f_port", port)) if value})
    return {
        "end_device_ids": {"device_id": f"meter-{device:x}", "dev_eui": f"{device:016X}"},
        "correlation_ids": [f"as:up:{device:016X}{seq:08X}"], "received_at": _rfc3339(time),
        "uplink_message": message,
    }


CODEC = Codec(
    name=PROTOCOL, title="LoRaWAN", id_form="DevEUI, 16 hex digits", keyed=False, seq_modulus=SEQ_MODULUS,
    canonical=canonical_id, number=device_number, text=device_text, redecode=redecode, flag_bits=sigfox.FLAG_BITS,
    # The identity time is the reception rounded down to the quarter hour, read as Sigfox's callback time is.
    period_end=sigfox.period_end,
)
