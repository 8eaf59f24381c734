"""A live summary from the services' own /metrics: received, stored, rate, backlog, rejected."""

from __future__ import annotations

import time
import urllib.request
from collections import defaultdict

from prometheus_client.parser import text_string_to_metric_families

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


class Summary:
    def __init__(self, urls: dict[str, str]) -> None:
        self.urls = urls
        self._last: tuple[float, float] | None = None

    def line(self) -> str:
        s = {name: scrape(url) for name, url in self.urls.items()}
        udp, http = s.get("ingest-udp", {}), s.get("ingest-http", {})
        pulse, raw = s.get("pulse-processor", {}), s.get("raw-processor", {})
        stored = {
            p: total(pulse, "pulsestack_end_to_end_seconds_count", protocol=p) for p in ("nbiot", "sigfox")
        }
        all_stored = sum(stored.values())
        now = time.monotonic()
        rate = 0.0
        if self._last:
            rate = (all_stored - self._last[1]) / max(1e-9, now - self._last[0])
        self._last = (now, all_stored)
        rejected = total(udp, "pulsestack_ingest_rejected_total") + total(http, "pulsestack_ingest_rejected_total")
        backlog = total(raw, "pulsestack_stream_pending") + total(pulse, "pulsestack_stream_pending")
        return (
            f"received nbiot {total(udp, 'pulsestack_ingest_received_total'):>9,.0f}"
            f" sigfox {total(http, 'pulsestack_ingest_received_total'):>9,.0f} | stored nbiot {stored['nbiot']:>9,.0f}"
            f" sigfox {stored['sigfox']:>9,.0f} | {rate:7,.0f} readings/s | backlog {backlog:>6,.0f}"
            f" | rejected {rejected:,.0f}"
        )
