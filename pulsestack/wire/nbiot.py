"""NB-IoT uplink datagrams and their acks, version 1 (docs/wire-formats.md)."""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Sequence

import msgspec

from pulsestack.wire.errors import CodecError
from pulsestack.wire.protocol import Codec, StoredRaw
from pulsestack.wire.reading import ALLOWED_BUCKET_SECONDS, MAX_BUCKETS, Flags, Reading, flag_table

PROTOCOL = "nbiot"
VERSION = 1
ACK_TYPE = 0x80
HEADER = struct.Struct(">BBQIIHBIH")  # version, flags, device, seq, period_end, bucket_s, n, index, battery
TAG_SIZE = 8
MIN_SIZE = HEADER.size + 2 + TAG_SIZE
MAX_SIZE = HEADER.size + 2 * MAX_BUCKETS + TAG_SIZE
ACK = struct.Struct(">BBIB")
ACK_SIZE = ACK.size + TAG_SIZE

ACK_STORED = 0
ACK_DUPLICATE = 1

# Frame bit -> protocol-neutral flag, for every value of the frame's flags byte.
FLAG_BITS = ((0x01, Flags.RETRANSMISSION), (0x02, Flags.BATTERY_LOW), (0x04, Flags.TAMPER), (0x08, Flags.REVERSE_FLOW))
_FLAGS = flag_table(FLAG_BITS, 256)


# The counts of a frame with n buckets, by n: building the format per datagram cost more than unpacking.
_COUNTS = tuple(struct.Struct(f">{n}H") for n in range(MAX_BUCKETS + 1))


class Frame(msgspec.Struct, frozen=True, gc=False):
    """A structurally valid datagram whose tag has not been checked yet. A msgspec struct, not a frozen
    dataclass, whose generated __init__ took 2 µs per datagram; gc=False: it holds no references that
    could form a cycle."""

    flags: int
    device: int
    seq: int
    period_end: int
    bucket_seconds: int
    index: int
    battery_mv: int
    counts: tuple[int, ...]
    signed: bytes  # everything the tag covers
    tag: bytes

    @property
    def device_text(self) -> str:
        return str(self.device)


def _tag(key: bytes, data: bytes) -> bytes:
    return hmac.digest(key, data, hashlib.sha256)[:TAG_SIZE]


def parse(data: bytes) -> Frame:
    """Checks structure only; cheap enough to run on every datagram of a flood."""
    size = len(data)
    if size < MIN_SIZE or size > MAX_SIZE:
        raise CodecError("malformed", f"datagram of {size} bytes (expected {MIN_SIZE}..{MAX_SIZE})")
    version, flags, device, seq, period_end, bucket_seconds, n, index, battery = HEADER.unpack_from(data)
    if version != VERSION:
        raise CodecError("malformed", f"version {version} (expected {VERSION})")
    if not 1 <= n <= MAX_BUCKETS:
        raise CodecError("malformed", f"n = {n} buckets (expected 1..{MAX_BUCKETS})")
    expected = HEADER.size + 2 * n + TAG_SIZE
    if size != expected:
        raise CodecError("malformed", f"{size} bytes for n = {n} (expected {expected})")
    if bucket_seconds not in ALLOWED_BUCKET_SECONDS:
        raise CodecError("misaligned", f"bucket_seconds = {bucket_seconds} not allowed")
    if period_end % bucket_seconds:
        raise CodecError("misaligned", f"period_end {period_end} not a multiple of {bucket_seconds}")
    counts = _COUNTS[n].unpack_from(data, HEADER.size)
    split = size - TAG_SIZE
    return Frame(flags, device, seq, period_end, bucket_seconds, index, battery, counts, data[:split], data[split:])


def verify(frame: Frame, key: bytes) -> bool:
    return hmac.compare_digest(_tag(key, frame.signed), frame.tag)


def to_reading(frame: Frame, received_at: float, trace_id: str, payload: bytes) -> Reading:
    return Reading(
        protocol=PROTOCOL,
        device=frame.device_text,
        seq=frame.seq,
        device_time=frame.period_end,
        period_end=frame.period_end,
        bucket_seconds=frame.bucket_seconds,
        counts=list(frame.counts),
        index=frame.index,
        battery_mv=frame.battery_mv,
        flags=_FLAGS[frame.flags],
        received_at=received_at,
        trace_id=trace_id,
        payload=payload,
    )


def canonical_id(device: str) -> str:
    if not (device.isascii() and device.isdigit()) or not 0 <= int(device) < 2**64:
        raise ValueError(f"{device!r} is not an NB-IoT device id: a decimal number below 2^64 (an IMEI)")
    return str(int(device))


def redecode(stored: StoredRaw) -> Reading:
    """The datagram carries everything but the reception; its tag was checked when it arrived."""
    return to_reading(parse(stored.payload), stored.received_at, stored.trace_id, stored.payload)


def period_end(device_time: int) -> int:
    """A datagram's device time is its period end."""
    return device_time


CODEC = Codec(
    name=PROTOCOL, title="NB-IoT", id_form="decimal ids (IMEI)", keyed=True, seq_modulus=2**32, canonical=canonical_id,
    number=int, text=str, redecode=redecode, flag_bits=FLAG_BITS, period_end=period_end,
)


def encode(
    key: bytes,
    *,
    device: int,
    seq: int,
    period_end: int,
    bucket_seconds: int,
    counts: Sequence[int],
    index: int,
    battery_mv: int,
    flags: int = 0,
) -> bytes:
    """Builds a signed datagram as a device would (used by the simulator and tests)."""
    body = HEADER.pack(VERSION, flags, device, seq, period_end, bucket_seconds, len(counts), index, battery_mv)
    body += struct.pack(f">{len(counts)}H", *counts)
    return body + _tag(key, body)


def encode_ack(key: bytes, seq: int, status: int) -> bytes:
    body = ACK.pack(VERSION, ACK_TYPE, seq, status)
    return body + _tag(key, body)


def decode_ack(key: bytes, data: bytes) -> tuple[int, int]:
    """Returns (seq, status); raises CodecError if the ack is not authentic."""
    if len(data) != ACK_SIZE:
        raise CodecError("malformed", f"ack of {len(data)} bytes")
    version, kind, seq, status = ACK.unpack_from(data)
    if version != VERSION or kind != ACK_TYPE:
        raise CodecError("malformed", "not a v1 ack")
    if not hmac.compare_digest(_tag(key, data[: ACK.size]), data[ACK.size :]):
        raise CodecError("bad_tag", "ack tag does not verify")
    return seq, status
