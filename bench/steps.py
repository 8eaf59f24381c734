"""One benchmark step: a load offered for a fixed window, followed until drained, then verified."""

from __future__ import annotations

import asyncio
import bisect
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import psutil
from nats.aio.client import Client as NATS

from bench import monitor
from bench.monitor import ProcessGroups, Tracker, cpu_delta
from pulsestack.bus.topology import raw_backlog
from pulsestack.wire import lorawan, sigfox
from pulsestack.wire.codecs import PROTOCOLS
from pulsestack_cli.summary import quantile
from simulator.batch import ReadingBatch
from simulator.generators import GeneratorJob, GeneratorOutcome, Generators
from simulator.loadgen import Spec
from simulator.verify import Delivery, verify_batch

QUANTILES = (0.5, 0.95, 0.99)
MIN_STORED_SHARE = 0.98  # of the offered rate, stored during the window: a backlog hidden in retransmissions


@dataclass
class StepResult:
    name: str
    kind: str  # footprint | reference | ramp | peer | profile
    mix: str  # nbiot | mix | peer
    target_rate: float
    window: float
    devices_per_hour: int = 0  # reference loads: meters reporting once an hour
    registered: int = 0
    sent: int = 0
    acked: int = 0
    offered_rate: float = 0.0
    stored_rate: float = 0.0  # stored during the window / window
    delivered: int = 0
    lost: int = 0
    duplicated: int = 0
    bucket_mismatches: int = 0
    total_mismatches: int = 0
    never_acked: int = 0
    complete: bool = False
    delivery_line: str = ""
    latency: dict[str, float | None] = field(default_factory=dict)  # p50/p95/p99, seconds
    latency_by_protocol: dict[str, dict[str, float | None]] = field(default_factory=dict)
    backlog_mid: float = 0.0
    backlog_end: float = 0.0
    backlog_growth: float = 0.0
    drain_seconds: float = 0.0
    drained: bool = True  # the pipeline (or the peer's queue) emptied within the drain timeout
    cpu_seconds: dict[str, float] = field(default_factory=dict)  # per process group, during the window
    machine_busy: float = 0.0  # CPU seconds of the whole machine during the window
    steal_seconds: float = 0.0
    peak_memory: dict[str, int] = field(default_factory=dict)  # bytes
    generator: dict[str, dict[str, Any]] = field(default_factory=dict)
    stages: dict[str, float] = field(default_factory=dict)  # see monitor.stage_figures (window only)
    postgres: dict[str, Any] = field(default_factory=dict)  # see monitor.pg_delta (window only)
    pg_waits: dict[str, float] = field(default_factory=dict)  # share of busy-backend samples per wait event
    wal_bytes: int = 0  # WAL written during the window (pg_current_wal_lsn)
    rows_written: dict[str, int] = field(default_factory=dict)  # per table, window: inserted + updated + deleted
    disk_growth: dict[str, dict[str, int]] = field(default_factory=dict)  # per table, after drain + VACUUM ANALYZE
    per_reading: dict[str, Any] = field(default_factory=dict)  # see StepRunner._per_reading
    retransmitted: int = 0  # NB-IoT datagrams sent again for want of an ack
    http_retries: int = 0  # Sigfox callbacks sent again after a failure
    kernel_drops: float = 0.0
    rejected: float = 0.0
    sustained: bool = False
    verdict: str = ""
    samples: list[tuple[float, int, float, float]] = field(default_factory=list)  # at, sent, stored, backlog

    def cpu_percent(self, group: str) -> float:
        return 100.0 * self.cpu_seconds.get(group, 0.0) / self.window if self.window else 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _machine_cpu() -> tuple[float, float]:
    t = psutil.cpu_times()
    busy = t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0)
    return busy, getattr(t, "steal", 0.0)


class Display:
    """One status line, rewritten in place on a terminal, printed every few seconds otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stdout.isatty()
        self._last = 0.0
        self._width = 0

    def update(self, text: str) -> None:
        if self.tty:
            pad = max(0, self._width - len(text))
            sys.stdout.write("\r" + text + " " * pad)
            sys.stdout.flush()
            self._width = len(text)
        elif time.monotonic() - self._last >= 5.0:
            self._last = time.monotonic()
            print(text, flush=True)

    def line(self, text: str) -> None:
        if self.tty and self._width:
            sys.stdout.write("\r" + " " * self._width + "\r")
            self._width = 0
        print(text, flush=True)


def _count_peer(result: StepResult, rows: int, outcomes: list[GeneratorOutcome]) -> None:
    """rsyslog's delivery: its table's rows against the datagrams sent (it keeps no reading's identity)."""
    result.delivered = min(rows, result.sent)
    result.lost = max(0, result.sent - rows)
    result.duplicated = max(0, rows - result.sent)
    result.complete = rows == result.sent == sum(len(o.batch) for o in outcomes)
    pct = 100.0 * result.delivered / result.sent if result.sent else 100.0
    result.delivery_line = (f"messages delivered {result.delivered:,} / {result.sent:,} ({pct:.2f} %),"
                            f" lost {result.lost}, duplicated {result.duplicated}")


class StepRunner:
    def __init__(
        self, *, urls: dict[str, str], groups: ProcessGroups, database_url: str, nc: NATS | None,
        workdir: Path, display: Display, drain_timeout: float = 900.0, settle_timeout: float = 120.0,
        max_p99: float = 1.0,
    ) -> None:
        self.max_p99 = max_p99
        self.urls = urls
        self.groups = groups
        self.database_url = database_url
        self.nc = nc
        self.workdir = workdir
        self.display = display
        self.drain_timeout = drain_timeout
        self.settle_timeout = settle_timeout
        self.counter = 0

    async def _pending(self) -> float:
        if self.nc is None:
            return 0.0
        return float(await raw_backlog(self.nc.jetstream()))

    async def run(
        self, result: StepResult, jobs: list[GeneratorJob], *, peer: Any = None, during: Any = None,
    ) -> tuple[StepResult, list[GeneratorOutcome]]:
        """Runs the jobs for `result.window` seconds; `peer`: count rows of the rsyslog table instead of
        following the pipeline; `during(seconds)`: a coroutine started with the window (a profiler)."""
        self.counter += 1
        workdir = self.workdir / f"step-{self.counter:02d}"
        d = self.display
        d.line(f"-- {result.name}: {result.target_rate:,.0f} readings/s for {result.window:g} s")
        generators = Generators(jobs, workdir)
        conn = await asyncpg.connect(self.database_url)
        try:
            prepared = time.monotonic()
            await generators.prepare()
            d.line(f"   {sum(len(j.batch) for j in jobs):,} readings pre-computed in"
                   f" {time.monotonic() - prepared:.1f} s")
            for pid in generators.pids.values():
                self.groups.add("generator", pid)
            tracker = Tracker(self.groups)
            if peer is not None:
                await peer.reset(conn)
            sizes0 = await monitor.disk_sizes(conn)
            pg0 = await monitor.pg_snapshot(conn)
            lsn0 = await monitor.wal_position(conn)
            waits: dict[str, int] = {}
            before = monitor.scrape_all(self.urls)
            cpu0, (busy0, steal0) = self.groups.cpu(), _machine_cpu()
            t0 = generators.start()
            await asyncio.sleep(max(0.0, t0 - time.monotonic()))
            side = asyncio.create_task(during(result.window)) if during else None
            samples = await self._watch_window(result, generators, jobs, tracker, conn, waits, before, t0, peer)
            # The window's own figures: rates and CPU.
            mid = monitor.scrape_all(self.urls) if peer is None else before
            cpu1, (busy1, steal1) = self.groups.cpu(), _machine_cpu()
            lsn1, pg1 = await monitor.wal_position(conn), await monitor.pg_snapshot(conn)
            result.wal_bytes = lsn1 - lsn0
            result.rows_written = monitor.rows_written(pg0, pg1)
            result.postgres = monitor.pg_delta(pg0, pg1, result.window)
            samples_taken = max(1, sum(waits.values()))
            result.pg_waits = {k: v / samples_taken for k, v in sorted(waits.items(), key=lambda kv: -kv[1])}
            result.cpu_seconds = cpu_delta(cpu0, cpu1)
            result.machine_busy, result.steal_seconds = busy1 - busy0, steal1 - steal0
            window_samples = list(samples)
            if side is not None:
                await side
            # Settle (retransmissions, retries), then drain the pipeline.
            drain_start = time.monotonic()
            waiter = asyncio.create_task(generators.wait())
            while not waiter.done():
                await asyncio.wait({waiter}, timeout=1.0)
                tracker.sample_memory()
                d.update(f"   settling: sent {generators.sent:,} acked {generators.acked:,}"
                         f" ({time.monotonic() - drain_start:.0f} s)")
            outcomes = waiter.result()
            final_rows = 0
            if peer is None:
                result.drained = await self._drain_pipeline(tracker, before, drain_start)
            else:
                result.drained = await self._drain_peer(conn, peer, sum(o.result["sent"] for o in outcomes),
                                                        drain_start)
                final_rows = await peer.rows(conn)
            result.drain_seconds = time.monotonic() - drain_start
            result.disk_growth = monitor.disk_growth(sizes0, await monitor.disk_sizes(conn))
            after = monitor.scrape_all(self.urls)
            tracker.sample_memory(every=0.0)
            result.peak_memory = dict(tracker.peak)
            self.groups.remove("generator")
            self._fill(result, before, mid, after, window_samples, outcomes)
            if peer is None:
                await self._verify_pipeline(result, conn, outcomes)
            else:
                _count_peer(result, final_rows, outcomes)
            self._per_reading(result)
            self._judge(result)
            d.line("   " + result.delivery_line)
            d.line("   " + self.summary(result))
            return result, outcomes
        finally:
            generators.kill()
            self.groups.remove("generator")
            await conn.close()

    async def _watch_window(
        self, result: StepResult, generators: Generators, jobs: list[GeneratorJob], tracker: Tracker,
        conn: asyncpg.Connection, waits: dict[str, int], before: dict[str, Any], t0: float, peer: Any,
    ) -> list[tuple[float, int, float, float]]:
        """Once a second until the window ends: memory, PostgreSQL's waits, and (seconds in, sent, stored,
        backlog), from the services' metrics or, for the peer, rsyslog's table against the send schedule."""
        window_end = t0 + result.window
        samples: list[tuple[float, int, float, float]] = []
        stored0 = monitor.stored(before)
        send_times = sorted(t for j in jobs for t in j.batch.send_at) if peer is not None else []
        while time.monotonic() < window_end:
            await asyncio.sleep(min(1.0, max(0.05, window_end - time.monotonic())))
            tracker.sample_memory()
            await monitor.pg_waits(conn, waits)
            at = time.monotonic() - t0
            if peer is not None:
                # The generator is open-loop: what it has sent by now is its schedule (its lag is checked).
                planned = bisect.bisect_right(send_times, at)
                rows = await peer.rows_estimate(conn)
                samples.append((at, planned, float(rows), float(planned - rows)))
                rate = rows / at if at > 0 else 0.0
                self.display.update(f"   {at:5.0f}/{result.window:g} s  sent {planned:>10,}  rows {rows:>10,}"
                                    f"  ({rate:,.0f}/s)  backlog {planned - rows:>9,}")
            else:
                now = monitor.scrape_all(self.urls)
                stored = monitor.stored(now) - stored0
                backlog = monitor.backlog_readings(now) - monitor.backlog_readings(before)
                samples.append((at, generators.sent, stored, backlog))
                self.display.update(
                    f"   {at:5.0f}/{result.window:g} s  sent {generators.sent:>10,}  acked {generators.acked:>10,}"
                    f"  stored {stored:>10,.0f} ({stored / at if at else 0:,.0f}/s)  backlog {backlog:>9,.0f}")
        return samples

    async def _drain_pipeline(self, tracker: Tracker, before: dict[str, Any], drain_start: float) -> bool:
        """Waits until RAW and the readings' backlog are empty (True), or the drain timeout."""
        deadline = time.monotonic() + self.drain_timeout
        while time.monotonic() < deadline:
            pending = await self._pending()
            now = monitor.scrape_all(self.urls)
            backlog = monitor.backlog_readings(now) - monitor.backlog_readings(before)
            tracker.sample_memory()
            if pending == 0 and backlog <= 0.5:
                return True
            self.display.update(f"   draining: {pending:,.0f} messages, {backlog:,.0f} readings"
                                f" ({time.monotonic() - drain_start:.0f} s)")
            await asyncio.sleep(0.5)
        return False

    async def _drain_peer(self, conn: asyncpg.Connection, peer: Any, sent: int, drain_start: float) -> bool:
        """Waits until rsyslog's table holds every row sent, or stops growing for 10 s (True), or the timeout."""
        last, still = -1, 0.0
        deadline = time.monotonic() + self.drain_timeout
        while time.monotonic() < deadline:
            rows = await peer.rows_estimate(conn)
            if rows >= sent:
                return True
            if rows == last:
                still += 0.5
                if still >= 10.0:
                    return True  # its queue is empty: what is missing is lost
            else:
                last, still = rows, 0.0
            self.display.update(f"   draining: rows {rows:,} of {sent:,} ({time.monotonic() - drain_start:.0f} s)")
            await asyncio.sleep(0.5)
        return False

    async def _verify_pipeline(self, result: StepResult, conn: asyncpg.Connection,
                               outcomes: list[GeneratorOutcome]) -> None:
        """Every reading sent, looked up in PostgreSQL: delivered, lost, duplicated, buckets and totals."""
        self.display.update("   verifying delivery against PostgreSQL ...")
        verified = time.monotonic()
        delivery = Delivery()
        for outcome in outcomes:
            delivery = delivery.add(await verify_batch(conn, outcome.batch, outcome.status))
        result.delivered, result.lost, result.duplicated = delivery.delivered, delivery.lost, delivery.duplicated
        result.bucket_mismatches = delivery.bucket_mismatches
        result.total_mismatches = len(delivery.total_mismatches)
        result.never_acked = delivery.expected - delivery.acked
        result.complete = delivery.complete and result.sent == sum(len(o.batch) for o in outcomes)
        result.delivery_line = delivery.line() + f" (verified in {time.monotonic() - verified:.1f} s)"

    def _fill(
        self, r: StepResult, before: dict[str, Any], mid: dict[str, Any], after: dict[str, Any],
        samples: list[tuple[float, int, float, float]], outcomes: list[GeneratorOutcome],
    ) -> None:
        r.sent = sum(int(o.result["sent"]) for o in outcomes)
        r.acked = sum(o.acked for o in outcomes)
        send_seconds = max((float(o.result["send_seconds"]) for o in outcomes), default=0.0) or r.window
        r.offered_rate = r.sent / max(send_seconds, r.window * 0.5) if r.sent else 0.0
        r.generator = {o.name: {k: o.result[k] for k in (
            "sent", "datagrams", "requests", "retransmitted", "acked", "acked_duplicate", "gave_up",
            "max_send_lag", "statuses", "cpu_prepare", "cpu_send", "max_rss", "prepare_seconds")} for o in outcomes}
        r.retransmitted = sum(int(o.result["retransmitted"]) for o in outcomes)
        r.http_retries = sum(max(0, int(o.result["requests"]) - int(o.result["sent"])) for o in outcomes
                             if int(o.result["requests"]))
        r.peak_memory["generator"] = sum(int(o.result["max_rss"]) for o in outcomes)
        # The generators' own count (getrusage from the start to their last first transmission): a
        # fire-and-forget generator may have exited before the window's CPU snapshot.
        r.cpu_seconds["generator"] = sum(float(o.result["cpu_send"]) for o in outcomes)
        r.samples = samples
        if samples:
            r.stored_rate = samples[-1][2] / r.window
        if r.mix != "peer":
            r.stored_rate = (monitor.stored(mid) - monitor.stored(before)) / r.window
            r.kernel_drops = monitor.kernel_drops(after) - monitor.kernel_drops(before)
            r.stages = monitor.stage_figures(before, mid)
            for key in list(r.stages):
                if key.endswith("/s"):
                    r.stages[key] /= r.window
            r.rejected = monitor.rejected(after) - monitor.rejected(before)
            h0 = monitor.histogram(before, monitor.E2E)
            h1 = monitor.histogram(after, monitor.E2E)
            delta = monitor.delta_histogram(h0, h1)
            r.latency = {f"p{int(q * 100)}": quantile(q, delta) for q in QUANTILES}
            for protocol in PROTOCOLS:
                dp = monitor.delta_histogram(monitor.histogram(before, monitor.E2E, protocol),
                                             monitor.histogram(after, monitor.E2E, protocol))
                if dp and max(dp.values()) > 0:
                    r.latency_by_protocol[protocol] = {f"p{int(q * 100)}": quantile(q, dp) for q in QUANTILES}
        # Backlog: the mean of the samples around the middle and the end of the window.
        if samples:
            half = [s[3] for s in samples if s[0] >= r.window * 0.4 and s[0] <= r.window * 0.6] or [samples[0][3]]
            tail = [s[3] for s in samples if s[0] >= r.window * 0.85] or [samples[-1][3]]
            r.backlog_mid = sum(half) / len(half)
            r.backlog_end = sum(tail) / len(tail)
            r.backlog_growth = r.backlog_end - r.backlog_mid

    @staticmethod
    def _per_reading(r: StepResult) -> None:
        """What one reading costs: bytes on disk (per reading stored in the step, after drain and VACUUM
        ANALYZE), and WAL bytes, rows written and CPU µs per process (per reading stored during the window)."""
        in_window = r.stored_rate * r.window
        disk = sum(g["total"] for g in r.disk_growth.values())
        r.per_reading = {
            "stored in window": in_window,
            "disk bytes": disk / r.delivered if r.delivered else None,
            "disk bytes by table": {t: g["total"] / r.delivered for t, g in r.disk_growth.items()} if r.delivered
            else {},
            "wal bytes": r.wal_bytes / in_window if in_window else None,
            "rows": sum(r.rows_written.values()) / in_window if in_window else None,
            "rows by table": {t: n / in_window for t, n in r.rows_written.items()} if in_window else {},
            "cpu us": {g: 1e6 * s / in_window for g, s in r.cpu_seconds.items()} if in_window else {},
        }

    def _judge(self, r: StepResult) -> None:
        reasons = []
        if not r.drained:
            reasons.append(f"still not drained {r.drain_seconds:.0f} s after the window (readings counted as"
                           " missing may only be late)")
        if not r.complete:
            reasons.append("not every reading sent was stored exactly once")
        if r.lost or r.duplicated:
            reasons.append(f"lost {r.lost}, duplicated {r.duplicated}")
        if r.offered_rate < 0.97 * r.target_rate:
            reasons.append(f"generator offered only {r.offered_rate:,.0f}/s")
        allowed_growth = max(200.0, 0.02 * r.target_rate * r.window * 0.45)
        if r.backlog_growth > allowed_growth:
            reasons.append(f"backlog grew by {r.backlog_growth:,.0f} readings in the second half")
        if r.backlog_end > max(200.0, 2.0 * r.target_rate):
            reasons.append(f"backlog at the end of the window {r.backlog_end:,.0f} readings (> 2 s of load)")
        if r.stored_rate < MIN_STORED_SHARE * r.offered_rate:
            reasons.append(f"stored {r.stored_rate:,.0f}/s during the window, under {MIN_STORED_SHARE:.0%} of the"
                           f" {r.offered_rate:,.0f}/s offered")
        p99 = r.latency.get("p99")
        if p99 is not None and p99 > self.max_p99:
            reasons.append(f"p99 ingest → committed {p99:.2f} s (> {self.max_p99:g} s)")
        r.sustained = not reasons
        r.verdict = "sustained" if r.sustained else "; ".join(reasons)

    @staticmethod
    def summary(r: StepResult) -> str:
        lat = r.latency
        lat_text = "" if not lat else "  latency p50/p95/p99 " + "/".join(
            "-" if (v := lat.get(k)) is None else f"{1000 * v:.0f}" for k in ("p50", "p95", "p99")) + " ms"
        cpu = ", ".join(f"{g} {r.cpu_percent(g):.0f}%" for g in sorted(r.cpu_seconds) if r.cpu_seconds[g] > 0.05)
        pr = r.per_reading

        def fig(key: str, unit: str) -> str:
            return "-" if pr.get(key) is None else f"{pr[key]:,.1f}{unit}"

        return (f"offered {r.offered_rate:,.0f}/s stored {r.stored_rate:,.0f}/s{lat_text}; backlog growth"
                f" {r.backlog_growth:,.0f}; retransmitted {r.retransmitted:,}, HTTP retries {r.http_retries:,};"
                f" drain {r.drain_seconds:.0f} s -> {r.verdict}\n   CPU: {cpu}\n   per reading: disk"
                f" {fig('disk bytes', ' B')}, WAL {fig('wal bytes', ' B')}, rows written {fig('rows', '')}")


def nbiot_spec(port: int, master_key: bytes, mode: str, settle_timeout: float) -> Spec:
    return Spec(batch="", out="", mode=mode, port=port, master_key=master_key.hex(), settle_timeout=settle_timeout)


# Where each callback protocol's generator posts: the webhooks' base for LoRaWAN (the generator adds the
# network server's path), the callback route for Sigfox.
CALLBACK_PATHS = {sigfox.PROTOCOL: sigfox.CALLBACK_PATH, lorawan.PROTOCOL: lorawan.CALLBACK_BASE}


def callback_spec(protocol: str, port: int, token: str, connections: int, settle_timeout: float) -> Spec:
    return Spec(batch="", out="", port=port, path=CALLBACK_PATHS[protocol], token=token, connections=connections,
                settle_timeout=settle_timeout)


def job(name: str, batch: ReadingBatch, spec: Spec) -> GeneratorJob:
    return GeneratorJob(name, batch, spec)
