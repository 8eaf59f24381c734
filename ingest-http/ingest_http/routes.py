"""The callback routes ingest-http serves, one per network server's format, each with its own tokens."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ingest_http.handler import Route
from pulsestack.wire import lorawan, sigfox
from pulsestack.wire.reading import Reading


def _sigfox(query: Mapping[str, str], body: Any, received_at: float, trace_id: str) -> Reading:
    return sigfox.decode_callback(body, received_at, trace_id)


def _chirpstack(query: Mapping[str, str], body: Any, received_at: float, trace_id: str) -> Reading | str:
    # ChirpStack's HTTP integration names the event in the URL (`?event=up`), not in the body.
    return lorawan.decode_chirpstack(query.get("event", ""), body, received_at, trace_id)


def _tts(query: Mapping[str, str], body: Any, received_at: float, trace_id: str) -> Reading | str:
    return lorawan.decode_tts(body, received_at, trace_id)


# A Sigfox callback is a few hundred bytes. A LoRaWAN uplink carries one metadata entry per gateway that heard
# it (a few hundred bytes each) and the server's own fields: 32 KiB holds dozens of gateways.
SIGFOX = Route(sigfox.CALLBACK_PATH, sigfox.PROTOCOL, sigfox.PROTOCOL, _sigfox, max_body=4096, keep_odd_frames=False)
LORAWAN_MAX_BODY = 32 * 1024
CHIRPSTACK = Route(lorawan.CALLBACK_BASE + lorawan.SERVER_PATHS[lorawan.CHIRPSTACK], lorawan.PROTOCOL,
                   lorawan.PROTOCOL, _chirpstack, max_body=LORAWAN_MAX_BODY, keep_odd_frames=True)
TTS = Route(lorawan.CALLBACK_BASE + lorawan.SERVER_PATHS[lorawan.TTS], lorawan.PROTOCOL, lorawan.PROTOCOL, _tts,
            max_body=LORAWAN_MAX_BODY, keep_odd_frames=True)
ROUTES = (SIGFOX, CHIRPSTACK, TTS)
