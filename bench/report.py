# ruff: noqa: RUF001
"""The benchmark's report: a Markdown file like the reference's tables, a PNG plot, the raw figures as JSON.

    python -m bench.report bench/results/DATE-HOST.json    # rewrites the .md and .png from the JSON
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import soak

MIB = 1024 * 1024
ONE_PROCESS = "pulsestack-all"  # the process group of `pulsestack run all` (every stage in one process)
PYTHON_SERVICES = ("ingest-udp", "ingest-http", "raw-processor")
PIPELINE = (*PYTHON_SERVICES, ONE_PROCESS, "nats-server", "postgres")
SEPARATE_GROUPS = (*PYTHON_SERVICES, "nats-server", "postgres", "generator")
ONE_PROCESS_GROUPS = (ONE_PROCESS, "nats-server", "postgres", "generator")
SHORT = {"ingest-udp": "ingest-udp", "ingest-http": "ingest-http", "raw-processor": "processor",
         ONE_PROCESS: "one process", "nats-server": "nats", "postgres": "postgres", "generator": "generator"}
RAMP_TITLES = {"nbiot": "Ramp: NB-IoT only", "mix": "Ramp: the mixed fleet (50 % NB-IoT, 30 % Sigfox, 20 % LoRaWAN)",
               "nbiot-one": "Ramp: NB-IoT only, every stage in one process (`pulsestack run all`)",
               "peer": "Peer: rsyslog imudp → ompgsql (fire-and-forget generator)"}
READINGS_PER_DEVICE_MONTH = 24 * 365.25 / 12  # one reading an hour
GB = 1e9
FOREVER_MONTHS = 120  # a table kept forever (retention 0), for the storage cost: ten years


@dataclass
class Cluster:
    nodes: int = 6
    vcpus: int = 2
    price: float = 18.0  # per node per month
    currency: str = "EUR"
    utilization: float = 0.6  # the share of the cluster's CPU the sizing may plan to use
    storage_price: float = 0.05  # per GB-month of disk
    retention: dict[str, int] = field(default_factory=dict)  # months each table keeps (0: forever)


@dataclass
class Report:
    title: str
    started: str
    finished: str = ""
    command: str = ""
    machine: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    steps: list[dict[str, Any]] = field(default_factory=list)
    ceilings: dict[str, float | None] = field(default_factory=dict)
    registry: dict[str, Any] = field(default_factory=dict)
    profiles: dict[str, Any] = field(default_factory=dict)
    cluster: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    postgres_settings: list[tuple[str, str, str]] = field(default_factory=list)  # name, value, source
    soak: dict[str, Any] = field(default_factory=dict)  # bench.soak.SoakSampler.to_json

    def save_json(self, path: Path) -> None:
        path.write_text(json.dumps(self.__dict__, indent=1, default=str))

    @classmethod
    def load_json(cls, path: Path) -> Report:
        return cls(**json.loads(path.read_text()))


def _ms(value: float | None) -> str:
    return "–" if value is None else (f"{1000 * value:.0f}" if value >= 0.01 else f"{1000 * value:.1f}")


def _lat(step: dict[str, Any]) -> str:
    lat = step.get("latency") or {}
    if not lat:
        return "–"
    return " / ".join(_ms(lat.get(k)) for k in ("p50", "p95", "p99"))


def _pct(part: float, whole: float) -> str:
    return f"{100.0 * part / whole:.2f} %" if whole else "–"


def _cpu(step: dict[str, Any], groups: tuple[str, ...] | None = None) -> float:
    cpu = step.get("cpu_seconds", {})
    return float(sum(v for g, v in cpu.items() if groups is None or g in groups)) / float(step["window"]) * 100.0


def _mem(step: dict[str, Any], groups: tuple[str, ...]) -> float:
    return float(sum(v for g, v in step.get("peak_memory", {}).items() if g in groups)) / MIB


def devices_per_vcpu(report: Report, mix: str) -> tuple[float, float] | None:
    """(whole box: ceiling x 3600 / vCPUs of this machine, pipeline only: per CPU-second of the pipeline)."""
    ceiling = report.ceilings.get(mix)
    if not ceiling:
        return None
    step = max((s for s in report.steps if s["mix"] == mix and s["sustained"]), key=lambda s: s["target_rate"])
    vcpus = float(report.machine.get("vcpus", "2"))
    whole = ceiling * 3600.0 / vcpus
    pipeline_cpu = sum(step["cpu_seconds"].get(g, 0.0) for g in PIPELINE) / step["window"]
    per_pipeline = step["stored_rate"] * 3600.0 / pipeline_cpu if pipeline_cpu else 0.0
    return whole, per_pipeline


def markdown(report: Report) -> str:
    """The report's markdown: each section from its own function, in reading order."""
    soak_steps = [step for step in report.steps if step["kind"] == "soak"]
    sections = [
        [f"# {report.title}\n", f"Run {report.started} → {report.finished}. Command: `{report.command}`.\n"],
        _summary_section(report), _reference_section(report), _ramp_sections(report), _per_reading_section(report),
        _footprint_section(report), _stages_section(report), _postgres_window_section(report),
        _cost_section(report), _registry_section(report), _profiles_section(report),
        soak.markdown(report.soak, soak_steps[-1] if soak_steps else None), _method_section(report),
        _postgres_section(report), _machine_section(report),
    ]
    return "\n".join(line for section in sections for line in section) + "\n"


def _summary_section(report: Report) -> list[str]:
    """The ceilings, the ratio to rsyslog, the footprint per reading and the targets."""
    out: list[str] = []
    w = out.append
    s = report.settings
    cpus = report.machine.get("vcpus", "?")
    w("## Summary\n")
    c = report.ceilings
    peer = c.get("peer")

    def ceil_text(key: str) -> str:
        v = c.get(key)
        if v is None:
            return "not measured" if key not in c else "no step sustained"
        return f"**{v:,.0f} readings/s** ({v * 3600 / 1e6:,.1f} M devices reporting hourly)"

    w(f"- NB-IoT only, both stages, end to end: {ceil_text('nbiot')}")
    if "nbiot-one" in c:
        w(f"- NB-IoT only, every stage in one process (`pulsestack run all`): {ceil_text('nbiot-one')}")
    w(f"- the mixed fleet (50 % NB-IoT, 30 % Sigfox, 20 % LoRaWAN; the last two over HTTP): {ceil_text('mix')}")
    w(f"- peer, rsyslog imudp → ompgsql, same machine, same run: {ceil_text('peer')}")
    ours, mixed = c.get("nbiot"), c.get("mix")
    if peer and ours:
        w(f"- ratio pulsestack NB-IoT / rsyslog: **{ours / peer:.2f}×**"
          + (f"; mix / rsyslog: {mixed / peer:.2f}×" if mixed else ""))
    w(f"- everything on one {cpus}-vCPU machine, the load generator included (its CPU is shown apart);"
      f" reference loads {s.get('window')} s each, ramp steps {s.get('step_seconds')} s each.")
    footprint = _footprint_step(report)
    if footprint:
        pr = footprint["per_reading"]
        w(f"- per reading (footprint step): **{pr['disk bytes']:,.0f} B on disk**, {pr['wal bytes'] or 0:,.0f} B of"
          f" WAL, {pr['rows'] or 0:.1f} rows written")
    w("- sustained = every reading sent stored exactly once (0 lost, 0 duplicated, buckets and index totals"
      " verified in PostgreSQL), the generator kept the rate, the backlog did not grow during the second half"
      " of the window nor exceed 2 s of load at its end, p99 ingest → committed ≤"
      f" {s.get('max_p99', 1.0):g} s, and the rate stored during the window ≥ 98 % of the rate offered.\n")
    targets = _targets(report)
    if targets:
        w("| target (issue #18) | measured | met |\n|---|---|---|")
        for name, measured, met in targets:
            w(f"| {name} | {measured} | {'yes' if met else ('–' if met is None else '**no**')} |")
        w("")
    return out


def _reference_section(report: Report) -> list[str]:
    """The reference design's loads, as its table."""
    out: list[str] = []
    w = out.append
    s = report.settings
    cpus = report.machine.get("vcpus", "?")
    ref = [st for st in report.steps if st["kind"] == "reference"]
    if ref:
        w("## The reference loads\n")
        w("Meters reporting once an hour, 50 % NB-IoT / 30 % Sigfox / 20 % LoRaWAN, n = 4 quarter-hour buckets,"
          f" only the meters due in the {s.get('window')} s window report (fleets registered in full). As the"
          " reference's table, with pulsestack's own processes:\n")
        w("| devices/h | registered | readings/s offered | messages delivered | delivered | lost | duplicated |"
          f" CPU (pipeline / whole box, % of {cpus} vCPUs) | memory (pipeline, MiB) | latency p50 / p95 / p99 (ms) |")
        w("|---|---|---|---|---|---|---|---|---|---|")
        for st in ref:
            w(f"| {st['devices_per_hour']:,} | {st['registered']:,} | {st['offered_rate']:,.1f} |"
              f" {st['delivered']:,} / {st['sent']:,} | {_pct(st['delivered'], st['sent'])} | {st['lost']} |"
              f" {st['duplicated']} | {_cpu(st, PIPELINE) / float(cpus):.1f} % /"
              f" {100 * st['machine_busy'] / st['window'] / float(cpus):.1f} % | {_mem(st, PIPELINE):,.0f} |"
              f" {_lat(st)} |")
        w("\nReference design (six 2-vCPU VMs, 3 ingest + 3 processing containers): 180 k → 180,000 delivered,"
          " 360 k → 360,000, 3.6 M → 1,758,356 of 3,600,000 (49 %) on 2-vCPU VMs, all on 4-vCPU VMs.\n")
    return out


def _stages_section(report: Report) -> list[str]:
    """Where a reading's time goes per step: the services' own histograms."""
    out: list[str] = []
    w = out.append
    staged = [st for st in report.steps if st.get("stages") and st["kind"] in ("ramp", "reference", "profile")]
    if staged:
        w("## Where a reading's time goes, per step (the services' own histograms, during the window)\n")
        w("| step | processor batch | processor txn mean / p99 ms | RAW PubAck mean / p99 ms | RAW msgs/s |"
          " readings per RAW msg |")
        w("|---|---|---|---|---|---|")
        for st in staged:
            g = st["stages"]

            def two(prefix: str, g: dict[str, float] = g) -> str:
                return f"{_ms(g.get(prefix + ' mean (s)'))} / {_ms(g.get(prefix + ' p99 (s)'))}"

            raw_msgs = g.get("RAW messages/s")
            per_msg = f"{st['stored_rate'] / raw_msgs:.1f}" if raw_msgs else "–"
            w(f"| {st['name']} | {g.get('raw batch (readings)', 0):.0f} | {two('raw transaction')} |"
              f" {two('publish to RAW → PubAck')} | {raw_msgs or 0:,.0f} | {per_msg} |")
        w("")
    return out


def _postgres_window_section(report: Report) -> list[str]:
    """PostgreSQL's commits, rows, WAL and waits during each window."""
    out: list[str] = []
    w = out.append
    pg_steps = [st for st in report.steps if st.get("postgres")]
    if pg_steps:
        w("### PostgreSQL during each window\n")
        w("| step | commits/s | rows ins+upd+del/s | WAL MB/s | WAL syncs/s | busy backends: what they wait for"
          " (share of samples) | sequential scans (table: rows read/s) |")
        w("|---|---|---|---|---|---|---|")
        for st in pg_steps:
            pg = st["postgres"]
            rows = sum(pg.get(k, 0.0) for k in ("tup_inserted/s", "tup_updated/s", "tup_deleted/s"))
            waits = ", ".join(f"{k} {v:.0%}" for k, v in list(st.get("pg_waits", {}).items())[:4]) or "–"
            scans = ", ".join(f"{name}: {per_s:,.0f}" for name, _, per_s in pg.get("seq_scans", [])[:3]) or "–"
            w(f"| {st['name']} | {pg.get('xact_commit/s', 0):,.0f} | {rows:,.0f} |"
              f" {pg.get('wal_bytes/s', 0) / 1e6:.1f} | {pg.get('wal_sync/s', 0):,.0f} | {waits} | {scans} |")
        w("")
    return out


def _registry_section(report: Report) -> list[str]:
    """Resident memory with millions of registered devices."""
    out: list[str] = []
    w = out.append
    if report.registry:
        g = report.registry
        w("## Memory with millions of registered devices\n")
        w(f"{g.get('registered', 0):,} NB-IoT devices registered (registration took {g.get('seconds', 0):.0f} s);"
          " resident memory of each service once its registry was loaded:\n")
        w("| service | RSS MiB |\n|---|---|")
        for name, rss in g.get("rss", {}).items():
            w(f"| {name} | {rss / MIB:,.1f} |")
        w("\nTarget: ≤ 150 MiB per Python service with 10 million registered devices.\n")
    return out


def _profiles_section(report: Report) -> list[str]:
    """py-spy's profiles: the top functions by own time per service."""
    out: list[str] = []
    w = out.append
    if report.profiles:
        w("## Where the time goes (py-spy)\n")
        w("Sampled with `py-spy record --nonblocking` at 100 Hz during a window at the stated rate (shares are of"
          " the samples in which the process was not idle). Own time of"
          " `Runner.run (runners.py)` is time spent in the event loop's C code: uvloop's epoll and socket"
          " reads/writes and the C extensions it calls back (asyncpg's protocol, msgspec), which py-spy cannot"
          " attribute to a Python function without `--native`.\n")
        for title, per_service in report.profiles.items():
            w(f"### {title}\n")
            for service, prof in per_service.items():
                if "error" in prof:
                    w(f"- {service}: {prof['error']}")
                    continue
                cpu = f"CPU {prof['cpu']:.0%} of a core (psutil)" if "cpu" in prof else ""
                w(f"**{service}**: {cpu}; {prof['samples']:,} active samples; top functions by own time:\n")
                w("| share | function |\n|---|---|")
                for share, name in prof["top"]:
                    w(f"| {share:.1%} | `{name}` |")
                if prof.get("modules"):
                    w("\nby module: " + ", ".join(f"{m} {v:.0%}" for m, v in prof["modules"]))
                w("")
    return out


def _method_section(report: Report) -> list[str]:
    return ["## Method\n", *(f"- {note}" for note in report.notes), ""]


def _machine_section(report: Report) -> list[str]:
    return ["## Machine and versions\n", *(f"- {k}: {v}" for k, v in report.machine.items()),
            *(f"- {k}: {v}" for k, v in report.versions.items()), "", f"Settings: `{json.dumps(report.settings)}`\n"]


def _ramp_sections(report: Report) -> list[str]:
    out: list[str] = []
    w = out.append
    for mix in ("nbiot", "mix", "nbiot-one", "peer"):
        steps = [st for st in report.steps if st["mix"] == mix and st["kind"] in ("ramp", "peer")]
        if not steps:
            continue
        w(f"## {RAMP_TITLES[mix]}\n")
        if mix == "peer":
            w("| offered/s | rows/s in window | delivered | lost | backlog growth | rsyslogd CPU | postgres CPU |"
              " generator CPU | rsyslogd RSS MiB | postgres MiB | result |")
            w("|---|---|---|---|---|---|---|---|---|---|---|")
            for st in steps:
                w(f"| {st['offered_rate']:,.0f} | {st['stored_rate']:,.0f} | {st['delivered']:,} / {st['sent']:,} |"
                  f" {st['lost']:,} | {st['backlog_growth']:,.0f} | {_cpu(st, ('rsyslogd',)):.0f} % |"
                  f" {_cpu(st, ('postgres',)):.0f} % | {_cpu(st, ('generator',)):.0f} % |"
                  f" {_mem(st, ('rsyslogd',)):,.0f} | {_mem(st, ('postgres',)):,.0f} | {_verdict(st)} |")
        else:
            groups = ONE_PROCESS_GROUPS if mix == "nbiot-one" else SEPARATE_GROUPS
            names = " / ".join(SHORT[g] for g in groups)
            w("| offered/s | stored/s | delivered | lost | dup | latency p50/p95/p99 ms | backlog growth |"
              f" retransmitted / HTTP retries | CPU % {names} / other | steal % | peak MiB {names} | result |")
            w("|---|---|---|---|---|---|---|---|---|---|---|---|")
            for st in steps:
                cpu = " / ".join(f"{_cpu(st, (g,)):.0f}" for g in groups)
                other = max(0.0, 100 * st["machine_busy"] / st["window"] - _cpu(st))
                mem = " / ".join(f"{_mem(st, (g,)):,.0f}" for g in groups)
                w(f"| {st['offered_rate']:,.0f} | {st['stored_rate']:,.0f} | {st['delivered']:,} / {st['sent']:,} |"
                  f" {st['lost']} | {st['duplicated']} | {_lat(st)} | {st['backlog_growth']:,.0f} |"
                  f" {st.get('retransmitted', 0):,} / {st.get('http_retries', 0):,} | {cpu} / {other:.0f} |"
                  f" {100 * st.get('steal_seconds', 0) / st['window']:.0f} | {mem} | {_verdict(st)} |")
        w("")
        w("CPU is the percentage of one vCPU over the window (100 % = one core busy); *other* is the rest of"
          " the machine (other work on this shared box, the benchmark's own sampling); *steal* is time the"
          " hypervisor gave to other guests. Postgres memory is the sum of its processes' PSS (shared buffers"
          " counted once).\n")
    return out


def _num(value: float | None, digits: int = 0) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _per_reading_section(report: Report) -> list[str]:
    steps = [st for st in report.steps if st.get("per_reading")]
    if not steps:
        return []
    out = ["## What a reading costs, per step\n",
           "Disk: growth of every table (partitions, TOAST, indexes) from before the window to after the drain,"
           " each after `VACUUM ANALYZE`, per reading stored in the step. WAL, rows written (inserted + updated +"
           " deleted) and CPU: during the window, per reading stored during the window.\n",
           "| step | stored in window | disk B | WAL B | rows written | CPU µs per process |"
           " retransmitted / HTTP retries |",
           "|---|---|---|---|---|---|---|"]
    for st in steps:
        pr = st["per_reading"]
        cpu = ", ".join(f"{SHORT.get(g, g)} {us:,.0f}" for g, us in sorted(pr["cpu us"].items(), key=lambda kv: -kv[1])
                        if us >= 0.5) or "–"
        out.append(f"| {st['name']} | {pr['stored in window']:,.0f} | {_num(pr['disk bytes'])} |"
                   f" {_num(pr['wal bytes'])} | {_num(pr['rows'], 1)} | {cpu} |"
                   f" {st.get('retransmitted', 0):,} / {st.get('http_retries', 0):,} |")
    out.append("")
    return out


def _footprint_step(report: Report) -> dict[str, Any] | None:
    steps = [st for st in report.steps if st["kind"] == "footprint" and st.get("per_reading", {}).get("disk bytes")]
    return steps[-1] if steps else None


def _footprint_section(report: Report) -> list[str]:
    st = _footprint_step(report)
    if st is None:
        return []
    pr = st["per_reading"]
    out = [f"## Storage per reading: {st['name']}\n",
           f"{st['delivered']:,} readings stored from {st['registered']:,} meters. Per table, its partitions"
           " summed:\n",
           "| table | bytes on disk per reading | of which indexes | per meter-day (24 readings) | rows written per"
           " reading |",
           "|---|---|---|---|---|"]
    tables = sorted(set(st["disk_growth"]) | set(st["rows_written"]),
                    key=lambda t: -st["disk_growth"].get(t, {}).get("total", 0))
    for table in tables:
        grown = st["disk_growth"].get(table, {"total": 0, "indexes": 0})
        per = grown["total"] / st["delivered"]
        out.append(f"| {table} | {per:,.0f} | {grown['indexes'] / st['delivered']:,.0f} | {24 * per:,.0f} |"
                   f" {_num(pr['rows by table'].get(table), 2)} |")
    out.append(f"| **all** | **{pr['disk bytes']:,.0f}** | | {24 * pr['disk bytes']:,.0f} | {_num(pr['rows'], 2)} |")
    out.append("")
    return out


def storage_per_device(report: Report) -> float | None:
    """Bytes a device holds on disk at steady state: each table's bytes per reading, times readings a month,
    times the months it keeps them; tables without retention (the registry, the per-meter state) hold what the footprint
    step grew them by per meter."""
    st = _footprint_step(report)
    if st is None:
        return None
    retention = report.cluster.get("retention", {})
    held = 0.0
    for table, grown in st["disk_growth"].items():
        months = retention.get(table)
        if months is None:
            held += grown["total"] / st["registered"]
        else:
            held += grown["total"] / st["delivered"] * READINGS_PER_DEVICE_MONTH * (months or FOREVER_MONTHS)
    return held


def _cost_section(report: Report) -> list[str]:
    if not report.cluster:
        return []
    out: list[str] = []
    w = out.append
    cl = report.cluster
    cur = cl["currency"]
    w("## Cost per device\n")
    w(f"Cluster shape (command line): {cl['nodes']} nodes × {cl['vcpus']} vCPUs at {cl['price']:g}"
      f" {cur} per node per month = {cl['nodes'] * cl['price']:,.2f} {cur}/month,"
      f" planned at {cl['utilization']:.0%} CPU. One reading per device per hour.\n")
    held = storage_per_device(report)
    price = cl.get("storage_price", 0.0)
    storage = held / GB * price if held is not None else None
    w("| workload | devices per vCPU (this box: ceiling / all vCPUs, generator included) |"
      " devices per vCPU (pipeline CPU only) | cluster capacity (devices) | cost per device per month (CPU) |"
      " with storage |")
    w("|---|---|---|---|---|---|")
    for mix, label in (("nbiot", "NB-IoT only"), ("nbiot-one", "NB-IoT only, one process"), ("mix", "mixed fleet")):
        d = devices_per_vcpu(report, mix)
        if d is None:
            continue
        whole, pipeline = d
        capacity = whole * cl["nodes"] * cl["vcpus"] * cl["utilization"]
        cost = cl["nodes"] * cl["price"] / capacity if capacity else float("nan")
        with_storage = f"{cost + storage:.7f} {cur}" if storage is not None else "–"
        w(f"| {label} | {whole:,.0f} | {pipeline:,.0f} | {capacity:,.0f} | {cost:.7f} {cur} | {with_storage} |")
    if held is not None and storage is not None:
        kept = ", ".join(f"{t} {m or f'forever (counted as {FOREVER_MONTHS})'}"
                         for t, m in cl.get("retention", {}).items())
        w(f"\nStorage at steady state (footprint step): {held / 1e6:,.1f} MB per device"
          f" ({READINGS_PER_DEVICE_MONTH:,.0f} readings a month; months kept per table: {kept}; tables without"
          f" retention hold their growth per meter) at {price:g} {cur} per GB-month = {storage:.7f} {cur} per"
          " device per month.")
    w("\nThe capacity uses the conservative figure (whole box). It assumes the single-node durability profile"
      " measured here (fsync before each PubAck); the swarm profile replicates each stream 3 times, which"
      " costs more per reading. Reference: €116/month for 3.6 M devices on six 4-vCPU VMs ≈ €0.00003 per"
      " device.\n")
    return out


def _postgres_section(report: Report) -> list[str]:
    if not report.postgres_settings:
        return []
    out = ["## PostgreSQL configuration\n",
           "Production's (pulsestack/store/postgresql.conf, the config_file stack.yml mounts); the command line"
           " sets only where this server listens. As the server reported them:\n",
           "| setting | value | source |", "|---|---|---|"]
    out += [f"| {name} | `{value}` | {source} |" for name, value, source in report.postgres_settings]
    out.append("")
    return out


def _verdict(step: dict[str, Any]) -> str:
    return "sustained" if step["sustained"] else f"not sustained: {step['verdict']}"


def _ceiling_step(report: Report, mix: str) -> dict[str, Any] | None:
    """The sustained step at a ramp's ceiling (the highest sustained rate)."""
    sustained = [s for s in report.steps if s["mix"] == mix and s["kind"] == "ramp" and s["sustained"]]
    return max(sustained, key=lambda s: s["target_rate"]) if sustained else None


def _targets(report: Report) -> list[tuple[str, str, bool | None]]:
    """The lean-storage issue's targets (#18), each against this run's figure."""
    out: list[tuple[str, str, bool | None]] = []
    footprint = _footprint_step(report)
    if footprint:
        pr = footprint["per_reading"]
        out.append(("on disk per NB-IoT reading ≤ 300 B", f"{pr['disk bytes']:,.0f} B", pr["disk bytes"] <= 300))
        if pr.get("wal bytes") is not None:
            out.append(("WAL per reading ≤ 800 B", f"{pr['wal bytes']:,.0f} B", pr["wal bytes"] <= 800))
        if pr.get("rows") is not None:
            out.append(("rows written per reading ≤ 3", f"{pr['rows']:.2f}", pr["rows"] <= 3))
    c = report.ceilings
    for mix, name, goal in (("nbiot", "NB-IoT", 12_000), ("mix", "mixed fleet", 5_000)):
        if mix in c:
            v = c[mix] or 0
            out.append((f"{name} ceiling with p99 ≤ {report.settings.get('max_p99', 1.0):g} s ≥ {goal:,}/s",
                        f"{v:,.0f}/s", v >= goal))
    peer = c.get("peer")
    if peer and "nbiot" in c:
        ratio = (c["nbiot"] or 0) / peer
        out.append(("NB-IoT / rsyslog ceiling, same run ≥ 0.5×", f"{ratio:.2f}×", ratio >= 0.5))
    for mix in ("nbiot", "mix", "nbiot-one"):
        step = _ceiling_step(report, mix)
        if step:
            groups = (ONE_PROCESS,) if mix == "nbiot-one" else PYTHON_SERVICES
            worst = max((_mem(step, (g,)) for g in groups), default=0.0)
            out.append((f"RSS per service at the {mix} ceiling ≤ 150 MiB", f"{worst:,.0f} MiB (largest)",
                        worst <= 150))
    if report.registry:
        worst = max((v for k, v in report.registry.get("rss", {}).items() if k in PYTHON_SERVICES), default=0)
        out.append((f"≤ 150 MiB RSS per Python service with {report.registry.get('registered', 0) / 1e6:.0f} M"
                    " registered devices", f"{worst / MIB:.0f} MiB (largest)", worst <= 150 * MIB))
    return out


def plot(report: Report, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, lat_ax) = plt.subplots(2, 1, figsize=(10, 9), dpi=110, sharex=True,
                                     gridspec_kw={"height_ratios": [3, 2]})
    styles = {"mix": ("tab:green", "mixed fleet"), "nbiot": ("tab:blue", "NB-IoT only"),
              "nbiot-one": ("tab:purple", "NB-IoT, one process"),
              "peer": ("tab:red", "rsyslog peer (rows)")}
    lo, hi = math.inf, 0.0
    crossed = False
    for mix, (color, label) in styles.items():
        steps = sorted((s for s in report.steps if s["mix"] == mix and s["kind"] in ("ramp", "peer")),
                       key=lambda s: s["offered_rate"])
        if not steps:
            continue
        x = [s["offered_rate"] for s in steps]
        y = [max(s["stored_rate"], 1e-3) for s in steps]
        lo, hi = min(lo, *x), max(hi, *x, *y)
        ax.plot(x, y, "-o", color=color, label=f"{label}: stored/s")
        bad = [(s["offered_rate"], max(s["stored_rate"], 1e-3)) for s in steps if not s["sustained"]]
        if bad:
            ax.plot([b[0] for b in bad], [b[1] for b in bad], "x", color="black", markersize=10,
                    label=None if crossed else "not sustained")
            crossed = True
        lat = [(s["offered_rate"], s["latency"].get("p99")) for s in steps if s.get("latency")]
        lat = [(a, b * 1000) for a, b in lat if b is not None]
        if lat:
            lat_ax.plot([a for a, _ in lat], [b for _, b in lat], "-s", color=color, label=f"{label}: p99")
    reference = sorted((s for s in report.steps if s["kind"] == "reference"), key=lambda s: s["offered_rate"])
    if reference:
        x = [s["offered_rate"] for s in reference]
        ax.plot(x, [max(s["stored_rate"], 1e-3) for s in reference], "D", color="black", fillstyle="none",
                markersize=8, label="reference loads (mixed fleet, real rates)")
        lat = [(s["offered_rate"], s["latency"].get("p99")) for s in reference if s.get("latency")]
        lat = [(a, b * 1000) for a, b in lat if b is not None]
        if lat:
            lat_ax.plot([a for a, _ in lat], [b for _, b in lat], "D", color="black", fillstyle="none",
                        markersize=8, label="reference loads: p99")
        lo, hi = min(lo, *x), max(hi, *x)
    if hi:
        ax.plot([lo, hi], [lo, hi], ":", color="grey", label="stored = offered")
    for mix, (color, label) in styles.items():
        v = report.ceilings.get(mix)
        if not v:
            continue
        for axis in (ax, lat_ax):
            axis.axvline(v, color=color, linestyle="-." if mix == "peer" else "--", alpha=0.7)
        ax.annotate(f"{label.split(' (')[0]} ceiling {v:,.0f}/s", xy=(v, hi if hi else v), rotation=90,
                    va="top", ha="right", fontsize=8, color=color)
    lat_ax.axhline(300, color="grey", linestyle="--", linewidth=0.8)
    lat_ax.text(lo if lo < math.inf else 1, 300, " 300 ms target", va="bottom", fontsize=8, color="grey")
    for axis in (ax, lat_ax):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.grid(alpha=0.3, which="both")
    ax.set_ylabel("stored readings/s (during the window)")
    lat_ax.set_ylabel("p99 ingest → committed (ms)")
    lat_ax.set_xlabel("offered readings/s")
    ax.set_title(f"{report.title}\nstored rate and p99 latency against offered rate", fontsize=10)
    for axis in (ax, lat_ax):
        if axis.get_legend_handles_labels()[0]:
            axis.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write(report: Report, base: Path) -> tuple[Path, Path, Path]:
    base.parent.mkdir(parents=True, exist_ok=True)
    md, png, js = base.with_suffix(".md"), base.with_suffix(".png"), base.with_suffix(".json")
    report.save_json(js)
    plot(report, png)
    text = markdown(report)
    figure = f"![stored rate and p99 latency against offered rate]({png.name})"
    text = text.replace("## Summary\n", f"## Summary\n\n{figure}\n", 1)
    if report.soak:
        soak_png = base.with_name(base.name + "-soak.png")
        soak.plot(report.soak, soak_png, report.title)
        text = text.replace("## Soak\n", f"## Soak\n\n![the soak over time]({soak_png.name})\n", 1)
    md.write_text(text)
    return md, png, js


if __name__ == "__main__":
    source = Path(sys.argv[1])
    for written in write(Report.load_json(source), source.with_suffix("")):
        print(written)
