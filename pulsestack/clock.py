"""The time that device clocks and calendar months are judged by.

Production reads the wall clock. Compressed-time tests set `PULSESTACK_TEST_CLOCK` to
`<wall epoch> <clock epoch> <rate>`: a clock that showed `<clock epoch>` at wall time `<wall epoch>` and runs
`<rate>` times faster. Every process given the same value reads the same clock, so months of device time go
by in minutes across the ingesters, the maintenance job and the simulated fleet. Only what judges device time
and months reads it; receive times, latencies and timeouts stay on the wall clock.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Clock:
    wall_epoch: float = 0.0
    epoch: float = 0.0
    rate: float = 1.0

    @property
    def compressed(self) -> bool:
        return self.rate != 1.0 or self.epoch != self.wall_epoch

    def now(self) -> float:
        return self.at(time.time())

    def at(self, wall: float) -> float:
        """What this clock showed at wall time `wall` (one wall-clock read serves both, on a hot path)."""
        if not self.compressed:
            return wall
        return self.epoch + (wall - self.wall_epoch) * self.rate

    def today(self) -> dt.date:
        return dt.datetime.fromtimestamp(self.now(), dt.UTC).date()

    def setting(self) -> str:
        """The value of PULSESTACK_TEST_CLOCK that gives another process this clock."""
        return f"{self.wall_epoch!r} {self.epoch!r} {self.rate!r}"

    @classmethod
    def starting_at(cls, epoch: float, rate: float) -> Clock:
        """A clock that shows `epoch` now and runs `rate` times faster than the wall clock."""
        return cls(time.time(), epoch, rate)


WALL = Clock()
