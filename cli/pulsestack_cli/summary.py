"""A live summary from the services' own /metrics: received, stored, duplicates, quarantined, rejected, rate,
backlog, and why the stored count stands still when it does."""

from __future__ import annotations

import time
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from prometheus_client.parser import text_string_to_metric_families

from pulsestack.wire.codecs import PROTOCOLS

if TYPE_CHECKING:
    from rich.console import RenderableType

Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


def scrape(url: str) -> Samples:
    samples: Samples = defaultdict(dict)
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return samples
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name][tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def total(samples: Samples, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for k, v in samples.get(name, {}).items() if want <= set(k))


def histogram_quantile(samples: Samples, name: str, q: float) -> float | None:
    """The q-quantile of a histogram since the service started."""
    buckets: dict[float, float] = defaultdict(float)
    for labels, value in samples.get(f"{name}_bucket", {}).items():
        le = dict(labels)["le"]
        buckets[float("inf") if le == "+Inf" else float(le)] += value
    return quantile(q, buckets)


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Like Prometheus's histogram_quantile: linear interpolation inside the bucket holding the rank."""
    bounds = sorted(buckets)
    if not bounds:
        return None
    count = buckets[bounds[-1]]
    if count <= 0:
        return None
    rank = q * count
    lower, below = 0.0, 0.0
    for le in bounds:
        c = buckets[le]
        if c >= rank:
            if le == float("inf"):
                return lower  # beyond the last finite bucket: its bound is all we know
            return lower + (le - lower) * ((rank - below) / (c - below) if c > below else 0.0)
        lower, below = le, c
    return lower


@dataclass(frozen=True, slots=True)
class Figures:
    """One look at the services. Counts are since the services started (this run), not since var/local began."""

    elapsed: float
    received: dict[str, float]
    stored: dict[str, float]
    duplicates: float  # readings the raw stage found already stored
    quarantined: float  # by any stage, for any reason (`pulsestack quarantine list` shows them)
    rejected: float  # turned away at ingest with an answer to the device
    backlog: float  # messages the stages have not processed yet
    rate: float  # stored readings per second since the previous look
    latency: str
    still: str | None  # why the stored count did not move since the previous look; None when it did

    def line(self) -> str:
        why = f" | stored unchanged: {self.still}" if self.still else ""
        return (
            f"{self.elapsed:6.0f} s | received {_by_protocol(self.received)} | stored {_by_protocol(self.stored)}"
            f" | {self.rate:7,.0f} readings/s | duplicates {self.duplicates:,.0f} | quarantined {self.quarantined:,.0f}"
            f" | rejected {self.rejected:,.0f} | backlog {self.backlog:,.0f} | end-to-end p50/p99 {self.latency}{why}"
        )

    def view(self) -> RenderableType:
        """The same figures as a table, for a terminal's live display."""
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        minutes, seconds = divmod(int(self.elapsed), 60)
        table = Table()
        for column in ("", *PROTOCOLS, "all"):
            table.add_column(column, justify="right")
        for name, counts in (("received", self.received), ("stored", self.stored)):
            table.add_row(name, *(f"{counts[p]:,.0f}" for p in PROTOCOLS), f"{sum(counts.values()):,.0f}")
        for name, value in (("duplicates", self.duplicates), ("quarantined", self.quarantined),
                            ("rejected", self.rejected), ("backlog", self.backlog)):
            table.add_row(name, *[""] * len(PROTOCOLS), f"{value:,.0f}")
        return Group(
            Text(f"{minutes}:{seconds:02d} elapsed (Ctrl-C stops)", style="bold"), table,
            Text(f"{self.rate:,.0f} readings/s stored, end-to-end p50/p99 {self.latency}"),
            Text(f"stored unchanged: {self.still}" if self.still else "", style="yellow"),
        )


def _by_protocol(counts: dict[str, float]) -> str:
    return " ".join(f"{p} {counts[p]:>9,.0f}" for p in PROTOCOLS)


class Summary:
    def __init__(self, urls: dict[str, str]) -> None:
        self.urls = urls
        self.started = time.monotonic()
        self._last: Figures | None = None

    def take(self, caught_up: bool = False) -> Figures:
        """The figures now; `caught_up`: every simulated device has sent its readings up to the clock."""
        s = {name: scrape(url) for name, url in self.urls.items()}
        udp, http = s.get("ingest-udp", {}), s.get("ingest-http", {})
        raw = s.get("raw-processor", {})
        stored = {p: total(raw, "pulsestack_end_to_end_seconds_count", protocol=p) for p in PROTOCOLS}
        p50 = histogram_quantile(raw, "pulsestack_end_to_end_seconds", 0.5)
        p99 = histogram_quantile(raw, "pulsestack_end_to_end_seconds", 0.99)
        now = time.monotonic()
        figures = Figures(
            elapsed=now - self.started,
            received={p: sum(total(samples, "pulsestack_ingest_received_total", protocol=p) for samples in s.values())
                      for p in PROTOCOLS},
            stored=stored,
            duplicates=total(raw, "pulsestack_processor_messages_total", stage="raw", outcome="duplicate"),
            quarantined=sum(total(samples, "pulsestack_quarantined_total") for samples in s.values()),
            rejected=total(udp, "pulsestack_ingest_rejected_total") + total(http, "pulsestack_ingest_rejected_total"),
            backlog=total(raw, "pulsestack_stream_pending"),
            rate=0.0,
            latency=f"{p50 * 1000:.0f}/{p99 * 1000:.0f} ms" if p50 is not None and p99 is not None else "-",
            still=None,
        )
        last = self._last
        moved = sum(stored.values()) - (sum(last.stored.values()) if last else 0.0)
        figures = replace(
            figures, rate=moved / max(1e-9, figures.elapsed - last.elapsed) if last else 0.0,
            still=None if moved else _why_still(last, figures, caught_up),
        )
        self._last = figures
        return figures


def _why_still(last: Figures | None, now: Figures, caught_up: bool) -> str:
    def since_last(f: Figures) -> tuple[float, float, float]:
        return f.duplicates, f.quarantined + f.rejected, sum(f.received.values())

    before = since_last(last) if last else (0.0, 0.0, 0.0)
    duplicates, turned_away, received = (a - b for a, b in zip(since_last(now), before, strict=True))
    if duplicates:
        return "all duplicates (those readings were stored before)"
    if turned_away:
        return "readings quarantined or rejected (see the logs, `pulsestack quarantine list`)"
    if now.backlog:
        return f"backlog {now.backlog:,.0f}: the stages are behind"
    if received:
        return "received, not processed yet"
    if caught_up:
        return "no traffic: every device has reported up to now (one reading an hour each)"
    return "no traffic"
