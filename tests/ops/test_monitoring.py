"""Monitoring configuration checked by its own tools and against its contracts.

- promtool: `check config`, `check rules`, `test rules` (every alert fires and
  stays quiet in monitoring/prometheus/tests), and every PromQL expression of
  the Grafana dashboards parses.
- amtool: `check-config` and the routing tree.
- Every metric name used by a rule or a panel is exported by pulsestack
  (monitoring/pulsestack-metrics.yml) or listed with the third-party exporter
  and version that provides it (monitoring/third-party-metrics.yml).
- The Fleet dashboard's SQL runs against the real schema as the read-only role.

A missing tool skips its test, unless PULSESTACK_REQUIRE_ALL=1 (CI), where it
fails. `.ci/tools-monitoring.sh` installs the tools on Debian.

`check_scraped_metric_names()` compares the documented metric names with the
names seen in a real scrape; the swarm proof calls it with its scrape.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unavailable import unavailable

REPO = Path(__file__).resolve().parents[2]
MON = REPO / "monitoring"
PROM_DIR = MON / "prometheus"
RULE_FILES = sorted((PROM_DIR / "rules").glob("*.yml"))
RULE_TEST_FILES = sorted((PROM_DIR / "tests").glob("*.yml"))
AM_CONFIG = MON / "alertmanager" / "alertmanager.yml"
DASHBOARD_DIR = MON / "grafana" / "dashboards"
PROVISIONING = MON / "grafana" / "provisioning"
MIGRATIONS = REPO / "pulsestack" / "store" / "migrations"

DASHBOARD_UIDS = {"swarm-nodes", "services-containers", "nats-jetstream", "pipeline", "fleet"}
SEVERITIES = {"critical", "warning", "info"}
REQUIRED_ANNOTATIONS = ("summary", "description", "runbook")

# Alertmanager fields this config uses that Debian's amtool 0.25 does not
# know, with the release that added them. The amtool check replaces them by
# their 0.25 equivalent; anything else newer than 0.25 fails the check.
AM_FIELDS_NEWER_THAN_0_25 = {"url_file": ("url", "http://placeholder.invalid/", "0.26")}


# --------------------------------------------------------------- helpers


def require_tool(name: str) -> str:
    """Path of a command-line tool; skip without it, or fail in CI."""
    path = shutil.which(name)
    if path:
        return path
    unavailable(f"{name} not found (install with: sudo bash .ci/tools-monitoring.sh)")


def require_module(name: str) -> Any:
    try:
        return __import__(name)
    except ImportError:
        unavailable(f"Python package {name} not installed")


def run(cmd: list[str], cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)


def load_yaml(path: Path) -> Any:
    with path.open() as f:
        return yaml.safe_load(f)


def rule_groups() -> list[dict[str, Any]]:
    groups = []
    for path in RULE_FILES:
        for group in load_yaml(path)["groups"]:
            groups.append({**group, "_file": path.name})
    return groups


def alert_rules() -> list[dict[str, Any]]:
    return [rule for g in rule_groups() for rule in g["rules"] if "alert" in rule]


def recorded_names() -> set[str]:
    return {rule["record"] for g in rule_groups() for rule in g["rules"] if "record" in rule}


def dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARD_DIR.glob("*.json"))}


def iter_panels(panels: list[dict[str, Any]]) -> Iterable[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels", []))


def _is_prometheus(ds: Any) -> bool:
    return isinstance(ds, dict) and ds.get("type") == "prometheus"


def dashboard_promql() -> list[tuple[str, str]]:
    """(where, expression) for every PromQL query of every dashboard.

    Panel targets, and variable queries: label_values(<selector>, label) and
    query_result(<expr>) carry PromQL too.
    """
    found = []
    for name, board in dashboards().items():
        for panel in iter_panels(board.get("panels", [])):
            for target in panel.get("targets", []):
                ds = target.get("datasource") or panel.get("datasource")
                if _is_prometheus(ds) and target.get("expr"):
                    found.append((f"{name}: {panel['title']} / {target['refId']}", target["expr"]))
        for var in board.get("templating", {}).get("list", []):
            if var.get("type") != "query" or not _is_prometheus(var.get("datasource")):
                continue
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            m = re.fullmatch(r"\s*label_values\((.+),\s*(\w+)\s*\)\s*", query)
            if m:
                found.append((f"{name}: variable {var['name']}", m.group(1)))
                continue
            m = re.fullmatch(r"\s*query_result\((.+)\)\s*", query)
            if m:
                found.append((f"{name}: variable {var['name']}", m.group(1)))
                continue
            if not re.fullmatch(r"\s*label_values\(\s*\w+\s*\)\s*", query):
                raise AssertionError(f"{name}: variable {var['name']}: unhandled query {query!r}")
    return found


# Grafana's built-in variables, replaced by values of the right kind so the
# expression can be parsed; dashboard variables are regex matchers here.
GRAFANA_BUILTINS = {
    "__rate_interval": "5m",
    "__interval": "1m",
    "__range": "6h",
    "__range_s": "21600",
    "__range_ms": "21600000",
    "__interval_ms": "60000",
}


def substitute_grafana_variables(expr: str, variables: set[str]) -> str:
    """Replace $name, ${name} and ${name:format}; unknown names are errors."""

    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name in GRAFANA_BUILTINS:
            return GRAFANA_BUILTINS[name]
        if name in variables:
            return ".+"
        raise AssertionError(f"unknown Grafana variable ${name} in {expr!r}")

    # $1, $2 ... are label_replace back-references, not variables.
    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$([A-Za-z_]\w*)", repl, expr)


def dashboard_variables() -> set[str]:
    return {v["name"] for b in dashboards().values() for v in b.get("templating", {}).get("list", [])}


# -------------------------------------------------- PromQL metric names

_KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "offset", "bool", "inf", "nan", "atan2", "start", "end",
}
_LABEL_LIST_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_TOKEN = re.compile(
    r"""
    (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<number>[0-9][0-9a-zA-Z_.]*|\.[0-9]+)
  | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<punct>[{}()\[\],])
  | (?P<other>[^\s])
  | (?P<space>\s+)
    """,
    re.VERBOSE,
)


def promql_metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (a lexer, not a full parser).

    An identifier is a metric name unless it is a keyword, a function or
    aggregation (followed by "(" or by/without), a label name inside {...},
    a label in a by/without/on/ignoring/group_x(...) list, or part of a
    [range].
    """
    tokens = [(m.lastgroup, m.group()) for m in _TOKEN.finditer(expr) if m.lastgroup != "space"]
    names: set[str] = set()
    brace = bracket = 0
    paren_kinds: list[str] = []  # "labels" or "expr" for each open parenthesis
    for i, (kind, text) in enumerate(tokens):
        nxt = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        if kind == "punct":
            if text == "{":
                brace += 1
            elif text == "}":
                brace -= 1
            elif text == "[":
                bracket += 1
            elif text == "]":
                bracket -= 1
            elif text == "(":
                prev = tokens[i - 1][1] if i else ""
                paren_kinds.append("labels" if prev in _LABEL_LIST_KEYWORDS else "expr")
            elif text == ")":
                paren_kinds.pop()
            continue
        if kind != "ident" or brace or bracket or (paren_kinds and paren_kinds[-1] == "labels"):
            continue
        # Functions and aggregations: `rate(`, `sum(`, `sum by (x) (`.
        if text in _KEYWORDS or nxt == "(" or nxt in ("by", "without"):
            continue
        names.add(text)
    return names


def load_pulsestack_metrics() -> dict[str, dict[str, Any]]:
    metrics: dict[str, dict[str, Any]] = load_yaml(MON / "pulsestack-metrics.yml")["metrics"]
    return metrics


def load_third_party() -> dict[str, Any]:
    doc: dict[str, Any] = load_yaml(MON / "third-party-metrics.yml")
    return doc


def pulsestack_series_names() -> dict[str, str]:
    """Every series name pulsestack exposes -> its documented metric."""
    names = {}
    for name, meta in load_pulsestack_metrics().items():
        if meta["type"] == "histogram":
            for suffix in ("_bucket", "_sum", "_count"):
                names[name + suffix] = name
        else:
            names[name] = name
    return names


def used_metric_names() -> dict[str, set[str]]:
    """Metric name -> where it is used, over all rules and dashboards."""
    used: dict[str, set[str]] = {}
    for group in rule_groups():
        for rule in group["rules"]:
            where = f"{group['_file']}: {rule.get('alert') or rule.get('record')}"
            for name in promql_metric_names(rule["expr"]):
                used.setdefault(name, set()).add(where)
    for where, expr in dashboard_promql():
        for name in promql_metric_names(expr):
            used.setdefault(name, set()).add(where)
    return used


def check_scraped_metric_names(scraped: Iterable[str], exporters: Iterable[str] | None = None) -> list[str]:
    """Compare pulsestack's documented metrics with the names of a real scrape.

    `scraped`: metric names seen when scraping the running pulsestack services
    (sample names such as pulsestack_x_total or pulsestack_y_seconds_bucket,
    or family names from "# TYPE" lines; prometheus_client's *_created series
    are ignored). `exporters`: the pulsestack services that were scraped
    (e.g. {"ingest-udp", "raw-processor"}); metrics documented only for other
    services are then not required. None means all of them.

    Returns a list of problems, empty when
    - every pulsestack metric that a rule or a dashboard uses, and that one of
      the scraped services documents exporting, appears in the scrape, and
    - every pulsestack_* name in the scrape is documented in
      monitoring/pulsestack-metrics.yml.
    """
    documented = load_pulsestack_metrics()
    series = pulsestack_series_names()
    seen: set[str] = set()
    problems = []
    for raw in scraped:
        name = raw.strip()
        if not name.startswith("pulsestack_"):
            continue
        if name.endswith("_created") and (name[: -len("_created")] + "_total" in series
                                          or name[: -len("_created")] in documented):
            continue
        if name in series:
            seen.add(series[name])
        elif name + "_total" in series:  # family name of a counter
            seen.add(name + "_total")
        elif name in documented:  # family name of a histogram
            seen.add(name)
        else:
            problems.append(f"{name}: scraped but not documented in monitoring/pulsestack-metrics.yml")
    wanted = set(exporters) if exporters is not None else None
    for used in sorted(used_metric_names()):
        metric = series.get(used)
        if metric is None:
            continue
        if wanted is not None and not wanted & set(documented[metric]["exporters"]):
            continue
        if metric not in seen:
            problems.append(f"{metric}: used by rules or dashboards but not in the scrape")
    return problems


# ------------------------------------------------------------- promtool


def test_promtool_check_config() -> None:
    promtool = require_tool("promtool")
    result = run([promtool, "check", "config", str(PROM_DIR / "prometheus.yml")])
    assert result.returncode == 0, result.stdout + result.stderr
    # The config's rule_files glob must reach every rule file.
    assert f"{len(RULE_FILES)} rule files found" in result.stdout + result.stderr


def test_promtool_check_rules() -> None:
    promtool = require_tool("promtool")
    result = run([promtool, "check", "rules", *map(str, RULE_FILES)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_test_rules() -> None:
    promtool = require_tool("promtool")
    assert RULE_TEST_FILES
    result = run([promtool, "test", "rules", *map(str, RULE_TEST_FILES)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_severity_summary_description_runbook() -> None:
    alerts = alert_rules()
    assert alerts
    names = [a["alert"] for a in alerts]
    assert len(names) == len(set(names)), "alert names must be unique"
    for alert in alerts:
        assert alert.get("labels", {}).get("severity") in SEVERITIES, alert["alert"]
        for key in REQUIRED_ANNOTATIONS:
            assert str(alert.get("annotations", {}).get(key, "")).strip(), f"{alert['alert']}: {key}"


def _unit_test_cases() -> dict[str, dict[str, int]]:
    cases: dict[str, dict[str, int]] = {}
    for path in RULE_TEST_FILES:
        for test in load_yaml(path)["tests"]:
            for case in test.get("alert_rule_test", []):
                kind = "fires" if case.get("exp_alerts") else "quiet"
                counts = cases.setdefault(case["alertname"], {"fires": 0, "quiet": 0})
                counts[kind] += 1
    return cases


def test_every_alert_is_unit_tested_firing_and_not_firing() -> None:
    cases = _unit_test_cases()
    missing = []
    for alert in alert_rules():
        counts = cases.get(alert["alert"], {"fires": 0, "quiet": 0})
        if not counts["fires"]:
            missing.append(f"{alert['alert']}: no case where it fires")
        if not counts["quiet"]:
            missing.append(f"{alert['alert']}: no case where it stays quiet")
    assert not missing, "\n".join(missing)
    unknown = set(cases) - {a["alert"] for a in alert_rules()}
    assert not unknown, f"tests for alerts that do not exist: {sorted(unknown)}"


def test_rule_tests_evaluate_recording_groups_first() -> None:
    # promtool evaluates groups missing from group_eval_order first and in
    # random order, which makes alerts on recorded series flaky.
    groups = rule_groups()
    recording = [g["name"] for g in groups if any("record" in r for r in g["rules"])]
    alerting = [g["name"] for g in groups if g["name"] not in recording]
    for path in RULE_TEST_FILES:
        order = load_yaml(path).get("group_eval_order", [])
        assert sorted(order) == sorted(recording + alerting), f"{path.name}: list every rule group"
        last_recording = max(order.index(n) for n in recording)
        first_alerting = min(order.index(n) for n in alerting)
        assert last_recording < first_alerting, f"{path.name}: recording groups must come first"


def test_dashboard_promql_parses(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    exprs = dashboard_promql()
    assert exprs
    variables = dashboard_variables()
    rules = [
        {"record": f"dashboard:check_{i}:expr", "expr": substitute_grafana_variables(expr, variables)}
        for i, (_, expr) in enumerate(exprs)
    ]
    tmp = tmp_path / "dashboard-promql.rules.yml"
    tmp.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}, sort_keys=False))
    result = run([promtool, "check", "rules", str(tmp)])
    if result.returncode != 0:
        # Name the panel of each failing expression.
        where = "\n".join(f"  dashboard:check_{i}: {w}" for i, (w, _) in enumerate(exprs))
        pytest.fail(result.stdout + result.stderr + "\nexpressions:\n" + where)


def test_promql_metric_name_lexer() -> None:
    expr = (
        'sum by (node, le) (rate(foo_bucket{job="x", le=~"1|2"}[5m] offset 1w)) '
        '/ ignoring (reason) group_left bar:recorded:rate5m '
        'and on () count(baz == 0) > 0.5 * 1e3 or vector(0) unless label_replace(qux, "a", "$1", "b", "(.*)")'
    )
    assert promql_metric_names(expr) == {"foo_bucket", "bar:recorded:rate5m", "baz", "qux"}
    assert promql_metric_names("histogram_quantile(0.99, sum by (le) (rate(x_bucket[5m:1m])))") == {"x_bucket"}


def test_every_metric_name_is_exported_by_pulsestack_or_documented() -> None:
    pulsestack = pulsestack_series_names()
    third_party = load_third_party()["metrics"]
    recorded = recorded_names()
    unknown = {
        name: sorted(where)
        for name, where in used_metric_names().items()
        if name not in pulsestack and name not in third_party and name not in recorded
    }
    assert not unknown, "metrics neither pulsestack's nor in third-party-metrics.yml:\n" + yaml.safe_dump(unknown)
    for name in used_metric_names():
        assert not (name.startswith("pulsestack_") and name not in pulsestack), name


def test_third_party_metrics_name_an_exporter_and_version() -> None:
    doc = load_third_party()
    exporters = doc["exporters"]
    for name, meta in exporters.items():
        assert meta.get("image") and meta.get("version"), name
    used = used_metric_names()
    for metric, exporter in doc["metrics"].items():
        assert exporter in exporters, f"{metric}: unknown exporter {exporter}"
        # A stale entry would let a renamed metric slip through unnoticed.
        assert metric in used, f"{metric} is listed but no rule or dashboard uses it"


def test_recorded_names_follow_level_metric_operations() -> None:
    for name in recorded_names():
        assert re.fullmatch(r"[a-z_]+:[a-z_]+:[a-z0-9_]+", name), name


# ------------------------------------------- scraped metric names (proof)


def test_check_scraped_metric_names_accepts_a_complete_scrape() -> None:
    scrape = set(pulsestack_series_names()) | {"pulsestack_ingest_received_created", "process_cpu_seconds_total"}
    assert check_scraped_metric_names(scrape) == []
    # Family names from "# TYPE" lines work too.
    families = {n.removesuffix("_total") for n in load_pulsestack_metrics()}
    assert check_scraped_metric_names(families) == []


def test_check_scraped_metric_names_reports_missing_and_undocumented() -> None:
    scrape = set(pulsestack_series_names()) - {"pulsestack_postgres_up"} | {"pulsestack_surprise_total"}
    problems = check_scraped_metric_names(scrape)
    assert any(p.startswith("pulsestack_postgres_up:") for p in problems)
    assert any(p.startswith("pulsestack_surprise_total:") for p in problems)
    # Without the swarm exporter in the scrape, its metrics are not required.
    only_processors = {n for n in scrape if "swarm" not in n and "postgres" not in n}
    problems = check_scraped_metric_names(only_processors, exporters={"raw-processor"})
    assert problems == ["pulsestack_surprise_total: scraped but not documented in monitoring/pulsestack-metrics.yml"]


# ------------------------------------------------------ Prometheus config


def _relabel(labels: dict[str, str], configs: list[dict[str, Any]]) -> dict[str, str] | None:
    """Prometheus relabeling (keep and replace actions), for config tests."""
    labels = dict(labels)
    for cfg in configs:
        action = cfg.get("action", "replace")
        value = cfg.get("separator", ";").join(labels.get(s, "") for s in cfg.get("source_labels", []))
        regex = re.compile(cfg.get("regex", "(.*)"))
        m = regex.fullmatch(value)
        if action == "keep":
            if not m:
                return None
        elif action == "drop":
            if m:
                return None
        elif action == "replace":
            if m:
                groups = m.groups()

                def backref(g: re.Match[str], groups: tuple[str | Any, ...] = groups) -> str:
                    n = int(g.group(1))
                    return (groups[n - 1] or "") if 0 < n <= len(groups) else ""

                new = re.sub(r"\$(\d+)", backref, cfg.get("replacement", "$1"))
                if new:
                    labels[cfg["target_label"]] = new
                else:
                    labels.pop(cfg["target_label"], None)
        else:
            raise AssertionError(f"relabel action {action} not modelled here")
    return {k: v for k, v in labels.items() if not k.startswith("__meta_")}


def _task(**overrides: str) -> dict[str, str]:
    meta = {
        "__address__": "10.0.5.7:80",
        "__meta_dockerswarm_task_desired_state": "running",
        "__meta_dockerswarm_network_name": "pulsestack_monitoring",
        "__meta_dockerswarm_node_hostname": "worker-2",
        "__meta_dockerswarm_service_name": "pulsestack_raw-processor",
        "__meta_dockerswarm_task_slot": "2",
        "__meta_dockerswarm_service_label_prometheus_job": "raw-processor",
        "__meta_dockerswarm_service_label_prometheus_port": "9102",
    }
    meta.update(overrides)
    return meta


def test_prometheus_scrapes_swarm_tasks_by_label_convention() -> None:
    config = load_yaml(PROM_DIR / "prometheus.yml")
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "swarm-tasks"]
    (sd,) = job["dockerswarm_sd_configs"]
    assert sd["role"] == "tasks" and sd["host"] == "tcp://socket-proxy:2375"  # no socket in Prometheus
    relabel = job["relabel_configs"]

    target = _relabel({**_task(), "__metrics_path__": "/metrics"}, relabel)
    assert target == {
        "__address__": "10.0.5.7:9102",
        "__metrics_path__": "/metrics",
        "job": "raw-processor",
        "node": "worker-2",
        "service": "pulsestack_raw-processor",
        "slot": "2",
    }
    # prometheus.path overrides the path.
    target = _relabel({**_task(__meta_dockerswarm_service_label_prometheus_path="/internal/metrics"),
                       "__metrics_path__": "/metrics"}, relabel)
    assert target and target["__metrics_path__"] == "/internal/metrics"
    # Not opted in, not running, or seen on another network: not scraped.
    no_labels = _task()
    del no_labels["__meta_dockerswarm_service_label_prometheus_job"]
    assert _relabel(no_labels, relabel) is None
    assert _relabel(_task(__meta_dockerswarm_task_desired_state="shutdown"), relabel) is None
    assert _relabel(_task(__meta_dockerswarm_network_name="pulsestack_bus"), relabel) is None
    host_port = _task(__address__="192.0.2.10:5683")
    del host_port["__meta_dockerswarm_network_name"]
    assert _relabel(host_port, relabel) is None


def test_prometheus_finds_alertmanager_by_the_same_convention() -> None:
    config = load_yaml(PROM_DIR / "prometheus.yml")
    (am,) = config["alerting"]["alertmanagers"]
    task = _task(__meta_dockerswarm_service_label_prometheus_job="alertmanager",
                 __meta_dockerswarm_service_label_prometheus_port="9093")
    target = _relabel(task, am["relabel_configs"])
    assert target and target["__address__"] == "10.0.5.7:9093"
    assert _relabel(_task(), am["relabel_configs"]) is None


def test_stack_services_opt_in_with_job_and_port() -> None:
    # Once stack.yml exists: every job a rule or panel names is declared by a
    # service, and every declaration has a numeric port. (Until then there is
    # nothing to check; not a skip, which CI counts as a failure.)
    stack = REPO / "stack.yml"
    if not stack.is_file():
        return
    declared = {}
    for name, service in ((load_yaml(stack) or {}).get("services") or {}).items():
        labels = (service.get("deploy") or {}).get("labels") or {}
        if isinstance(labels, list):
            labels = dict(item.split("=", 1) for item in labels)
        if "prometheus.job" in labels:
            assert re.fullmatch(r"\d+", str(labels.get("prometheus.port", ""))), f"{name}: prometheus.port"
            declared[str(labels["prometheus.job"])] = name
    exprs = [r["expr"] for g in rule_groups() for r in g["rules"]] + [e for _, e in dashboard_promql()]
    named = {job for expr in exprs for job in re.findall(r'\bjob="([^"]+)"', expr)}
    assert named <= set(declared), f"jobs used but not declared in stack.yml: {sorted(named - set(declared))}"


# ----------------------------------------------------------- Alertmanager


def _amtool_version(amtool: str) -> tuple[int, int]:
    out = run([amtool, "--version"])
    m = re.search(r"version (\d+)\.(\d+)", out.stdout + out.stderr)
    assert m, out.stdout + out.stderr
    return int(m.group(1)), int(m.group(2))


def _replace_newer_fields(node: Any, used: set[str]) -> Any:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key in AM_FIELDS_NEWER_THAN_0_25:
                old_key, placeholder, _ = AM_FIELDS_NEWER_THAN_0_25[key]
                used.add(key)
                out[old_key] = placeholder
            else:
                out[key] = _replace_newer_fields(value, used)
        return out
    if isinstance(node, list):
        return [_replace_newer_fields(v, used) for v in node]
    return node


def alertmanager_config_for(amtool: str, tmp_dir: Path) -> Path:
    """The config as this amtool can check it.

    amtool 0.26+ checks the file as it is. Debian's 0.25 does not know
    url_file (0.26): it checks a copy where each url_file is replaced by a url,
    so everything else is still checked by amtool itself.
    """
    if _amtool_version(amtool) >= (0, 26):
        return AM_CONFIG
    used: set[str] = set()
    converted = _replace_newer_fields(load_yaml(AM_CONFIG), used)
    assert used, "no field newer than 0.25 left: check the file as it is"
    tmp = tmp_dir / "alertmanager-0.25.yml"
    tmp.write_text(yaml.safe_dump(converted, sort_keys=False))
    return tmp


def test_amtool_check_config(tmp_path: Path) -> None:
    amtool = require_tool("amtool")
    path = alertmanager_config_for(amtool, tmp_path)
    result = run([amtool, "check-config", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_amtool_0_25_rejects_only_the_fields_we_know_are_newer() -> None:
    # If this amtool rejects the original, it must be for url_file and
    # nothing else: the substitution above then hides nothing.
    amtool = require_tool("amtool")
    if _amtool_version(amtool) >= (0, 26):
        return  # this amtool checks the file as it is (test_amtool_check_config)
    result = run([amtool, "check-config", str(AM_CONFIG)])
    errors = [line for line in (result.stdout + result.stderr).splitlines() if "not found in type" in line]
    assert errors, result.stdout + result.stderr
    for line in errors:
        field = re.search(r"field (\w+) not found", line)
        assert field and field.group(1) in AM_FIELDS_NEWER_THAN_0_25, line


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["severity=critical", "alertname=NodeDown"], "oncall"),
        (["severity=warning", "alertname=NodeCpuHigh"], "ops-email"),
        (["severity=info"], "blackhole"),
        (["alertname=SomethingUnlabelled"], "ops-email"),
    ],
)
def test_alertmanager_routes_by_severity(labels: list[str], receiver: str, tmp_path: Path) -> None:
    amtool = require_tool("amtool")
    path = alertmanager_config_for(amtool, tmp_path)
    result = run([amtool, "config", "routes", "test", f"--config.file={path}", *labels])
    assert result.stdout.strip() == receiver, result.stdout + result.stderr


def test_alertmanager_credentials_come_from_files() -> None:
    config = load_yaml(AM_CONFIG)
    text = AM_CONFIG.read_text()
    for secret_key in ("smtp_auth_password", "auth_password", "auth_secret", "api_key", "password", "credentials"):
        assert not re.search(rf"^\s*{secret_key}:", text, re.M), f"{secret_key} must be a *_file"
    assert config["global"]["smtp_auth_password_file"].startswith("/run/secrets/")
    webhooks = [w for r in config["receivers"] for w in r.get("webhook_configs", [])]
    assert webhooks and all(w["url_file"].startswith("/run/secrets/") and "url" not in w for w in webhooks)
    assert any(r.get("email_configs") for r in config["receivers"])


def test_alertmanager_inhibitions_name_real_alerts() -> None:
    names = {a["alert"] for a in alert_rules()}
    config = load_yaml(AM_CONFIG)
    rules = config["inhibit_rules"]
    node_down = [r for r in rules if 'alertname="NodeDown"' in r["source_matchers"]]
    assert node_down and node_down[0]["equal"] == ["node"]
    for rule in rules:
        for matcher in rule["source_matchers"] + rule["target_matchers"]:
            m = re.fullmatch(r'alertname(=~|=|!=)"(.+)"', matcher)
            if m:
                for name in m.group(2).split("|"):
                    assert name in names, f"inhibit rule names unknown alert {name}"
    # Alerts about something on one node must carry `node`, or NodeDown
    # cannot silence them: the unit tests show the label on each firing case.
    node_scoped = {"NodeDown", "NodeCpuHigh", "NodeMemoryHigh", "NodeDiskSpaceHigh", "NodeDiskFillingUp",
                   "ContainerRestartLoop", "TargetDown", "UdpKernelDrops"}
    for path in RULE_TEST_FILES:
        for test in load_yaml(path)["tests"]:
            for case in test.get("alert_rule_test", []):
                if case["alertname"] in node_scoped:
                    for exp in case.get("exp_alerts") or []:
                        assert "node" in exp["exp_labels"], f"{path.name}: {case['alertname']}"


# ---------------------------------------------------------------- Grafana


def test_dashboards_have_their_fixed_uids() -> None:
    boards = dashboards()
    uids = {b["uid"] for b in boards.values()}
    assert uids == DASHBOARD_UIDS
    for filename, board in boards.items():
        assert filename == board["uid"] + ".json", filename
        assert board.get("id") is None, f"{filename}: drop the database id, Grafana assigns it"
        ids = [p["id"] for p in iter_panels(board["panels"])]
        assert len(ids) == len(set(ids)), f"{filename}: duplicate panel ids"


def test_dashboards_use_the_provisioned_datasources() -> None:
    sources = load_yaml(PROVISIONING / "datasources" / "datasources.yml")["datasources"]
    provisioned = {d["uid"]: d["type"] for d in sources}
    for filename, board in dashboards().items():
        for panel in iter_panels(board["panels"]):
            for obj in [panel, *panel.get("targets", [])]:
                ds = obj.get("datasource")
                if ds is None:
                    continue
                assert ds.get("uid") in provisioned, f"{filename}: {panel['title']}: {ds}"
                assert provisioned[ds["uid"]] == ds["type"], f"{filename}: {panel['title']}: {ds}"
    fleet = dashboards()["fleet.json"]
    assert all(p["datasource"]["uid"] == "postgres" for p in iter_panels(fleet["panels"]) if p["type"] != "row")


def test_grafana_provisioning_reads_the_password_from_a_file() -> None:
    sources = load_yaml(PROVISIONING / "datasources" / "datasources.yml")["datasources"]
    (pg,) = [d for d in sources if d["uid"] == "postgres"]
    assert re.fullmatch(r"\$__file\{/run/secrets/[\w.-]+\}", pg["secureJsonData"]["password"])
    assert "password" not in pg.get("jsonData", {})
    provider = load_yaml(PROVISIONING / "dashboards" / "dashboards.yml")["providers"][0]
    assert provider["type"] == "file" and provider["options"]["path"]


# Grafana's SQL macros for the PostgreSQL data source, expanded the way
# Grafana does, for a fixed time range.
_FROM, _TO = "'2026-01-01T00:00:00Z'", "'2026-01-02T00:00:00Z'"


def expand_sql_macros(text: str, variables: dict[str, str]) -> str:
    def interval_seconds(spec: str) -> int:
        m = re.fullmatch(r"'?(\d+)([smhd])'?", spec.strip())
        assert m, spec
        return int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]

    text = re.sub(r"\$__timeFilter\(([^)]+)\)", lambda m: f"{m.group(1)} BETWEEN {_FROM} AND {_TO}", text)
    text = re.sub(
        r"\$__timeGroupAlias\(([^,]+),([^)]+)\)",
        lambda m: f"floor(extract(epoch from {m.group(1)})/{interval_seconds(m.group(2))})"
                  f"*{interval_seconds(m.group(2))} AS \"time\"",
        text,
    )
    text = text.replace("$__timeFrom()", _FROM).replace("$__timeTo()", _TO)
    for name, value in variables.items():
        text = re.sub(rf"\$\{{{name}\}}|\${name}\b", value, text)
    assert "$" not in text, f"unexpanded macro or variable in: {text}"
    return text


def fleet_queries() -> list[tuple[str, str]]:
    board = dashboards()["fleet.json"]
    variables = {v["name"]: v["current"]["value"] for v in board["templating"]["list"]}
    return [
        (f"{p['title']} / {t['refId']}", expand_sql_macros(t["rawSql"], variables))
        for p in iter_panels(board["panels"])
        for t in p.get("targets", [])
    ]


def test_fleet_sql_runs_on_the_schema_as_the_read_only_role(tmp_path: Path) -> None:
    from pulsestack_cli.localstack import Postgres

    asyncpg = require_module("asyncpg")
    migrations = sorted(MIGRATIONS.glob("*.sql"))
    if not migrations:
        pytest.skip("no schema migrations in the repository yet")
    queries = fleet_queries()
    assert queries

    async def check(uri: str) -> None:
        conn = await asyncpg.connect(uri)
        try:
            for migration in migrations:
                await conn.execute(migration.read_text())
            # The data source logs in as the reader role: its grants must
            # cover every table the dashboard reads.
            await conn.execute("SET ROLE pulsestack_reader")
            for where, sql in queries:
                try:
                    await conn.fetch(sql)
                except asyncpg.PostgresError as exc:
                    pytest.fail(f"{where}: {exc}\n{sql}")
        finally:
            await conn.close()

    server = Postgres(tmp_path / "pg")
    server.start()
    try:
        asyncio.run(check(server.url()))
    finally:
        server.stop()


# ----------------------------------------------------------------- README


def test_readme_has_a_line_per_alert_and_dashboard_and_the_metric_tables() -> None:
    readme = (MON / "README.md").read_text()
    lines = readme.splitlines()
    for alert in alert_rules():
        assert any(f"`{alert['alert']}`" in line for line in lines), f"README: no line for {alert['alert']}"
    for uid in DASHBOARD_UIDS:
        assert any(f"`{uid}`" in line for line in lines), f"README: no line for dashboard {uid}"
    for metric in load_pulsestack_metrics():
        assert any(f"`{metric}`" in line for line in lines), f"README: pulsestack metric {metric}"
    third = load_third_party()
    for metric, exporter in third["metrics"].items():
        version = third["exporters"][exporter]["version"]
        assert any(f"`{metric}`" in line and version in line for line in lines), \
            f"README: {metric} with {exporter} {version}"
