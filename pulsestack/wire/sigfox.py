"""Sigfox backend callbacks and their 12-byte payload, version 1 (docs/wire-formats.md)."""

from __future__ import annotations

import re
from typing import Any

from pulsestack.wire.errors import CodecError
from pulsestack.wire.protocol import Codec, StoredRaw
from pulsestack.wire.reading import Flags, MetaValue, Reading, flag_table, value_problem

PROTOCOL = "sigfox"
CALLBACK_PATH = "/v1/sigfox"  # ingest-http's route, where the Sigfox backend's callback posts
PAYLOAD_SIZE = 12
BUCKET_SECONDS = 900
BUCKETS = 4
SEQ_MODULUS = 4096
_DEVICE_RE = re.compile(r"[0-9A-Fa-f]{1,8}")
_HEX_RE = re.compile(r"(?:[0-9A-Fa-f]{2})*")
FLAG_BITS = ((0x1, Flags.BATTERY_LOW), (0x2, Flags.TAMPER), (0x4, Flags.REVERSE_FLOW))
_FLAGS = flag_table(FLAG_BITS, 16)
_OPTIONAL_META: dict[str, type | tuple[type, ...]] = {
    "deviceTypeId": str, "station": str, "rssi": (int, float), "snr": (int, float), "lqi": str,
}


def canonical_device(raw: str) -> str:
    return raw.upper().lstrip("0") or "0"


def canonical_id(device: str) -> str:
    if not _DEVICE_RE.fullmatch(device):
        raise ValueError(f"{device!r} is not a Sigfox device id: 1 to 8 hex digits")
    return canonical_device(device)


def device_number(device: str) -> int:
    return int(device, 16)


def device_text(number: int) -> str:
    return f"{number:X}"


def decode_payload(payload: bytes) -> tuple[int, int, list[int], int]:
    """Returns (flags, index, counts oldest first, battery mV)."""
    if len(payload) != PAYLOAD_SIZE:
        raise CodecError("payload", f"payload of {len(payload)} bytes (expected {PAYLOAD_SIZE})")
    version = payload[0] >> 4
    if version != 1:
        raise CodecError("payload", f"payload version {version} (expected 1)")
    raw_flags = payload[0] & 0x0F
    if raw_flags & 0x8:
        raise CodecError("payload", "reserved flag bit 3 set")
    index = int.from_bytes(payload[1:5], "big")
    packed = int.from_bytes(payload[5:11], "big")
    counts = [(packed >> shift) & 0xFFF for shift in (36, 24, 12, 0)]
    return _FLAGS[raw_flags], index, counts, 2000 + 10 * payload[11]


def encode_payload(*, index: int, counts: list[int], battery_mv: int, flags: int = 0) -> bytes:
    """Device-side encoding (simulator and tests); `flags` uses the payload's own bits."""
    if len(counts) != BUCKETS or any(not 0 <= c <= 0xFFF for c in counts):
        raise ValueError("four 12-bit counts expected")
    packed = 0
    for count in counts:
        packed = (packed << 12) | count
    battery = max(0, min(255, (battery_mv - 2000) // 10))
    return bytes([0x10 | (flags & 0x7)]) + index.to_bytes(4, "big") + packed.to_bytes(6, "big") + bytes([battery])


def _field(body: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    if name not in body:
        raise CodecError("bad_field", "missing", field=name)
    value = body[name]
    if isinstance(value, bool) or not isinstance(value, kind):
        raise CodecError("bad_field", f"expected {getattr(kind, '__name__', 'number')}", field=name)
    return value


def decode_callback(body: Any, received_at: float, trace_id: str) -> Reading:
    """Validates a parsed callback body; CodecError.reason is bad_field or payload."""
    if not isinstance(body, dict):
        raise CodecError("bad_json", "body is not a JSON object")
    device = _field(body, "device", str)
    if not _DEVICE_RE.fullmatch(device):
        raise CodecError("bad_field", "1 to 8 hex digits expected", field="device")
    time = _field(body, "time", int)
    if not 0 <= time < 2**32:
        raise CodecError("bad_field", "Unix seconds expected", field="time")
    seq = _field(body, "seqNumber", int)
    if not 0 <= seq < SEQ_MODULUS:
        raise CodecError("bad_field", f"0..{SEQ_MODULUS - 1} expected", field="seqNumber")
    data = _field(body, "data", str)
    if not _HEX_RE.fullmatch(data):
        raise CodecError("bad_field", "hex string expected", field="data")
    meta: dict[str, MetaValue] = {}
    for name, kind in _OPTIONAL_META.items():
        if name in body and body[name] is not None:
            value = _field(body, name, kind)
            # Stored in readings.meta (jsonb) and carried in msgpack: both refuse some values.
            problem = value_problem(value)
            if problem:
                raise CodecError("bad_field", problem, field=name)
            meta[name] = value
    if "duplicate" in body:
        if not isinstance(body["duplicate"], bool):
            raise CodecError("bad_field", "expected bool", field="duplicate")
        meta["duplicate"] = body["duplicate"]
    return payload_reading(PROTOCOL, canonical_device(device), seq, time, received_at, trace_id,
                           bytes.fromhex(data), meta or None)


def payload_reading(
    protocol: str, device: str, seq: int, time: int, received_at: float, trace_id: str, payload: bytes,
    meta: dict[str, MetaValue] | None,
) -> Reading:
    """The reading of a v1 payload received at `time` (Unix seconds): its four counts end in the quarter hour
    holding `time`. Every radio carrying the v1 payload (Sigfox, LoRaWAN) builds its readings here."""
    flags, index, counts, battery = decode_payload(payload)
    return Reading(
        protocol=protocol,
        device=device,
        seq=seq,
        device_time=time,
        period_end=period_end(time),
        bucket_seconds=BUCKET_SECONDS,
        counts=counts,
        index=index,
        battery_mv=battery,
        flags=flags,
        received_at=received_at,
        trace_id=trace_id,
        payload=payload,
        meta=meta,
    )


def period_end(device_time: int) -> int:
    """The callback's time falls in the quarter hour after the last bucket's end."""
    return device_time - device_time % BUCKET_SECONDS


def redecode(stored: StoredRaw) -> Reading:
    """The payload holds the counts; the callback's fields (device, seq, time) were stored beside it. The
    callback's metadata is kept in readings.meta, not carried again."""
    return payload_reading(PROTOCOL, stored.device, stored.seq, stored.device_time, stored.received_at,
                           stored.trace_id, stored.payload, None)


CODEC = Codec(
    name=PROTOCOL, title="Sigfox", id_form="1 to 8 hex digits", keyed=False, seq_modulus=SEQ_MODULUS,
    canonical=canonical_id, number=device_number, text=device_text, redecode=redecode, flag_bits=FLAG_BITS,
    period_end=period_end,
)
