"""Structured JSON logs (structlog) with a rate limiter for floods of rejects."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson
import structlog


def _dumps(obj: Any, default: Any = None) -> str:
    return orjson.dumps(obj, default=default).decode()


def configure(service: str, level: str = "info") -> None:
    """One JSON object per line on stdout; every line names its service."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=_dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stdout),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service)
    # Libraries log through the standard library (aiohttp, asyncio): their lines become JSON lines too.
    root = logging.getLogger()
    root.handlers = [_ToStructlog()]
    root.setLevel(numeric)


class _ToStructlog(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        fields: dict[str, Any] = {"logger": record.name}
        if record.exc_info:
            fields["exc_info"] = record.exc_info
        structlog.get_logger(record.name).log(record.levelno, record.getMessage(), **fields)


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)


class RateLimitedLog:
    """Allows `per_second` lines per key; counts what it suppressed so nothing is silently lost.

    A flood of garbage from one source must not turn into a flood of log lines
    (disk, CPU), yet an operator must see that the flood happened.
    """

    def __init__(self, per_second: float = 1.0, max_keys: int = 10_000) -> None:
        self._interval = 1.0 / per_second
        self._next: dict[object, float] = {}
        self._suppressed: dict[object, int] = {}
        self._max_keys = max_keys

    def allow(self, key: object) -> int | None:
        """Returns None to suppress, else how many lines for `key` were suppressed since the last one."""
        now = time.monotonic()
        due = self._next.get(key, 0.0)
        if now < due:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return None
        if len(self._next) >= self._max_keys:
            self._next.clear()
            self._suppressed.clear()
        self._next[key] = now + self._interval
        return self._suppressed.pop(key, 0)
