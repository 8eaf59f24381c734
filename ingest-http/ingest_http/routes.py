"""The callback routes ingest-http serves, one per network server's format, each with its own tokens."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ingest_http.handler import Route
from pulsestack.wire import sigfox
from pulsestack.wire.reading import Reading


def _sigfox(query: Mapping[str, str], body: Any, received_at: float, trace_id: str) -> Reading:
    return sigfox.decode_callback(body, received_at, trace_id)


# A Sigfox callback is a few hundred bytes.
SIGFOX = Route("/v1/sigfox", sigfox.PROTOCOL, sigfox.PROTOCOL, _sigfox, max_body=4096, keep_odd_frames=False)
ROUTES = (SIGFOX,)
