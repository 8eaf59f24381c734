"""The soak: one steady load for a long window, sampled over time, to show what grows.

A ramp step says whether a rate holds for a minute; an operator needs to know it holds for months. The soak
offers one rate (about 70 % of the measured ceiling) for tens of minutes and samples, every `--soak-sample`
seconds: the rate stored in the interval, the interval's p99 ingest → committed latency, the resident memory
of every process, the bytes each JetStream stream holds, the database's size per reading stored, and WAL
written and archived; and when checkpoints and autovacuum runs completed, which explain the p99's spikes (the
plot marks checkpoints on the p99 panel). Each curve gets a least-squares slope after a warm-up; a flat curve
has a slope within `FLAT` of its mean per hour, anything else is listed for the report to explain.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from nats.aio.client import Client as NATS

from bench import monitor
from bench.monitor import ProcessGroups
from pulsestack_cli.summary import quantile

WARM_UP = 0.1  # share of the window left out of the slopes: caches, autovacuum's first pass, JIT of the stack
FLAT = 0.05  # a curve whose fitted change is at most 5 % of its mean per hour is flat
MIB = 1024 * 1024
WAL_SEGMENT = 16 * MIB  # wal_segment_size, initdb's default (postgresql.conf does not change it)


@dataclass
class SoakSample:
    at: float  # seconds since the window started
    stored: float  # readings stored since the window started
    stored_rate: float  # readings/s stored in the interval
    p99: float | None  # seconds, ingest → committed, readings committed in the interval
    rss: dict[str, int]  # bytes per process group
    stream_bytes: dict[str, int]  # bytes held per JetStream stream
    database_bytes: int  # pg_database_size growth since the window started
    wal_bytes: int  # WAL written since the window started
    archived: int  # WAL segments archived since the window started
    archive_failed: int  # archiving failures since the window started
    # Events, not curves: they explain a curve's spikes (the report lists the intervals each happened in).
    checkpoints: int = 0  # checkpoints completed since the window started
    autovacuums: int = 0  # autovacuum runs completed on the database's tables since the window started

    @property
    def bytes_per_reading(self) -> float | None:
        return self.database_bytes / self.stored if self.stored else None


@dataclass(frozen=True)
class Slope:
    per_hour: float  # fitted change per hour, in the series' unit
    mean: float

    @property
    def relative(self) -> float:
        return self.per_hour / abs(self.mean) if self.mean else 0.0

    @property
    def flat(self) -> bool:
        return abs(self.relative) <= FLAT


def fit(points: list[tuple[float, float]]) -> Slope | None:
    """Least-squares slope of (seconds, value) points, per hour; None with fewer than three points."""
    if len(points) < 3:
        return None
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    if spread == 0:
        return None
    per_second = sum((t - mean_t) * (v - mean_v) for t, v in points) / spread
    return Slope(per_second * 3600, mean_v)


def series(samples: list[SoakSample]) -> dict[str, list[tuple[float, float]]]:
    """Every curve of the soak, by name: (seconds, value) points."""
    out: dict[str, list[tuple[float, float]]] = {"stored readings/s": [], "p99 latency s": [],
                                                  "database bytes per reading": [], "WAL bytes/s": []}
    archiving = any(s.archived for s in samples)
    previous: SoakSample | None = None
    for s in samples:
        out["stored readings/s"].append((s.at, s.stored_rate))
        if s.p99 is not None:
            out["p99 latency s"].append((s.at, s.p99))
        if s.bytes_per_reading is not None:
            out["database bytes per reading"].append((s.at, s.bytes_per_reading))
        if previous is not None and s.at > previous.at:
            out["WAL bytes/s"].append((s.at, (s.wal_bytes - previous.wal_bytes) / (s.at - previous.at)))
            if archiving:  # whole segments: it follows the written curve in steps of one
                out.setdefault("WAL archived bytes/s", []).append(
                    (s.at, (s.archived - previous.archived) * WAL_SEGMENT / (s.at - previous.at)))
        for group, used in s.rss.items():
            out.setdefault(f"RSS {group} MiB", []).append((s.at, used / MIB))
        for stream, held in s.stream_bytes.items():
            out.setdefault(f"stream {stream} MiB", []).append((s.at, held / MIB))
        previous = s
    return out


def slopes(samples: list[SoakSample], window: float) -> dict[str, Slope]:
    """Each curve's slope, after the warm-up."""
    out: dict[str, Slope] = {}
    for name, points in series(samples).items():
        slope = fit([(t, v) for t, v in points if t >= WARM_UP * window])
        if slope is not None:
            out[name] = slope
    return out


@dataclass
class SoakSampler:
    """Samples the stack while a step's window runs: `run` is the step's `during` coroutine."""

    urls: dict[str, str]
    groups: ProcessGroups
    database_url: str
    nc: NATS
    every: float = 30.0
    samples: list[SoakSample] = field(default_factory=list)

    async def run(self, seconds: float) -> None:
        conn = await asyncpg.connect(self.database_url)
        try:
            start = time.monotonic()
            scrape0 = previous = monitor.scrape_all(self.urls)
            db0, wal0, (archived0, failed0) = await _database_size(conn), await monitor.wal_position(conn), \
                await _archiver(conn)
            checkpoints0, autovacuums0 = await _maintenance(conn)
            due = 0.0
            while due < seconds:
                due = min(due + self.every, seconds)  # on a fixed grid: sampling time does not drift it
                await asyncio.sleep(max(0.0, start + due - time.monotonic()))
                now = monitor.scrape_all(self.urls)
                at = time.monotonic() - start
                last_at = self.samples[-1].at if self.samples else 0.0
                stored = monitor.stored(now) - monitor.stored(scrape0)
                interval = monitor.delta_histogram(monitor.histogram(previous, monitor.E2E),
                                                   monitor.histogram(now, monitor.E2E))
                archived, failed = await _archiver(conn)
                checkpoints, autovacuums = await _maintenance(conn)
                self.samples.append(SoakSample(
                    at=at, stored=stored,
                    stored_rate=(monitor.stored(now) - monitor.stored(previous)) / max(at - last_at, 1e-9),
                    p99=quantile(0.99, interval), rss=self.groups.memory(), stream_bytes=await self._streams(),
                    database_bytes=await _database_size(conn) - db0, wal_bytes=await monitor.wal_position(conn) - wal0,
                    archived=archived - archived0, archive_failed=failed - failed0,
                    checkpoints=checkpoints - checkpoints0, autovacuums=autovacuums - autovacuums0,
                ))
                previous = now
        finally:
            await conn.close()

    async def _streams(self) -> dict[str, int]:
        js = self.nc.jetstream()
        return {info.config.name or "": info.state.bytes for info in await js.streams_info()}

    def to_json(self, window: float) -> dict[str, Any]:
        return {"every": self.every, "warm_up": WARM_UP, "flat": FLAT,
                "samples": [asdict(s) for s in self.samples],
                "slopes": {name: asdict(s) for name, s in slopes(self.samples, window).items()}}


async def _database_size(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT pg_database_size(current_database())"))


async def _archiver(conn: asyncpg.Connection) -> tuple[int, int]:
    row = await conn.fetchrow("SELECT archived_count, failed_count FROM pg_stat_archiver")
    return int(row["archived_count"]), int(row["failed_count"])


async def _maintenance(conn: asyncpg.Connection) -> tuple[int, int]:
    """Checkpoints and autovacuum runs completed so far (pg_stat_checkpointer: PostgreSQL 17 and later)."""
    row = await conn.fetchrow(
        "SELECT (SELECT num_timed + num_requested FROM pg_stat_checkpointer) AS checkpoints,"
        " (SELECT coalesce(sum(autovacuum_count), 0) FROM pg_stat_all_tables) AS autovacuums")
    return int(row["checkpoints"]), int(row["autovacuums"])


def events(samples: list[SoakSample]) -> dict[str, list[float]]:
    """The minutes (each interval's end) in which checkpoints and autovacuum runs completed."""
    out: dict[str, list[float]] = {"checkpoints": [], "autovacuum runs": []}
    previous = (0, 0)
    for s in samples:
        out["checkpoints"] += [s.at / 60] * (s.checkpoints - previous[0])
        out["autovacuum runs"] += [s.at / 60] * (s.autovacuums - previous[1])
        previous = (s.checkpoints, s.autovacuums)
    return out


def samples_of(soak: dict[str, Any]) -> list[SoakSample]:
    return [SoakSample(**s) for s in soak.get("samples", [])]


def markdown(soak: dict[str, Any], step: dict[str, Any] | None) -> list[str]:
    """The report's soak section: the step's verdict, then every curve's start, end and slope."""
    samples = samples_of(soak)
    if not samples:
        return []
    window = samples[-1].at
    out = ["## Soak", ""]
    if step is not None:
        out += [f"{step['name']}: offered {step['offered_rate']:,.0f}/s for {step['window'] / 60:.0f} min;"
                f" {step['delivery_line']}; verdict: {step['verdict']}.", ""]
    out += [f"Sampled every {soak['every']:g} s; slopes fitted by least squares after the first"
            f" {soak['warm_up']:.0%} of the window; flat: within {soak['flat']:.0%} of the mean per hour."
            " A curve that is not flat is listed below the table with what explains it.", "",
            "| curve | first sample | last sample | slope per hour | of its mean | flat |",
            "|---|---|---|---|---|---|"]
    fitted = {name: Slope(**s) for name, s in soak.get("slopes", {}).items()}
    for name, points in series(samples).items():
        slope = fitted.get(name)
        if not points or slope is None:
            continue
        out.append(f"| {name} | {points[0][1]:,.2f} | {points[-1][1]:,.2f} | {slope.per_hour:+,.3f} |"
                   f" {slope.relative:+.1%} | {'yes' if slope.flat else '**no**'} |")
    last = samples[-1]
    out += [""]
    for name, minutes in events(samples).items():
        listed = ", ".join(f"{m:.1f}" for m in minutes) if minutes else "none"
        out.append(f"- {name} completed in the intervals ending at minute: {listed}.")
    spikes = sorted((s for s in samples if s.p99 is not None), key=lambda s: s.p99 or 0.0, reverse=True)[:5]
    out.append("- highest p99 intervals (ending at minute: p99): "
               + ", ".join(f"{s.at / 60:.1f}: {s.p99:.2f} s" for s in spikes) + ".")
    out += ["", f"WAL archived during the window: {last.archived} segments, {last.archive_failed} failures"
            f" (0 and 0 when the benchmark's PostgreSQL does not archive). Window {window / 60:.1f} min.", ""]
    return out


def plot(soak: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = series(samples_of(soak))
    panels = [("stored readings/s", ["stored readings/s"]), ("p99 ingest → committed (s)", ["p99 latency s"]),
              ("RSS (MiB)", [n for n in curves if n.startswith("RSS ")]),
              ("stream bytes (MiB)", [n for n in curves if n.startswith("stream ")]),
              ("database bytes per reading", ["database bytes per reading"]),
              ("WAL bytes/s", ["WAL bytes/s", "WAL archived bytes/s"])]
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 2.4 * len(panels)), dpi=110, sharex=True)
    for axis, (label, names) in zip(axes, panels, strict=True):
        for name in names:
            points = curves.get(name, [])
            if points:
                axis.plot([t / 60 for t, _ in points], [v for _, v in points], label=name)
        if label.startswith("p99"):
            for minute in events(samples_of(soak))["checkpoints"]:
                axis.axvline(minute, color="grey", alpha=0.4, linewidth=0.8)
        axis.set_ylabel(label, fontsize=8)
        axis.grid(alpha=0.3)
        if len(names) > 1:
            axis.legend(fontsize=7, loc="upper left", ncol=3)
    axes[0].set_title(f"{title}\nthe soak over time", fontsize=10)
    axes[-1].set_xlabel("minutes into the window")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
