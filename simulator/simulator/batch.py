"""Readings of one protocol as columns: millions of them in a few tens of MB, saved and loaded in one call.

A batch is what a load generator sends in one step and what verification checks afterwards. Row i is
one reading; `send_at[i]` is when to send it, in seconds from the start of the step (non-decreasing).
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pulsestack.wire.codecs import CODECS
from simulator.fleet import BUCKETS, SentReading


def device_text(protocol: str, number: int) -> str:
    return CODECS[protocol].text(number)


@dataclass
class ReadingBatch:
    protocol: str
    number: array[int] = field(default_factory=lambda: array("Q"))
    seq: array[int] = field(default_factory=lambda: array("Q"))
    device_time: array[int] = field(default_factory=lambda: array("q"))
    period_end: array[int] = field(default_factory=lambda: array("q"))
    index: array[int] = field(default_factory=lambda: array("Q"))
    counts: array[int] = field(default_factory=lambda: array("H"))  # BUCKETS per reading, oldest first
    send_at: array[float] = field(default_factory=lambda: array("d"))

    _COLUMNS = ("number", "seq", "device_time", "period_end", "index", "counts", "send_at")

    def __len__(self) -> int:
        return len(self.number)

    def append(
        self, number: int, seq: int, device_time: int, period_end: int, index: int, counts: tuple[int, ...],
        send_at: float,
    ) -> None:
        self.number.append(number)
        self.seq.append(seq)
        self.device_time.append(device_time)
        self.period_end.append(period_end)
        self.index.append(index)
        self.counts.extend(counts)
        self.send_at.append(send_at)

    def device(self, i: int) -> str:
        return device_text(self.protocol, self.number[i])

    def counts_of(self, i: int) -> tuple[int, ...]:
        return tuple(self.counts[i * BUCKETS:(i + 1) * BUCKETS])

    def reading(self, i: int) -> SentReading:
        return SentReading(
            self.protocol, self.device(i), self.seq[i], self.device_time[i], self.period_end[i], self.index[i],
            self.counts_of(i),
        )

    def readings(self) -> Iterator[SentReading]:
        return (self.reading(i) for i in range(len(self)))

    @property
    def duration(self) -> float:
        return self.send_at[-1] if len(self) else 0.0

    def sorted_by_send_time(self) -> ReadingBatch:
        order = sorted(range(len(self)), key=self.send_at.__getitem__)
        out = ReadingBatch(self.protocol)
        for i in order:
            out.append(self.number[i], self.seq[i], self.device_time[i], self.period_end[i], self.index[i],
                       self.counts_of(i), self.send_at[i])
        return out

    @classmethod
    def from_readings(cls, protocol: str, readings: list[SentReading], rate: float) -> ReadingBatch:
        out = cls(protocol)
        number = CODECS[protocol].number
        for i, r in enumerate(readings):
            out.append(number(r.device), r.seq, r.device_time, r.period_end, r.index, r.counts, i / rate)
        return out

    def save(self, path: Path) -> None:
        header = {"protocol": self.protocol, "rows": len(self),
                  "columns": [(c, getattr(self, c).typecode, len(getattr(self, c))) for c in self._COLUMNS]}
        with open(path, "wb") as f:
            f.write(json.dumps(header).encode() + b"\n")
            for c in self._COLUMNS:
                getattr(self, c).tofile(f)

    @classmethod
    def load(cls, path: Path) -> ReadingBatch:
        with open(path, "rb") as f:
            header = json.loads(f.readline())
            out = cls(header["protocol"])
            for name, typecode, length in header["columns"]:
                column = array(typecode)
                column.fromfile(f, length)
                setattr(out, name, column)
        return out
