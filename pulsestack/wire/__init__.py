"""Wire formats: what devices send (codecs) and what travels on the bus (envelopes)."""

from pulsestack.wire.errors import CodecError
from pulsestack.wire.reading import (
    ENVELOPE_VERSION,
    Flags,
    PulseEnvelope,
    PulseItem,
    RawEnvelope,
    Reading,
    decode_pulse,
    decode_raw,
    encode_pulse,
    encode_raw,
)

__all__ = [
    "ENVELOPE_VERSION",
    "CodecError",
    "Flags",
    "PulseEnvelope",
    "PulseItem",
    "RawEnvelope",
    "Reading",
    "decode_pulse",
    "decode_raw",
    "encode_pulse",
    "encode_raw",
]
