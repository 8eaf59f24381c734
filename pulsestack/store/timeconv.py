"""Unix seconds <-> timestamptz values, cached: a batch repeats the same few bucket boundaries."""

from __future__ import annotations

import datetime as dt
from functools import lru_cache


# A batch's boundaries fit many times over. Device times, nearly all distinct, churn through it, so it is
# always full in production: 65,536 entries held 12 MB, which the raw stage's memory grew by on every run.
@lru_cache(maxsize=4_096)
def ts(seconds: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


def ts_float(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


def epoch(value: dt.datetime) -> int:
    return int(value.timestamp())
