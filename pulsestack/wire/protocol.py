"""What every protocol's codec tells the rest of the system; each wire module builds one, `codecs` lists them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pulsestack.wire.reading import Flags, Reading


@dataclass(frozen=True, slots=True)
class StoredRaw:
    """What the readings table keeps of a reading that a re-decode reads, and the trace it runs under."""

    device: str
    seq: int
    device_time: int  # Unix seconds
    received_at: float
    trace_id: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class Codec:
    name: str  # the `protocol` of readings, rows, subjects and metric labels
    title: str  # for people
    id_form: str  # what a device id looks like, for people
    keyed: bool  # devices sign their uplinks with a key derived from the master secret
    seq_modulus: int  # a device's sequence number counts up to this and wraps to 0
    canonical: Callable[[str], str]  # an id as given -> its canonical text; ValueError if the protocol cannot carry it
    number: Callable[[str], int]  # canonical id -> the uint64 the registry shards and stores
    text: Callable[[int], str]  # that number -> the canonical id
    redecode: Callable[[StoredRaw], Reading]  # a stored payload read again by today's codec (raises CodecError)
    # Device time -> the end of the reading's last bucket, which the readings table does not store. It must be
    # non-decreasing: then ordering a device's readings by (device_time, seq), their primary key, orders them
    # by period too, the order gaps are computed in (docs/storage-model.md).
    period_end: Callable[[int], int]
    flag_bits: tuple[tuple[int, Flags], ...]  # the device's flag bits -> protocol-neutral flags
