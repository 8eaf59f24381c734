"""Bearer tokens (the Sigfox backend's, the read API's), re-read when their file changes so they rotate live."""

from __future__ import annotations

import asyncio
import hmac
from pathlib import Path

from pulsestack.logs import get_logger
from pulsestack.service import sleep_or_stop

log = get_logger(__name__)


class Tokens:
    def __init__(self, path: Path | None, inline: tuple[str, ...], name: str) -> None:
        self._name = name
        self._path = path
        self._inline = tuple(t.encode() for t in inline)
        self._tokens: tuple[bytes, ...] = self._inline
        self._mtime = 0.0
        self.reload()

    def reload(self) -> None:
        if self._path is None:
            return
        try:
            mtime = self._path.stat().st_mtime
            if mtime == self._mtime:
                return
            lines = self._path.read_text().split()
        except OSError as exc:  # replaced or removed meanwhile: the tokens loaded last stay valid
            log.error("tokens file unreadable", tokens=self._name, path=str(self._path), error=exc.strerror)
            return
        self._tokens = tuple(line.encode() for line in lines) + self._inline
        self._mtime = mtime
        log.info("tokens loaded", tokens=self._name, count=len(self._tokens))

    async def keep_reloading(self, stop: asyncio.Event, every: float = 5.0) -> None:
        """Re-reads the file every `every` seconds until `stop` is set: a rotated token is live within that."""
        while not await sleep_or_stop(stop, every):
            self.reload()

    def valid(self, header: str | None) -> bool:
        if not header or not header.startswith("Bearer "):
            return False
        offered = header[7:].strip().encode()
        # Compare against every token without stopping early: timing reveals nothing.
        return sum(hmac.compare_digest(offered, token) for token in self._tokens) > 0
