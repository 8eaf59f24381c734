"""Realistic meters: household day/night consumption, leaking meters, silent meters, index-wrapping meters.

Every decision is a pure function of the device number (and of the bucket for counts), so a fleet of
millions needs no per-device state to know what each meter is, and two processes agree on it.

- **household**: consumption follows a day/night curve in local time (nights nearly dry, a morning and
  an evening peak); each household has its own size factor; most quarter-hours of the night are 0.
- **leak**: a household with a continuous flow on top (a running toilet, a leaking pipe): every bucket
  carries at least the leak's pulses, so the night is never dry, which is what leak detection looks for.
- **silent**: registered, never reports (a meter in a cellar without coverage, a dead battery).
- **wrap**: a household whose cumulative index starts just below 2^32, so it wraps during the run.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

HOUSEHOLD, LEAK, SILENT, WRAP = "household", "leak", "silent", "wrap"
KINDS = (HOUSEHOLD, LEAK, SILENT, WRAP)
MAX_COUNT = 0xFFF  # Sigfox carries 12-bit counts; NB-IoT's uint16 holds them too
_SAMPLES = 512

# Relative water use per hour of the local day (a Belgian household's double peak).
_HOURLY = (
    0.04, 0.02, 0.02, 0.02, 0.03, 0.10, 0.55, 1.00, 0.85, 0.50, 0.40, 0.45,
    0.55, 0.45, 0.35, 0.35, 0.40, 0.55, 0.80, 0.90, 0.75, 0.55, 0.30, 0.10,
)


def _mix(number: int, salt: int) -> int:
    """A 64-bit hash of a device number (splitmix64), stable across processes and Python versions."""
    z = (number + salt * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return z ^ (z >> 31)


def _unit(number: int, salt: int) -> float:
    return (_mix(number, salt) >> 11) / 2**53


@dataclass(frozen=True, slots=True)
class Profiles:
    """Shares of each kind of meter and the consumption they produce (pulses per quarter-hour)."""

    leak_share: float = 0.03
    silent_share: float = 0.01
    wrap_share: float = 0.005
    daily_pulses: float = 320.0  # an average household's pulses per day (e.g. litres)
    leak_pulses: tuple[int, int] = (1, 12)  # a leak's continuous flow per quarter-hour, min..max
    utc_offset_hours: int = 1  # the fleet's local time (Brussels, winter)
    seed: int = 7
    _tables: tuple[tuple[int, ...], ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.leak_share + self.silent_share + self.wrap_share > 1.0:
            raise ValueError("leak, silent and wrap shares add up to more than 1")
        # Samples of one quarter-hour's use for each of the 96 quarter-hours of the day, for a
        # household of factor 1: most are 0 at night, a few bursts (a shower, a washing machine).
        rng = random.Random(self.seed)
        total = sum(_HOURLY)
        tables: list[tuple[int, ...]] = []
        for slot in range(96):
            expected = self.daily_pulses * _HOURLY[slot // 4] / total / 4
            p = min(1.0, expected / 6.0)  # chance of any use in that quarter-hour
            mean_burst = expected / p if p else 0.0
            samples = []
            for _ in range(_SAMPLES):
                if p and rng.random() < p:
                    samples.append(min(MAX_COUNT, int(rng.expovariate(1.0 / mean_burst) + 0.5)))
                else:
                    samples.append(0)
            tables.append(tuple(samples))
        object.__setattr__(self, "_tables", tuple(tables))

    def kind(self, number: int) -> str:
        u = _unit(number, 1)
        if u < self.silent_share:
            return SILENT
        if u < self.silent_share + self.leak_share:
            return LEAK
        if u < self.silent_share + self.leak_share + self.wrap_share:
            return WRAP
        return HOUSEHOLD

    def household_factor(self, number: int) -> float:
        """From a single person (0.3) to a large family (1.7); 1 on average."""
        return 0.3 + 1.4 * _unit(number, 2)

    def leak_rate(self, number: int) -> int:
        lo, hi = self.leak_pulses
        return lo + int(_unit(number, 3) * (hi - lo + 1))

    def initial_index(self, number: int) -> int:
        if self.kind(number) == WRAP:
            return 2**32 - 50 - int(_unit(number, 4) * 400)  # wraps within a few hours of use
        return int(_unit(number, 4) * 2**24)

    def counts(self, number: int, period_end: int, buckets: int = 4, bucket_seconds: int = 900) -> tuple[int, ...]:
        """The pulse counts of one reading, oldest bucket first."""
        tables = self._tables
        kind = self.kind(number)
        factor = self.household_factor(number)
        leak = self.leak_rate(number) if kind == LEAK else 0
        h = _mix(number ^ (period_end * 0x2545F4914F6CDD1D), 5)
        offset = self.utc_offset_hours * 3600
        out = []
        for k in range(buckets):
            start = period_end - (buckets - k) * bucket_seconds + offset
            slot = (start % 86_400) // 900
            sample = tables[slot][(h >> (9 * k)) % _SAMPLES]
            out.append(min(MAX_COUNT, int(sample * factor + 0.5) + leak))
        return tuple(out)

    def describe(self) -> str:
        return (
            f"household day/night profile ({self.daily_pulses:g} pulses/day on average, UTC{self.utc_offset_hours:+d}),"
            f" {self.leak_share:.1%} leaking ({self.leak_pulses[0]}-{self.leak_pulses[1]} pulses per quarter-hour"
            f" continuous), {self.silent_share:.1%} silent, {self.wrap_share:.1%} with an index about to wrap"
        )
