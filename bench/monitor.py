"""What the benchmark measures while a step runs: the services' own metrics, CPU and memory per process."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import psutil

from pulsestack_cli.summary import Samples, quantile, scrape, total

E2E = "pulsestack_end_to_end_seconds"


# ------------------------------------------------------------------------------------------- metrics

def scrape_all(urls: dict[str, str]) -> dict[str, Samples]:
    return {name: scrape(url) for name, url in urls.items()}


def _sum(samples: dict[str, Samples], name: str, services: Iterable[str] | None = None, **labels: str) -> float:
    return float(sum(total(s, name, **labels) for n, s in samples.items() if services is None or n in services))


def stored(samples: dict[str, Samples], protocol: str | None = None) -> float:
    """Readings committed (the raw stage's end-to-end histogram count)."""
    labels = {"protocol": protocol} if protocol else {}
    return _sum(samples, f"{E2E}_count", **labels)


def accepted(samples: dict[str, Samples]) -> float:
    return _sum(samples, "pulsestack_ingest_accepted_total")


def received(samples: dict[str, Samples]) -> float:
    return _sum(samples, "pulsestack_ingest_received_total")


def rejected(samples: dict[str, Samples]) -> float:
    return _sum(samples, "pulsestack_ingest_rejected_total")


def kernel_drops(samples: dict[str, Samples]) -> float:
    return _sum(samples, "pulsestack_ingest_udp_kernel_drops_total")


def processor_handled(samples: dict[str, Samples]) -> float:
    return sum(_sum(samples, "pulsestack_processor_messages_total", stage="raw", outcome=o)
               for o in ("stored", "duplicate", "quarantined"))


def backlog_readings(samples: dict[str, Samples]) -> float:
    """Readings accepted at ingest that the processor has not handled yet."""
    return accepted(samples) - processor_handled(samples)


def stream_pending(samples: dict[str, Samples]) -> float:
    return _sum(samples, "pulsestack_stream_pending") + _sum(samples, "pulsestack_stream_ack_pending")


def histogram(
    samples: dict[str, Samples], name: str, protocol: str | None = None, **labels: str
) -> dict[float, float]:
    """Cumulative bucket counts {upper bound: count} summed over services (and protocols unless given)."""
    if protocol:
        labels["protocol"] = protocol
    buckets: dict[float, float] = {}
    for s in samples.values():
        for key, value in s.get(f"{name}_bucket", {}).items():
            d = dict(key)
            if any(d.get(k) != v for k, v in labels.items()):
                continue
            le = float(d["le"])
            buckets[le] = buckets.get(le, 0.0) + value
    return buckets


def delta_histogram(before: dict[float, float], after: dict[float, float]) -> dict[float, float]:
    return {le: after[le] - before.get(le, 0.0) for le in after}


# ------------------------------------------------------------------------------------------- processes

@dataclass
class GroupUsage:
    cpu_seconds: float = 0.0
    peak_rss: int = 0  # bytes; for postgres the sum of PSS (shared buffers counted once)


@dataclass
class ProcessGroups:
    """Named groups of processes (a group may be one process, or postgres with all its backends)."""

    roots: dict[str, list[int]] = field(default_factory=dict)  # group -> root pids
    with_children: set[str] = field(default_factory=set)
    proportional: set[str] = field(default_factory=set)  # groups measured by PSS instead of RSS
    _procs: dict[int, psutil.Process] = field(default_factory=dict)

    def add(self, group: str, pid: int | None, children: bool = False, pss: bool = False) -> None:
        if pid is None:
            return
        self.roots.setdefault(group, []).append(pid)
        if children:
            self.with_children.add(group)
        if pss:
            self.proportional.add(group)

    def remove(self, group: str) -> None:
        self.roots.pop(group, None)

    def _proc(self, pid: int) -> psutil.Process | None:
        p = self._procs.get(pid)
        if p is None:
            try:
                p = psutil.Process(pid)
            except psutil.Error:
                return None
            self._procs[pid] = p
        return p

    def members(self, group: str) -> list[psutil.Process]:
        out = []
        for pid in self.roots.get(group, []):
            p = self._proc(pid)
            if p is None:
                continue
            out.append(p)
            if group in self.with_children:
                try:
                    out.extend(self._proc(c.pid) or c for c in p.children(recursive=True))
                except psutil.Error:
                    pass
        return out

    def cpu(self) -> dict[str, dict[int, float]]:
        """CPU seconds (user + system) so far, per group and pid; in a group with its children, also what
        its exited children spent (PostgreSQL's archive commands live about a second each, between samples)."""
        out: dict[str, dict[int, float]] = {}
        for group in self.roots:
            per: dict[int, float] = {}
            reaped = group in self.with_children
            for p in self.members(group):
                try:
                    t = p.cpu_times()
                    per[p.pid] = t.user + t.system + (t.children_user + t.children_system if reaped else 0.0)
                except psutil.Error:
                    pass
            out[group] = per
        return out

    def memory(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for group in self.roots:
            used = 0
            for p in self.members(group):
                try:
                    used += p.memory_full_info().pss if group in self.proportional else p.memory_info().rss
                except psutil.Error:
                    pass
            out[group] = used
        return out


def cpu_delta(before: dict[str, dict[int, float]], after: dict[str, dict[int, float]]) -> dict[str, float]:
    """Per group: CPU seconds spent between two snapshots (processes born in between count in full)."""
    out = {}
    for group, per in after.items():
        start = before.get(group, {})
        out[group] = sum(max(0.0, t - start.get(pid, 0.0)) for pid, t in per.items())
    return out


@dataclass
class Sample:
    at: float  # seconds since the step's start
    sent: int
    acked: int
    stored: float
    accepted: float
    backlog: float  # readings
    pending: float  # messages (JetStream consumers)


@dataclass
class Tracker:
    """Peak memory per group over a step."""

    groups: ProcessGroups
    peak: dict[str, int] = field(default_factory=dict)
    last_memory_at: float = 0.0

    def sample_memory(self, every: float = 1.0) -> None:
        now = time.monotonic()
        if now - self.last_memory_at < every:
            return
        self.last_memory_at = now
        for group, used in self.groups.memory().items():
            self.peak[group] = max(self.peak.get(group, 0), used)


def _hist_delta(before: dict[str, Samples], after: dict[str, Samples], name: str, **labels: str) -> tuple[float, float]:
    """(count, sum) of a histogram between two scrapes."""
    count = _sum(after, f"{name}_count", **labels) - _sum(before, f"{name}_count", **labels)
    value = _sum(after, f"{name}_sum", **labels) - _sum(before, f"{name}_sum", **labels)
    return count, value


def stage_figures(before: dict[str, Samples], after: dict[str, Samples]) -> dict[str, float]:
    """Where a reading's time goes, from the services' histograms: mean batch size, transaction time and
    publish-to-PubAck, p99 of the last two (seconds), and how many of each per second."""
    out: dict[str, float] = {}
    n, total_size = _hist_delta(before, after, "pulsestack_processor_batch_size", stage="raw")
    if n:
        out["raw batch (readings)"] = total_size / n
    _timing(out, before, after, "raw transaction", "raw transactions/s", "pulsestack_processor_db_write_seconds",
            stage="raw")
    _timing(out, before, after, "publish to RAW → PubAck", "RAW messages/s", "pulsestack_bus_publish_seconds",
            stream="RAW")
    return out


def _timing(out: dict[str, float], before: dict[str, Samples], after: dict[str, Samples], name: str, per_second: str,
            metric: str, **labels: str) -> None:
    n, seconds = _hist_delta(before, after, metric, **labels)
    if not n:
        return
    out[f"{name} mean (s)"] = seconds / n
    p99 = quantile(0.99, delta_histogram(histogram(before, metric, None, **labels),
                                         histogram(after, metric, None, **labels)))
    if p99 is not None:
        out[f"{name} p99 (s)"] = p99
    out[per_second] = n


# ------------------------------------------------------------------------------------------- postgres

_TABLES = """
SELECT relname, coalesce(pg_partition_root(relid), relid)::regclass::text AS root, seq_scan, seq_tup_read,
       coalesce(idx_scan, 0) AS idx_scan, n_tup_ins, n_tup_upd, n_tup_del
FROM pg_stat_user_tables
"""
# Bytes on disk per table, its partitions summed (heap, TOAST, free space and visibility maps, indexes).
_SIZES = """
SELECT coalesce(pg_partition_root(c.oid), c.oid)::regclass::text AS root,
       sum(pg_total_relation_size(c.oid))::bigint AS total, sum(pg_indexes_size(c.oid))::bigint AS indexes
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg_toast%'
GROUP BY 1
"""
_LSN = "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint"
# What the report prints of the server's configuration: every setting a file or the command line gave,
# and those that decide what a write costs, whatever their source.
_SETTINGS = """
SELECT name, current_setting(name) AS value, source FROM pg_settings
WHERE source IN ('configuration file', 'command line')
   OR name IN ('fsync', 'full_page_writes', 'synchronous_commit', 'wal_level', 'wal_compression', 'wal_buffers',
               'checkpoint_timeout', 'shared_buffers', 'max_wal_size', 'autovacuum', 'server_version')
ORDER BY name
"""
_DATABASE = """
SELECT xact_commit, xact_rollback, blks_read, blks_hit, tup_returned, tup_fetched, tup_inserted, tup_updated,
       tup_deleted
FROM pg_stat_database WHERE datname = current_database()
"""
_WAL = "SELECT wal_records, wal_bytes, wal_write, wal_sync FROM pg_stat_wal"
_ACTIVITY = """
SELECT coalesce(wait_event_type || ':' || wait_event, 'running') AS what, count(*) AS n
FROM pg_stat_activity
WHERE datname = current_database() AND state NOT IN ('idle') AND pid <> pg_backend_pid()
  AND backend_type = 'client backend'
GROUP BY 1
"""


async def pg_snapshot(conn: Any) -> dict[str, Any]:
    """Cumulative statistics of the database (tables, transactions, WAL)."""
    tables = {r["relname"]: dict(r) for r in await conn.fetch(_TABLES)}
    database = dict(await conn.fetchrow(_DATABASE))
    try:
        wal = dict(await conn.fetchrow(_WAL))
    except Exception:
        wal = {}
    return {"tables": tables, "database": database, "wal": wal}


async def pg_waits(conn: Any, into: dict[str, int]) -> None:
    """Adds one sample of what the busy backends are doing (running, or the event they wait for)."""
    for r in await conn.fetch(_ACTIVITY):
        into[r["what"]] = into.get(r["what"], 0) + int(r["n"])


def pg_delta(before: dict[str, Any], after: dict[str, Any], seconds: float) -> dict[str, Any]:
    """Per second: transactions, tuples, WAL; the tables with the most rows read by sequential scans."""
    out: dict[str, Any] = {}
    for k, v in after["database"].items():
        out[f"{k}/s"] = (v - before["database"].get(k, 0)) / seconds
    for k, v in after.get("wal", {}).items():
        out[f"{k}/s"] = (float(v) - float(before.get("wal", {}).get(k, 0))) / seconds
    tables = []
    for name, row in after["tables"].items():
        old = before["tables"].get(name, {})
        d = {k: (row[k] or 0) - (old.get(k) or 0) for k in row if k not in ("relname", "root")}
        if any(d.values()):
            tables.append((name, d))
    tables.sort(key=lambda t: -t[1]["seq_tup_read"])
    out["seq_scans"] = [
        (name, d["seq_scan"] / seconds, d["seq_tup_read"] / seconds) for name, d in tables[:5] if d["seq_tup_read"]
    ]
    tables.sort(key=lambda t: -(t[1]["n_tup_ins"] + t[1]["n_tup_upd"] + t[1]["n_tup_del"]))
    out["writes"] = [
        (name, d["n_tup_ins"] / seconds, d["n_tup_upd"] / seconds, d["n_tup_del"] / seconds)
        for name, d in tables[:8] if d["n_tup_ins"] + d["n_tup_upd"] + d["n_tup_del"]
    ]
    return out


def rows_written(before: dict[str, Any], after: dict[str, Any]) -> dict[str, int]:
    """Rows inserted, updated or deleted between two snapshots, per table (its partitions summed)."""
    out: dict[str, int] = {}
    for name, row in after["tables"].items():
        old = before["tables"].get(name, {})
        n = sum((row[k] or 0) - (old.get(k) or 0) for k in ("n_tup_ins", "n_tup_upd", "n_tup_del"))
        if n:
            out[row["root"]] = out.get(row["root"], 0) + n
    return out


async def wal_position(conn: Any) -> int:
    """The server's current WAL position in bytes (differences are WAL written)."""
    return int(await conn.fetchval(_LSN))


async def disk_sizes(conn: Any) -> dict[str, dict[str, int]]:
    """Bytes on disk per table {table: {"total", "indexes"}}, after a VACUUM ANALYZE: dead rows and free
    space as autovacuum would leave them in production."""
    await conn.execute("VACUUM ANALYZE")
    return {r["root"]: {"total": r["total"], "indexes": r["indexes"]} for r in await conn.fetch(_SIZES)}


def disk_growth(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    out = {}
    for table, size in after.items():
        old = before.get(table, {"total": 0, "indexes": 0})
        grown = {k: size[k] - old[k] for k in size}
        if any(grown.values()):
            out[table] = grown
    return out


async def pg_settings(conn: Any) -> list[tuple[str, str, str]]:
    return [(r["name"], r["value"], r["source"]) for r in await conn.fetch(_SETTINGS)]
