"""The common envelope every protocol's codec produces; processors only ever see this.

Envelopes travel as msgpack (msgspec, array-like structs): compact and about ten
times cheaper to encode and decode than JSON for the same content.
"""

from __future__ import annotations

import math
import os
import re
from enum import IntFlag

import msgspec

ENVELOPE_VERSION = 1
ALLOWED_BUCKET_SECONDS = frozenset({60, 300, 600, 900, 1800, 3600})
MAX_BUCKETS = 240
MetaValue = str | int | float | bool | None


class Flags(IntFlag):
    """Protocol-neutral reading flags; each codec maps its own bits onto these."""

    BATTERY_LOW = 1
    TAMPER = 2
    REVERSE_FLOW = 4
    RETRANSMISSION = 8


def flag_table(bits: tuple[tuple[int, Flags], ...], size: int) -> tuple[int, ...]:
    """The protocol-neutral flags of every value (0 .. size - 1) of a codec's flag field, given which bit means
    which flag: one lookup per reading instead of a loop of IntFlag operations (each a Python-level call)."""
    table = []
    for value in range(size):
        flags = 0
        for bit, flag in bits:
            if value & bit:
                flags |= flag
        table.append(flags)
    return tuple(table)


class Reading(msgspec.Struct, array_like=True, frozen=True):
    """One uplink message, decoded and authenticated."""

    protocol: str
    device: str  # canonical text form: decimal for NB-IoT, upper-case hex for Sigfox
    seq: int
    device_time: int  # Unix seconds on the device clock: NB-IoT period_end, Sigfox `time`
    period_end: int  # end of the last bucket, a multiple of bucket_seconds
    bucket_seconds: int
    counts: list[int]  # oldest first
    index: int  # cumulative pulse count at period_end, uint32
    battery_mv: int
    flags: int  # Flags
    received_at: float  # ingester clock, Unix seconds
    trace_id: str
    payload: bytes = b""  # the bytes as received, kept in the readings table
    meta: dict[str, MetaValue] | None = None

    @property
    def first_bucket_start(self) -> int:
        return self.period_end - len(self.counts) * self.bucket_seconds

    @property
    def msg_id(self) -> str:
        return f"{self.protocol}:{self.device}:{self.seq}:{self.device_time}"


class RawEnvelope(msgspec.Struct, array_like=True):
    """A RAW message: readings an ingester received within a few milliseconds."""

    v: int
    readings: list[Reading]


_raw_encoder = msgspec.msgpack.Encoder()
_raw_decoder = msgspec.msgpack.Decoder(RawEnvelope)


def encode_raw(readings: list[Reading]) -> bytes:
    return _raw_encoder.encode(RawEnvelope(ENVELOPE_VERSION, readings))


def _check_version(v: int) -> None:
    if v != ENVELOPE_VERSION:
        raise msgspec.ValidationError(f"unsupported envelope version {v}")


def decode_raw(data: bytes) -> RawEnvelope:
    """Raises msgspec.DecodeError / ValidationError on anything that is not a v1 RAW envelope."""
    envelope = _raw_decoder.decode(data)
    _check_version(envelope.v)
    return envelope


DAY_SECONDS = 86_400
MAX_TEXT = 64
# What a trace id may be: it travels in a NATS header and the logs, so no spaces, controls or separators.
_TRACE_ID_RE = re.compile(r"[0-9A-Za-z._:-]{1,64}")


class _TraceIds:
    """Random 64-bit trace ids in hex, cut from one `os.urandom` call per 4,096 ids: a system call per reading
    was a measurable share of the ingesters' time. A forked child starts a fresh batch, not its parent's."""

    BATCH = 4096

    def __init__(self) -> None:
        self._hex = ""
        self._at = 0

    def reset(self) -> None:
        self._hex, self._at = "", 0

    def next(self) -> str:
        at = self._at
        if at >= len(self._hex):
            self._hex, at = os.urandom(8 * self.BATCH).hex(), 0
        self._at = at + 16
        return self._hex[at : at + 16]


_trace_ids = _TraceIds()
os.register_at_fork(after_in_child=_trace_ids.reset)
new_trace_id = _trace_ids.next


def trace_id_or_new(untrusted: str | None) -> str:
    """A client's trace id when it is a safe one; any other (control characters, non-UTF-8 bytes, too long)
    is replaced, since tracing is ours to do and no reason to refuse a reading."""
    if untrusted and _TRACE_ID_RE.fullmatch(untrusted):
        return untrusted
    return new_trace_id()


def text_problem(value: str) -> str | None:
    """Why a text field cannot be stored (PostgreSQL text and jsonb refuse NUL, msgpack lone surrogates),
    or None. Only printable characters pass: a device's metadata has no use for controls or formatting."""
    if len(value) > MAX_TEXT:
        return f"at most {MAX_TEXT} characters"
    if not value.isprintable():
        return "printable characters only"
    return None


def meta_problem(meta: dict[str, MetaValue] | None) -> str | None:
    """Why a reading's metadata cannot be stored, or None."""
    for name, value in (meta or {}).items():
        problem = text_problem(name) or value_problem(value)
        if problem:
            return f"meta {name!r}: {problem}"
    return None


def value_problem(value: MetaValue) -> str | None:
    """Why one metadata value cannot be stored (jsonb, msgpack), or None."""
    if isinstance(value, str):
        return text_problem(value)
    if isinstance(value, float) and not math.isfinite(value):
        return "finite number expected"
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**64:
        return "number out of range"
    return None


def invariant_problem(r: Reading) -> str | None:
    """What makes a decoded reading unusable downstream, or None. Processors re-check what ingest checked:
    a RAW message may come from another ingester version or from a quarantine replay."""
    if not r.counts or len(r.counts) > MAX_BUCKETS:
        return f"{len(r.counts)} buckets"
    if r.bucket_seconds not in ALLOWED_BUCKET_SECONDS:
        return f"bucket_seconds {r.bucket_seconds}"
    if r.period_end % r.bucket_seconds:
        return f"period_end {r.period_end} not aligned to {r.bucket_seconds}"
    if any(c < 0 or c > 0xFFFF for c in r.counts):
        return "count out of range"
    if not 0 <= r.index < 2**32:
        return f"index {r.index} out of range"
    if not 0 <= r.seq < 2**32:
        return f"seq {r.seq} out of range"
    if not 0 < r.device_time < 2**32 or not 0 < r.period_end < 2**32:
        return f"device time {r.device_time} out of range"
    if not r.device or not r.device.isascii() or not r.device.isalnum():
        return "device id"
    return meta_problem(r.meta)


def clock_problem(device_time: int, now: float, max_age_seconds: float) -> str | None:
    """Device clocks drift and reset; readings too far ahead or too old are quarantined, not stored."""
    if device_time > now + DAY_SECONDS:
        return f"device time {device_time} is more than a day ahead"
    if device_time < now - max_age_seconds:
        return f"device time {device_time} is older than {max_age_seconds:.0f} s"
    return None
