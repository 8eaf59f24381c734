"""Unix seconds <-> timestamptz values, cached: a batch repeats the same few bucket boundaries."""

from __future__ import annotations

import datetime as dt
from functools import lru_cache


@lru_cache(maxsize=65_536)
def ts(seconds: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


def ts_float(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


def epoch(value: dt.datetime) -> int:
    return int(value.timestamp())
