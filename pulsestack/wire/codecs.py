"""The one table of protocols: everything outside the wire modules and their ingest routes that depends on a
protocol (the registry's id forms, reprocess, the API, the CLI, metrics, the simulator) reads it here."""

from __future__ import annotations

from pulsestack.wire import lorawan, nbiot, sigfox
from pulsestack.wire.protocol import Codec

CODECS: dict[str, Codec] = {codec.name: codec for codec in (nbiot.CODEC, sigfox.CODEC, lorawan.CODEC)}
PROTOCOLS = tuple(CODECS)


def codec_of(protocol: str) -> Codec:
    """Raises ValueError for a protocol no codec carries."""
    try:
        return CODECS[protocol]
    except KeyError:
        raise ValueError(f"unknown protocol {protocol!r}") from None
