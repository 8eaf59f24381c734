"""The metric names dashboards and alerts rely on, against a real scrape of the running services."""

from __future__ import annotations

import urllib.request

from pulsestack_cli.local import LocalStack
from tests.ops.test_monitoring import check_scraped_metric_names


def exposition_names(text: str) -> set[str]:
    """The metric family and sample names in Prometheus' text format."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            names.add(line.split()[2])
        elif line and not line.startswith("#"):
            names.add(line.split("{", 1)[0].split(" ", 1)[0])
    return names


def scrape_names(url: str) -> set[str]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return exposition_names(response.read().decode())


def test_every_metric_used_is_scraped_and_every_scraped_metric_documented(stack: LocalStack) -> None:
    scraped: set[str] = set()
    for url in stack.metrics_urls().values():
        scraped |= scrape_names(url)
    assert "pulsestack_end_to_end_seconds" in scraped
    problems = check_scraped_metric_names(scraped, exporters=set(stack.services))
    assert problems == [], "\n".join(problems)
