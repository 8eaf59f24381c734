"""What a fleet sends in a window of time, as columns (`ReadingBatch`).

Two kinds of fleet:

- `HourlyFleet`: millions of registered meters reporting once an hour, each at its own second of the
  hour. A window of W seconds holds only the meters due in it (about registered x W / 3600 of them),
  found by arithmetic, not by scanning the fleet. This is the reference design's load test at real rates.
- `RampPool`: a pool of meters whose clocks run behind real time and catch up, several hourly readings
  each per step (compressed time), to offer rates far above what any real fleet sends per hour.
  Clocks carry over from one step to the next, so consecutive steps continue each meter's series.

Both use the profiles (day/night consumption, leaks, silent and wrapping meters) and give every reading
a send time, in seconds from the start of its window.
"""

from __future__ import annotations

import math
import time
from array import array
from dataclasses import dataclass, field

from pulsestack.wire.codecs import CODECS
from simulator.batch import ReadingBatch
from simulator.fleet import BUCKET_SECONDS, BUCKETS, carried_time, sent_time, simulated_id, simulated_number
from simulator.profiles import SILENT, Profiles, _mix, _unit

HOUR = 3600
_PHASE_STEP = 2357  # coprime with 3600: device i reports at second (i * 2357) % 3600 of each hour
_PHASE_INVERSE = pow(_PHASE_STEP, -1, HOUR)
MAX_AGE = 30 * 86_400


@dataclass(frozen=True)
class HourlyFleet:
    """`registered` meters of one protocol, ids from `first_id`, each reporting once an hour."""

    protocol: str
    registered: int
    first_id: int = 0
    profiles: Profiles = field(default_factory=Profiles)

    def ids(self) -> list[str]:
        return [simulated_id(self.protocol, self.first_id + i) for i in range(self.registered)]

    def phase(self, i: int) -> float:
        return (i * _PHASE_STEP) % HOUR + _unit(simulated_number(self.protocol, self.first_id + i), 9)

    def reporting_per_hour(self) -> int:
        """Registered meters that are not silent (each sends one reading an hour)."""
        return sum(1 for i in range(self.registered)
                   if self.profiles.kind(simulated_number(self.protocol, self.first_id + i)) != SILENT)

    def window(self, hour_start: int, window_start: int, seconds: int) -> ReadingBatch:
        """The readings of the meters due in [hour_start + window_start, + seconds), in send order.

        `hour_start` is a multiple of 3600 in device time; the window may not run past the hour.
        """
        if hour_start % HOUR or not 0 <= window_start <= window_start + seconds <= HOUR:
            raise ValueError("the window must lie inside one device-time hour")
        batch = ReadingBatch(self.protocol)
        hour_number = hour_start // HOUR
        wrap = CODECS[self.protocol].seq_modulus
        for second in range(window_start, window_start + seconds):
            due = []
            i = (second * _PHASE_INVERSE) % HOUR
            while i < self.registered:
                number = simulated_number(self.protocol, self.first_id + i)
                if self.profiles.kind(number) != SILENT:
                    due.append((second + _unit(number, 9), number))
                i += HOUR
            due.sort()
            for at, number in due:
                t = hour_start + int(at)
                period_end = t - t % BUCKET_SECONDS
                counts = self.profiles.counts(number, period_end, BUCKETS, BUCKET_SECONDS)
                index = (self.profiles.initial_index(number) + sum(counts)) % 2**32
                # seq advances once an hour, so two hours of the same meter never share one.
                seq = (hour_number + _mix(number, 11)) % wrap
                device_time = carried_time(self.protocol, period_end, received=t)
                batch.append(number, seq, device_time, period_end, index, counts, at - window_start)
        return batch


class RampPool:
    """`size` meters of one protocol whose clocks start about 29 days back and advance an hour per reading."""

    def __init__(self, protocol: str, size: int, first_id: int, profiles: Profiles | None = None,
                 start: float | None = None) -> None:
        self.protocol = protocol
        self.first_id = first_id
        self.size = size
        self.profiles = profiles or Profiles()
        start = time.time() - MAX_AGE + 86_400 if start is None else start
        self.next_hour = int(start) - int(start) % HOUR  # the start of every meter's next reading period
        self.active = array("Q")  # pool positions of the meters that report (not silent)
        self.index = array("Q")
        self.seq = array("Q")
        wrap = CODECS[protocol].seq_modulus
        for i in range(size):
            number = simulated_number(protocol, first_id + i)
            if self.profiles.kind(number) == SILENT:
                continue
            self.active.append(i)
            self.index.append(self.profiles.initial_index(number))
            self.seq.append(_mix(number, 12) % wrap)

    def ids(self) -> list[str]:
        return [simulated_id(self.protocol, self.first_id + i) for i in range(self.size)]

    def hours_left(self) -> int:
        return max(0, (int(time.time()) - HOUR - self.next_hour) // HOUR)

    def step(self, rate: float, seconds: float, min_per_device: int = 4) -> ReadingBatch:
        """`rate x seconds` readings at a steady rate: each of the first D meters sends K consecutive hourly
        readings, interleaved round-robin, K = max(min_per_device, readings / pool)."""
        total = int(rate * seconds)
        batch = ReadingBatch(self.protocol)
        if total <= 0:
            return batch
        per_device = max(min_per_device, math.ceil(total / len(self.active)))
        if per_device > self.hours_left():
            raise RuntimeError(
                f"{self.protocol} ramp pool exhausted: {per_device} more hours needed, {self.hours_left()} left"
                " before device clocks reach now; use a larger pool"
            )
        devices = math.ceil(total / per_device)
        wrap = CODECS[self.protocol].seq_modulus
        sent = 0
        for k in range(per_device):
            period_end = self.next_hour + (k + 1) * HOUR
            for d in range(devices):
                if sent == total:
                    break
                number = simulated_number(self.protocol, self.first_id + self.active[d])
                counts = self.profiles.counts(number, period_end, BUCKETS, BUCKET_SECONDS)
                index = (self.index[d] + sum(counts)) % 2**32
                seq = (self.seq[d] + 1) % wrap
                self.index[d], self.seq[d] = index, seq
                batch.append(number, seq, sent_time(self.protocol, number, period_end), period_end, index,
                             counts, sent / rate)
                sent += 1
        self.next_hour += per_device * HOUR
        return batch
